"""Proof that an exported file gives eager PyTorch's answers, before it is renamed into place.

The file and the checkpoint each run through the runner registry on disjoint slices of the MNIST
test set, compared by :mod:`lstm_export.parity`: logits within a tolerance, every argmax equal;
at several lengths for a file that takes any number of rows (:func:`length_batches`), and fed in
chunks for a ``--with-state`` file (:class:`StreamCheck`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstm_export import parity
from lstm_export.errors import DataError, ModelLoadError, ValidationError, first_line

log = logging.getLogger(__name__)

DEFAULT_BATCHES: tuple[int, ...] = (1, 7, 512)
#: sequence lengths (rows) a file with a symbolic time axis is checked at
DEFAULT_LENGTHS: tuple[int, ...] = (1, 7, 28, 100)
#: batch sizes at the lengths other than 28 (28 rows use DEFAULT_BATCHES)
LENGTH_BATCHES: tuple[int, ...] = (1, 7, 64)
#: how the 28 rows of a digit are split to check that a stateful file carries its state
STREAM_CHUNKS: tuple[int, ...] = (7, 7, 14)
#: batch sizes of that check
STREAM_BATCHES: tuple[int, ...] = (1, 64)
DEFAULT_TOLERANCE = 1e-4
IMAGE_ROWS = 28


@dataclass(frozen=True)
class Batch:
    """``images`` float32 (N, T, 28) made from test images ``offset`` onwards: each item is
    ``digits`` consecutive test images stacked vertically and cut to T rows."""

    offset: int
    images: np.ndarray
    digits: int = 1

    @property
    def size(self) -> int:
        return int(self.images.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.images.shape[1])

    @property
    def label(self) -> str:
        """``batch 7``, or ``batch 7 x 100 rows`` when not 28 rows."""
        rows = "" if self.seq_len == IMAGE_ROWS else f" x {self.seq_len} rows"
        return f"batch {self.size}{rows}"


@dataclass(frozen=True)
class BatchCheck:
    """Candidate vs reference on one batch of ``batch`` images of ``seq_len`` rows."""

    batch: int
    max_abs_diff: float
    agree: int
    seq_len: int = IMAGE_ROWS


@dataclass(frozen=True)
class StreamCheck:
    """A stateful file fed ``batch`` digits in ``chunks`` of rows, the state carried over; each
    figure the largest absolute difference over logits, ``h_n`` and ``c_n``: the file chunked vs
    all at once, the same for eager PyTorch, the file vs eager, its stateless answer vs a zero
    state."""

    batch: int
    chunks: tuple[int, ...]
    chunked: float
    eager_chunked: float
    vs_eager: float
    zero_state: float

    @property
    def max_abs_diff(self) -> float:
        return max(self.chunked, self.eager_chunked, self.vs_eager, self.zero_state)


@dataclass
class ValidationReport:
    """Every check an exported file passed."""

    reference: str
    candidate: str
    tolerance: float
    checks: list[BatchCheck]
    structural: list[str] = field(default_factory=list)
    seconds: float = 0.0
    streams: list[StreamCheck] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.checks), default=0.0)


def load_test_set(
    data_dir: Path | None = None, *, purpose: str = "validation"
) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST test set: float32 images (10000, 28, 28) in [0, 1] and int64 labels (10000,);
    never downloads (DataError saying what needs the data)."""
    from lstm_export.data.mnist import load_mnist
    from lstm_export.data.preprocess import to_model_input

    try:
        split = load_mnist("test", data_dir)
    except DataError as exc:
        raise DataError(f"{purpose} needs the MNIST test set: {exc}") from exc
    return to_model_input(split.images), split.labels


def make_batches(images: np.ndarray, sizes: Sequence[int] = DEFAULT_BATCHES) -> list[Batch]:
    """One batch of 28 rows per size, from disjoint consecutive test images (N, 28, 28)."""
    return _batches(images, [(IMAGE_ROWS, n) for n in sizes])


def length_batches(images: np.ndarray, other_sizes: Sequence[int] = LENGTH_BATCHES) -> list[Batch]:
    """Batches for a file that takes any number of rows: :data:`DEFAULT_BATCHES` at 28 rows and
    ``other_sizes`` at each other length of :data:`DEFAULT_LENGTHS`."""
    sizes = {t: DEFAULT_BATCHES if t == IMAGE_ROWS else other_sizes for t in DEFAULT_LENGTHS}
    return _batches(images, [(t, n) for t, batch in sizes.items() for n in batch])


