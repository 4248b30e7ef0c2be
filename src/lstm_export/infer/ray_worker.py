"""What runs inside the Ray actors of ``--engine ray``, and the Parquet form of the rows.

Each actor gets the model by value (its bytes, through the object store), writes them to a
temporary file of its own, builds one runner with :func:`make_runner` and loads it once, then
classifies block after block of paths. A block is decoded by the same
:func:`~lstm_export.infer.images.decode_files` as the in-process engine (in a thread, overlapping
inference, through :func:`~lstm_export.infer.pipeline.pipelined`), so a file that cannot be read
or decoded becomes an error in its row and never fails the block.

Nothing here imports ray at module level; the actor imports it when it starts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lstm_export.errors import DeviceError, InferenceError
from lstm_export.infer.classify import softmax
from lstm_export.infer.images import to_batch
from lstm_export.infer.pipeline import Plan, pipelined, runner_options
from lstm_export.infer.writers import escape_text

#: shard names: ``part-<index of its first row, 12 digits>.parquet`` (sorted = the folder's order)
SHARD_PREFIX = "part-"
SHARD_SUFFIX = ".parquet"


def shard_name(first_index: int) -> str:
    """The file name of the shard whose first row is row ``first_index`` of the walk."""
    return f"{SHARD_PREFIX}{first_index:012d}{SHARD_SUFFIX}"


def node_key(node_id: str) -> int:
    """A Ray node id (hex) as a small integer, cheap to send back with every row."""
    return int(node_id[:15], 16)


def encode_text(values: Sequence[str | None]) -> np.ndarray:
    """Strings (file names may hold ``surrogateescape`` bytes) -> object array of bytes.

    Arrow strings must be UTF-8, so paths and messages travel as bytes and come back exactly with
    :func:`decode_text`. None travels as ``b""`` (a column of nulls alone would lose its type).
    """
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = b"" if value is None else os.fsencode(value)
    return out


def decode_text(values: Any) -> list[str | None]:
    """The inverse of :func:`encode_text` (``b""``, None or a null -> None)."""
    return [os.fsdecode(v) if isinstance(v, (bytes, str)) and v else None for v in values]


# -- the rows as an Arrow table (Parquet) ----------------------------------------------------------
def parquet_table(
    paths: Sequence[str],
    labels: Sequence[str | None] | None,
    predictions: Sequence[str | None],
    confidences: Sequence[float | None],
    errors: Sequence[str | None],
    probabilities: np.ndarray | None,
    class_names: Sequence[str] | None,
) -> Any:
    """A ``pyarrow.Table`` with the columns of the CSV: ``path, [label,] prediction, confidence,
    error[, p_<class>...]``.

    Text is written as in JSONL (:func:`~lstm_export.infer.writers.escape_text`: non-UTF-8 bytes
    of a file name as ``\\xHH``), since Parquet strings are UTF-8. ``probabilities`` is
    ``(N, C)`` float64 with NaN rows for errors (written as nulls).
    """
    import pyarrow as pa

    def text(values: Sequence[str | None]) -> Any:
        return pa.array([None if v is None else escape_text(v) for v in values], pa.string())

    columns: dict[str, Any] = {"path": text(paths)}
    if labels is not None:
        columns["label"] = text(labels)
    columns["prediction"] = text(predictions)
    columns["confidence"] = pa.array(confidences, pa.float64())
    columns["error"] = text(errors)
    if class_names:
        probs = (
            np.full((len(paths), len(class_names)), np.nan)
            if probabilities is None
            else np.asarray(probabilities, np.float64)
        )
        missing = np.isnan(probs).any(axis=1) if len(probs) else np.zeros(0, bool)
        for c, name in enumerate(class_names):
            columns[f"p_{escape_text(name)}"] = pa.array(probs[:, c], pa.float64(), mask=missing)
    return pa.table(columns)


def write_table_atomic(table: Any, target: Path) -> None:
    """Write a Parquet file under a temporary name in the same folder, then rename it."""
    import pyarrow.parquet as pq

    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the actor -------------------------------------------------------------------------------------
def load_runner_from_bytes(
    data: bytes, suffix: str, backend: str, device: str, threads: int
) -> Any:
    """Write the model's bytes to a temporary file, build its runner and load it (then delete it)."""
    from lstm_export.infer.registry import make_runner

    folder = tempfile.mkdtemp(prefix="lstm-export-model-")
    try:
        path = Path(folder) / f"model{suffix}"
        path.write_bytes(data)
        plan = Plan(workers=1, threads=threads)
        runner = make_runner(path, backend, device, **runner_options(plan, backend))
        return runner.load()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Classifier:
    """A Ray Data callable class: one loaded runner per actor, one block of paths per call.

    A block is a batch of columns ``index`` (int64: the file's position in the walk), ``path``
    (bytes: where to read it) and, for ``output_dir``, ``name`` (bytes: its row's path) and
    ``label`` (int16 class index, -1 when unlabelled). Returns per row ``index``, ``prediction``
    (class index, -1 on error), ``error`` (bytes, ``b""`` for none), ``node`` (:func:`node_key`
    of the node that ran it), ``actor_seconds`` (the row's share of the block's time) and,
    unless the rows went to ``output_dir``, ``confidence`` and, when asked, ``probabilities``
    ``(N, C)``.
    """

    def __init__(
        self,
        model: Any,
        *,
        suffix: str,
        backend: str,
        device: str,
        threads: int,
        batch_size: int,
        invert: str,
        fit: bool,
        probabilities: bool,
        class_names: list[str],
        labelled: bool,
        output_dir: str | None,
    ) -> None:
        import ray

        data = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        self.runner = load_runner_from_bytes(data, suffix, backend, device, threads)
        if device == "cuda" and self.runner.device != "cuda":  # pragma: no cover - runners raise
            raise DeviceError(f"CUDA was asked for, but {self.runner.description} runs on the CPU")
        self.node_id = ray.get_runtime_context().get_node_id()
        self.node = node_key(self.node_id)
        self.threads = threads
        self.batch_size = batch_size
        self.invert = invert
        self.fit = fit
        self.probabilities = probabilities
        self.class_names = class_names
        self.labelled = labelled
        self.output_dir = Path(output_dir) if output_dir else None

    def _infer(self, digits: np.ndarray, errors: list[str | None]) -> np.ndarray:
        """Probabilities ``(ok, C)`` of the decoded images of one inference batch."""
        ok = [i for i, e in enumerate(errors) if e is None]
        if len(ok) == len(errors):
            return softmax(self.runner.infer(to_batch(digits)))
        if not ok:
            return np.zeros((0, len(self.class_names)))
        return softmax(self.runner.infer(to_batch(digits[ok])))

    def __call__(self, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        index = np.asarray(block["index"], dtype=np.int64)
        paths = [os.fsdecode(p) for p in block["path"]]
        n, classes = len(paths), len(self.class_names)
        predicted = np.full(n, -1, dtype=np.int16)
        confidence = np.full(n, np.nan)
        probs = np.full((n, classes), np.nan)
        errors: list[str | None] = [None] * n
        # decode in a thread, overlapping inference (inline for a block of one inference batch)
        plan = Plan(workers=1 if n > self.batch_size else 0, threads=self.threads,
                    batch_size=self.batch_size, streams=1)  # fmt: skip
        start = 0
        for batch_errors, p in pipelined(
            paths, plan, self._infer, invert=self.invert, fit=self.fit
        ):
            ok = np.flatnonzero([e is None for e in batch_errors]) + start
            if len(ok):
                if p.shape[1] != classes:
                    raise InferenceError(
                        f"the model gives {p.shape[1]} classes, the driver expected {classes}"
                    )
                predicted[ok] = p.argmax(axis=1)
                confidence[ok] = p.max(axis=1)
                probs[ok] = p
            errors[start : start + len(batch_errors)] = batch_errors
            start += len(batch_errors)
        out: dict[str, np.ndarray] = {
            "index": index,
            "prediction": predicted,
            "error": encode_text(errors),
            "node": np.full(n, self.node, dtype=np.int64),
        }
        if self.output_dir is not None:
            self._write_shard(block, index, predicted, confidence, errors, probs)
        else:
            out["confidence"] = confidence
            if self.probabilities:
                out["probabilities"] = probs
        # each row's share of the time this actor spent on the block (summed: busy seconds)
        out["actor_seconds"] = np.full(n, (time.perf_counter() - started) / max(n, 1))
        return out

    def _write_shard(
        self,
        block: dict[str, np.ndarray],
        index: np.ndarray,
        predicted: np.ndarray,
        confidence: np.ndarray,
        errors: list[str | None],
        probs: np.ndarray,
    ) -> None:
        """This block's rows as one Parquet shard, named after its first row's index."""
        assert self.output_dir is not None
        names = self.class_names
        label_index = np.asarray(block["label"]).tolist() if self.labelled else None
        table = parquet_table(
            decode_text(block["name"]),  # type: ignore[arg-type]
            [names[c] if c >= 0 else None for c in label_index] if label_index else None,
            [names[c] if c >= 0 else None for c in predicted.tolist()],
            [None if np.isnan(c) else c for c in confidence.tolist()],
            errors,
            probs if self.probabilities else None,
            names if self.probabilities else None,
        )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_table_atomic(
            table, self.output_dir / shard_name(int(index.min()) if len(index) else 0)
        )
