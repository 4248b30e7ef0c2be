"""Proof that an exported file gives eager PyTorch's answers, before it is renamed into place.

Numerical checks run on real MNIST test images at several batch sizes (default 1, an odd 7 and a
large 512, disjoint slices of the test set): the largest absolute logit difference must stay
within a tolerance and every argmax must agree; otherwise :class:`ValidationError` says what
differed. All predictors map float32 ``(N, 28, 28)`` in [0, 1] to float32 logits ``(N, classes)``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lstm_export.errors import DataError, ModelLoadError, ValidationError
from lstm_export.export.progress import ProgressFn, no_progress

if TYPE_CHECKING:
    from lstm_export.model import LSTMClassifier

log = logging.getLogger(__name__)

DEFAULT_BATCHES: tuple[int, ...] = (1, 7, 512)
DEFAULT_TOLERANCE = 1e-4
#: batch size used for whole-test-set accuracy runs
EVAL_BATCH = 1000

Predict = Callable[[np.ndarray], np.ndarray]


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
    data_dir: Path | None = None, *, purpose: str = "validation", skippable: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST test set: float32 images (10000, 28, 28) in [0, 1] and int64 labels (10000,).

    Never downloads; raises DataError saying what needs the data and how to provide it.
    """
    from lstm_export.data.mnist import load_mnist
    from lstm_export.data.preprocess import to_model_input

    try:
        split = load_mnist("test", data_dir, fetch=False)
    except DataError as exc:
        skip = "; --no-validate skips it" if skippable else ""
        raise DataError(
            f"{purpose} needs the MNIST test set (pass --data-dir or set $LSTM_EXPORT_DATA_DIR"
            f"{skip}): {exc}"
        ) from exc
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


# -- predictors ------------------------------------------------------------------------------------
def eager_predict(model: LSTMClassifier) -> Predict:
    """Eager PyTorch on the CPU: the reference."""
    import torch

    model = model.eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()

    return predict


def ort_error_text(exc: BaseException) -> str:
    """ONNX Runtime's message without its error code, temp-file path and C++ function signature."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"Load model from \S+ failed: ?", "", text)
    text = re.sub(r"\S+\.(?:h|cc|cpp):\d+ [^()]*\(.*?\) (?=[A-Z])", "", text)
    return text[:400]


def ort_session(path: Path) -> Any:
    """An ONNX Runtime CPU session on ``path``; ValidationError if ORT cannot load it."""
    import onnxruntime as ort

    from lstm_export.infer.runners.ort_session import open_session

    try:
        return open_session(path, "cpu")
    except ModelLoadError as exc:
        cause = exc.__cause__ or exc
        raise ValidationError(
            f"ONNX Runtime {ort.__version__} cannot load the exported graph: {ort_error_text(cause)}"
        ) from exc


def ort_predict(session: Any) -> Predict:
    """Run a loaded ONNX Runtime session (its single input and output)."""
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        out = session.run([output_name], {input_name: np.ascontiguousarray(x, np.float32)})[0]
        return np.asarray(out, dtype=np.float32)

    return predict


def torchscript_predict(module: Any) -> Predict:
    """Run a loaded TorchScript module on the CPU."""
    import torch

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()

    return predict


def predict_all(
    predict: Predict,
    images: np.ndarray,
    *,
    batch_size: int = EVAL_BATCH,
    progress: ProgressFn | None = None,
    description: str = "predicting",
) -> np.ndarray:
    """Logits (N, classes) for all ``images``, ``batch_size`` at a time, reporting progress."""
    report = progress or no_progress
    outs = []
    n = len(images)
    report(description, 0, n)
    for start in range(0, n, batch_size):
        outs.append(predict(images[start : start + batch_size]))
        report(description, min(start + batch_size, n), n)
    return np.concatenate(outs)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in 0..1."""
    return float((logits.argmax(axis=1) == labels).mean())