def _batches(images: np.ndarray, plan: Sequence[tuple[int, int]]) -> list[Batch]:
    """A batch per ``(length T, size)`` of ``plan``, from disjoint consecutive images: T <= 28
    takes each digit's first T rows; a longer T stacks ceil(T / 28) digits and keeps T rows."""
    rows = images.shape[1]
    need = sum(n * -(-t // rows) for t, n in plan)
    if need > len(images):
        sizes = [n for _, n in plan]
        raise ValidationError(f"batches {sizes} need {need} images, have {len(images)}")
    batches, offset = [], 0
    for length, size in plan:
        digits = -(-length // rows)
        block = images[offset : offset + size * digits]
        stacked = block.reshape(size, digits * rows, *images.shape[2:])[:, :length]
        batches.append(Batch(offset, np.ascontiguousarray(stacked), digits))
        offset += size * digits
    return batches


def check_onnx_file(path: Path) -> list[str]:
    """``onnx.checker`` (full check) and strict shape inference with data propagation."""
    import onnx

    checks = {
        "onnx.checker rejects": lambda: onnx.checker.check_model(str(path), full_check=True),
        "ONNX shape inference fails on": lambda: onnx.shape_inference.infer_shapes(
            onnx.load(str(path)), check_type=True, strict_mode=True, data_prop=True
        ),
    }
    for what, check in checks.items():
        try:
            check()
        except Exception as exc:  # onnx.checker.ValidationError, InferenceError
            raise ValidationError(f"{what} the exported graph: {first_line(exc)}") from exc
    return ["onnx.checker (full)", "strict shape inference"]


def validate_export(
    path: Path,
    backend: str,
    checkpoint: Path,
    batches: Sequence[Batch],
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    candidate_name: str,
    streams: Sequence[Batch] = (),
    structural: Callable[[Path], list[str]] | None = None,
) -> ValidationReport:
    """Run ``path`` with the ``backend`` runner and the checkpoint with the eager runner (both on
    the CPU) on every batch and ``streams`` (fed in chunks, :class:`StreamCheck`), after the
    ``structural`` checks of the file itself; ValidationError listing every batch that differs.
    """
    from lstm_export.infer.registry import make_runner

    t0 = time.perf_counter()
    passed = structural(path) if structural is not None else []
    reference = make_runner(checkpoint, "eager", "cpu")
    candidate = make_runner(path, backend, "cpu")
    try:
        candidate.load()
    except ModelLoadError as exc:
        from lstm_export.ort_session import error_text

        raise ValidationError(
            f"{candidate_name} cannot load the exported graph: {error_text(exc.__cause__ or exc)}"
        ) from exc
    checks, stream_checks, failures = [], [], []
    with reference, candidate:
        for batch in batches:
            check, found = _check_batch(candidate, reference, batch, tolerance, candidate_name)
            checks.append(check)
            failures += [f"{batch.label}: {problem}" for problem in found]
        for batch in streams:
            stream, found = _check_stream(candidate, reference, batch, tolerance)
            stream_checks.append(stream)
            failures += found
    if failures:
        raise ValidationError(
            f"{candidate_name} does not give eager PyTorch's answers: " + "; ".join(failures)
        )
    return ValidationReport(
        reference="eager PyTorch (CPU)",
        candidate=candidate.description,
        tolerance=tolerance,
        checks=checks,
        structural=passed,
        seconds=time.perf_counter() - t0,
        streams=stream_checks,
    )


def _check_batch(
    candidate: Any, reference: Any, batch: Batch, tolerance: float, name: str
) -> tuple[BatchCheck, list[str]]:
    """Both runners on ``batch``: the check and its problems (the first argmax that differs)."""
    got_logits, ref_logits = candidate.infer(batch.images), reference.infer(batch.images)
    got = parity.compare(got_logits, ref_logits)
    agree = batch.size - got.disagreements
    log.info("%s: max |diff| %.3g, argmax %d/%d", batch.label, got.max_abs_diff, agree, batch.size)
    found = parity.problems(got, tolerance=tolerance, min_agreement=1.0)
    if got.first_disagreement is not None:  # the argmax problem is the last one listed
        first = got.first_disagreement
        found[-1] += (
            f" (first: test image #{batch.offset + first * batch.digits}, eager PyTorch "
            f"{int(ref_logits[first].argmax())}, {name} {int(got_logits[first].argmax())})"
        )
    return BatchCheck(batch.size, got.max_abs_diff, agree, batch.seq_len), found


def _run_stream(runner: Any, x: np.ndarray) -> tuple[list, list]:
    """``([logits, h_n, c_n] all at once, [logits, h_n, c_n] after the chunks)``."""
    logits, state = runner.step(x)
    end: Any = None
    for chunk in np.split(x, np.cumsum(STREAM_CHUNKS)[:-1], axis=1):
        last, end = runner.step(chunk, end)
    return [logits, state.h, state.c], [last, end.h, end.c]


def _check_stream(
    candidate: Any, reference: Any, batch: Batch, tolerance: float
) -> tuple[StreamCheck, list[str]]:
    """Feed ``batch`` in :data:`STREAM_CHUNKS` and all at once to both runners: the check and its
    problems, each saying where."""
    whole, chunked = _run_stream(candidate, batch.images)
    ref_whole, ref_chunked = _run_stream(reference, batch.images)
    diff = parity.max_abs_diff
    figures = {
        "chunked vs all at once": diff(chunked, whole),
        "eager PyTorch chunked vs all at once": diff(ref_chunked, ref_whole),
        "vs eager PyTorch": diff(whole + chunked, ref_whole + ref_chunked),
        "stateless answer vs a zero state": diff([candidate.infer(batch.images)], whole[:1]),
    }
    check = StreamCheck(batch.size, STREAM_CHUNKS, *figures.values())
    log.info("stream of %d in chunks: max |diff| %.3g", batch.size, check.max_abs_diff)
    where = f"{batch.size} digit(s) in chunks {list(STREAM_CHUNKS)}"
    found = [
        f"{where}: {label}: max |diff| (logits, h_n, c_n) {value:.3g} > tolerance {tolerance:.3g}"
        for label, value in figures.items()
        if not value <= tolerance
    ]
    if not np.array_equal(chunked[0].argmax(1), ref_whole[0].argmax(1)):
        found.append(f"{where}: argmax after the last chunk differs from eager PyTorch all at once")
    return check, found


def describe_checks(batches: Sequence[Batch], streams: Sequence[Batch] | None = None) -> str:
    """``batch 1, 7, 512 at 1, 7, 28, 100 rows; in chunks 7+7+14`` for progress lines."""
    lengths = list(dict.fromkeys(b.seq_len for b in batches))
    text = "batch " + ", ".join(str(n) for n in dict.fromkeys(b.size for b in batches))
    if lengths != [IMAGE_ROWS]:
        text += " at " + ", ".join(str(t) for t in lengths) + " rows"
    if streams:
        text += "; in chunks " + "+".join(str(n) for n in STREAM_CHUNKS)
    return text
