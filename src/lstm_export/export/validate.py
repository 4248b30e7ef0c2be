"""Proof that an exported file gives eager PyTorch's answers, before it is renamed into place.

The exported file and the checkpoint each run through the runner registry (the code path users
run), on real MNIST test images at several batch sizes (default 1, an odd 7 and a large 512,
disjoint slices of the test set). The largest absolute logit difference must stay within a
tolerance and every argmax must agree (:mod:`lstm_export.parity`); otherwise
:class:`ValidationError` says what differed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lstm_export import parity
from lstm_export.errors import DataError, ModelLoadError, ValidationError

log = logging.getLogger(__name__)

DEFAULT_BATCHES: tuple[int, ...] = (1, 7, 512)
DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Batch:
    """``images`` float32 (N, 28, 28) taken from test-set position ``offset`` onwards."""

    offset: int
    images: np.ndarray

    @property
    def size(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class BatchCheck:
    """Candidate vs reference on one batch."""

    batch: int
    max_abs_diff: float
    agree: int

    @property
    def agreement(self) -> float:
        return self.agree / self.batch


@dataclass
class ValidationReport:
    """Every check an exported file passed."""

    reference: str
    candidate: str
    tolerance: float
    checks: list[BatchCheck]
    structural: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.checks), default=0.0)


# -- data ------------------------------------------------------------------------------------------
def load_test_set(
    data_dir: Path | None = None, *, purpose: str = "validation"
) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST test set: float32 images (10000, 28, 28) in [0, 1] and int64 labels (10000,).

    Never downloads; raises DataError saying what needs the data.
    """
    from lstm_export.data.mnist import load_mnist
    from lstm_export.data.preprocess import to_model_input

    try:
        split = load_mnist("test", data_dir)
    except DataError as exc:
        raise DataError(f"{purpose} needs the MNIST test set: {exc}") from exc
    return to_model_input(split.images), split.labels


def make_batches(images: np.ndarray, sizes: Sequence[int] = DEFAULT_BATCHES) -> list[Batch]:
    """Disjoint consecutive slices of ``images``, one per requested size."""
    if sum(sizes) > len(images):
        raise ValidationError(f"batches {list(sizes)} need {sum(sizes)} images, have {len(images)}")
    batches, offset = [], 0
    for size in sizes:
        batches.append(Batch(offset, np.ascontiguousarray(images[offset : offset + size])))
        offset += size
    return batches


# -- checks ----------------------------------------------------------------------------------------
def check_onnx_file(path: Path) -> list[str]:
    """``onnx.checker`` (full check) and strict shape inference with data propagation."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError, InferenceError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValidationError(f"onnx.checker rejects the exported graph: {first[:300]}") from exc
    try:
        onnx.shape_inference.infer_shapes(
            onnx.load(str(path)), check_type=True, strict_mode=True, data_prop=True
        )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValidationError(
            f"ONNX shape inference fails on the exported graph: {first[:300]}"
        ) from exc
    return ["onnx.checker (full)", "strict shape inference"]


def validate_export(
    path: Path,
    backend: str,
    checkpoint: Path,
    batches: Sequence[Batch],
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    candidate_name: str,
) -> ValidationReport:
    """Run ``path`` with the ``backend`` runner and the checkpoint with the eager runner (both on
    the CPU) on every batch; ValidationError listing every batch that differs."""
    from lstm_export.infer.registry import make_runner

    t0 = time.perf_counter()
    reference = make_runner(checkpoint, "eager", "cpu")
    candidate = make_runner(path, backend, "cpu")
    try:
        candidate.load()
    except ModelLoadError as exc:
        from lstm_export.ort_session import error_text

        raise ValidationError(
            f"{candidate_name} cannot load the exported graph: {error_text(exc.__cause__ or exc)}"
        ) from exc
    checks, failures = [], []
    with reference, candidate:
        for batch in batches:
            got_logits = candidate.infer(batch.images)
            ref_logits = reference.infer(batch.images)
            got = parity.compare(got_logits, ref_logits)
            agree = batch.size - got.disagreements
            checks.append(BatchCheck(batch=batch.size, max_abs_diff=got.max_abs_diff, agree=agree))
            log.info(
                "batch %d: max |diff| %.3g, argmax %d/%d",
                batch.size,
                got.max_abs_diff,
                agree,
                batch.size,
            )
            found = parity.problems(got, tolerance=tolerance, min_agreement=1.0)
            if got.first_disagreement is not None:  # the argmax problem is the last one listed
                first = got.first_disagreement
                found[-1] += (
                    f" (first: test image #{batch.offset + first}, eager PyTorch "
                    f"{int(ref_logits[first].argmax())}, {candidate_name} "
                    f"{int(got_logits[first].argmax())})"
                )
            failures += [f"batch {batch.size}: {problem}" for problem in found]
        description = candidate.description
    if failures:
        raise ValidationError(
            f"{candidate_name} does not give eager PyTorch's answers: " + "; ".join(failures)
        )
    return ValidationReport(
        reference="eager PyTorch (CPU)",
        candidate=description,
        tolerance=tolerance,
        checks=checks,
        seconds=time.perf_counter() - t0,
    )


def validate_onnx(
    path: Path,
    checkpoint: Path,
    batches: Sequence[Batch],
    tolerance: float = DEFAULT_TOLERANCE,
) -> ValidationReport:
    """Structural checks, then ONNX Runtime (CPU) vs eager PyTorch on ``batches``."""
    t0 = time.perf_counter()
    structural = check_onnx_file(path)
    report = validate_export(
        path, "onnxruntime", checkpoint, batches, tolerance, candidate_name="ONNX Runtime (CPU)"
    )
    report.structural = structural
    report.seconds = time.perf_counter() - t0
    return report