# -- checks ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AccuracyDrop:
    """A lower-precision graph's logits against the fp32 graph's on the same labelled images."""

    fp32_accuracy: float
    accuracy: float
    drop: float  # fp32_accuracy - accuracy, in 0..1
    argmax_agreement: float
    max_abs_diff: float


def check_accuracy_drop(
    fp32_logits: np.ndarray,
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    max_drop: float,
    what: str,
    suffix: str = "",
) -> AccuracyDrop:
    """Compare logits (N, C) with fp32's; ValidationError if accuracy falls more than ``max_drop``.

    ``what`` names the variant in the message (``"int8"``); ``suffix`` ends it.
    """
    fp32_acc, acc = accuracy(fp32_logits, labels), accuracy(logits, labels)
    drop = fp32_acc - acc
    if drop > max_drop + 1e-12:
        raise ValidationError(
            f"{what} accuracy {acc * 100:.2f} % is {drop * 100:.2f} points below fp32 "
            f"{fp32_acc * 100:.2f} %{suffix} (allowed: {max_drop * 100:.2f}); "
            f"no {what.split()[0]} file written"
        )
    return AccuracyDrop(
        fp32_accuracy=fp32_acc,
        accuracy=acc,
        drop=drop,
        argmax_agreement=float((fp32_logits.argmax(1) == logits.argmax(1)).mean()),
        max_abs_diff=float(np.abs(fp32_logits - logits).max()),
    )


def compare(
    reference: Predict,
    candidate: Predict,
    batches: Sequence[Batch],
    tolerance: float,
    *,
    reference_name: str,
    candidate_name: str,
) -> list[BatchCheck]:
    """Run both on every batch; ValidationError listing every batch that differs."""
    checks, failures = [], []
    for batch in batches:
        ref = reference(batch.images)
        got = candidate(batch.images)
        if got.shape != ref.shape:
            raise ValidationError(
                f"{candidate_name} returned shape {tuple(got.shape)} at batch {batch.size}, "
                f"{reference_name} {tuple(ref.shape)}"
            )
        if not np.all(np.isfinite(got)):
            failures.append(f"batch {batch.size}: non-finite logits")
        diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
        ref_top, got_top = ref.argmax(axis=1), got.argmax(axis=1)
        agree = int((ref_top == got_top).sum())
        checks.append(BatchCheck(batch=batch.size, max_abs_diff=diff, agree=agree))
        log.info("batch %d: max |diff| %.3g, argmax %d/%d", batch.size, diff, agree, batch.size)
        if not diff <= tolerance:
            failures.append(
                f"batch {batch.size}: max |logit diff| {diff:.3g} > tolerance {tolerance:.3g}"
            )
        if agree != batch.size:
            first = int(np.flatnonzero(ref_top != got_top)[0])
            failures.append(
                f"batch {batch.size}: argmax differs on {batch.size - agree} of {batch.size} "
                f"images (first: test image #{batch.offset + first}, {reference_name} "
                f"{ref_top[first]}, {candidate_name} {got_top[first]})"
            )
    if failures:
        raise ValidationError(
            f"{candidate_name} does not give {reference_name}'s answers: " + "; ".join(failures)
        )
    return checks


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


def validate_onnx(
    path: Path,
    model: LSTMClassifier,
    batches: Sequence[Batch],
    tolerance: float = DEFAULT_TOLERANCE,
) -> ValidationReport:
    """Structural checks, then ONNX Runtime (CPU) vs eager PyTorch on ``batches``."""
    t0 = time.perf_counter()
    structural = check_onnx_file(path)
    session = ort_session(path)
    checks = compare(
        eager_predict(model),
        ort_predict(session),
        batches,
        tolerance,
        reference_name="eager PyTorch",
        candidate_name="ONNX Runtime (CPU)",
    )
    return ValidationReport(
        reference="eager PyTorch (CPU)",
        candidate="ONNX Runtime CPUExecutionProvider",
        tolerance=tolerance,
        checks=checks,
        structural=structural,
        seconds=time.perf_counter() - t0,
    )
