"""Classify every image under a folder: rows, labels, accuracy, and the Python API.

The folder is walked once (stable order); :mod:`lstm_export.infer.pipeline` decodes its files in
parallel with batched inference; this module turns each batch's probabilities into rows and
keeps the counts, and the confusion matrix on ImageFolder-labelled folders.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstm_export.devices import Device
from lstm_export.errors import InputError, ModelLoadError
from lstm_export.infer.base import Runner
from lstm_export.infer.images import Invert, to_batch
from lstm_export.infer.pipeline import Plan, pipelined, plan_run, runner_options, usable_cores
from lstm_export.infer.report import Confusion
from lstm_export.infer.walk import Walk, walk_images

log = logging.getLogger(__name__)

__all__ = [
    "FolderResult",
    "FolderRun",
    "Plan",
    "Prediction",
    "Summary",
    "classify_folder",
    "plan_run",
    "runner_options",
    "usable_cores",
]


# -- rows and summary ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Prediction:
    """One image file's row. ``error`` is None when the image was classified."""

    #: relative to the folder, ``/``-separated
    path: str
    #: class name predicted (``"0"``..``"9"``), None on error
    prediction: str | None
    #: softmax probability of the prediction, None on error
    confidence: float | None
    #: why the file could not be classified, None when it was
    error: str | None = None
    #: true class from an ImageFolder layout (first-level folder name), None when unlabelled
    label: str | None = None
    #: softmax probabilities ``(C,)`` when asked for
    probabilities: tuple[float, ...] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Summary:
    """Counts, timing and (on labelled folders) accuracy of one run."""

    folder: str
    model: str
    backend: str
    device: str
    class_names: list[str]
    plan: Plan
    #: files with an image extension (one row each)
    images: int = 0
    classified: int = 0
    errors: int = 0
    #: files without an image extension
    skipped: int = 0
    hidden: int = 0
    unreadable_folders: list[str] = field(default_factory=list)
    #: why the folder is (not) taken as labelled
    labels: str = ""
    confusion: Confusion | None = None
    seconds: float = 0.0

    @property
    def labelled(self) -> bool:
        return self.confusion is not None

    @property
    def accuracy(self) -> float | None:
        return self.confusion.accuracy if self.confusion is not None else None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (confusion matrix as nested lists)."""
        return {
            "folder": self.folder,
            "model": self.model,
            "backend": self.backend,
            "device": self.device,
            "images": self.images,
            "classified": self.classified,
            "errors": self.errors,
            "skipped": self.skipped,
            "hidden": self.hidden,
            "unreadable_folders": self.unreadable_folders,
            "labelled": self.labelled,
            "labels": self.labels,
            "accuracy": self.accuracy,
            "confusion_matrix": None if self.confusion is None else self.confusion.matrix.tolist(),
            "class_names": self.class_names,
            "seconds": round(self.seconds, 4),
            "images_per_second": round(self.images_per_second, 1),
            "plan": self.plan.describe(),
        }


@dataclass(frozen=True)
class FolderResult:
    """What :func:`classify_folder` returns: every row, in the folder's stable order, and totals."""

    rows: list[Prediction]
    summary: Summary


# -- labels --------------------------------------------------------------------------------------
def imagefolder_labels(walk: Walk, class_names: Sequence[str]) -> tuple[list[int] | None, str]:
    """Class index of each file from its first-level folder, or None; and a line saying why.

    The folder is labelled the ImageFolder way when every image lies inside a first-level
    subfolder named exactly after one of the model's classes (``0``..``9``).
    """
    if not walk.paths:
        return None, "no images"
    if walk.root.is_file():
        return None, "a single file"
    index = {name: i for i, name in enumerate(class_names)}
    labels: list[int] = []
    for name in walk.names:
        parts = name.split("/")
        if len(parts) < 2:
            return None, f"not labelled: {parts[0]} is not inside a class folder"
        if parts[0] not in index:
            return None, f"not labelled: folder {parts[0]!r} is not a class name of the model"
        labels.append(index[parts[0]])
    found = len(set(labels))
    return labels, f"labelled: ImageFolder layout, {found} of {len(class_names)} class folders"


def class_names_of(runner: Runner) -> list[str]:
    """The model's class names, one per output column of its logits.

    Its metadata names them (comma-separated or a JSON list); without names they are ``0..C-1``.
    A model whose metadata names another number of classes than it scores is refused
    (ModelLoadError): which name goes with which score would be a guess. Runs the (loaded)
    runner once on a blank digit to count its outputs.
    """

    raw = runner.metadata.get("class_names", "")
    names: list[str] = []
    if raw.startswith("["):
        try:
            names = [str(n) for n in json.loads(raw)]
        except ValueError:
            names = []
    elif raw:
        names = [n.strip() for n in raw.split(",")]
    count = int(runner.infer(np.zeros((1, 28, 28), np.float32)).shape[1])
    if not names:
        return [str(i) for i in range(count)]
    if len(names) != count:
        shown = ",".join(names) if len(names) <= 12 else ",".join(names[:12]) + ",..."
        raise ModelLoadError(
            f"{runner.path} scores {count} classes but its metadata names {len(names)} "
            f"({shown}); refusing to guess which name goes with which score"
        )
    return names


def check_preprocessing(metadata: dict[str, str]) -> list[str]:
    """Warnings when a model records preprocessing other than what infer does (light on dark, /255)."""
    raw = metadata.get("preprocessing")
    if not raw:
        return []
    try:
        recorded = json.loads(raw)
    except ValueError:
        return []
    if not isinstance(recorded, dict):
        return []
    from lstm_export.data.preprocess import describe

    ours = describe()
    problems = []
    for key in ("scale", "polarity", "range", "input_shape"):
        if key in recorded and key in ours and recorded[key] != ours[key]:
            problems.append(f"model records {key} {recorded[key]!r}, infer uses {ours[key]!r}")
    return problems


# -- the run -------------------------------------------------------------------------------------
def softmax(logits: np.ndarray) -> np.ndarray:
    """float32 logits ``(N, C)`` -> float64 probabilities ``(N, C)``."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class FolderRun:
    """One run over one folder: the walk, the plan and the runner, decided before any work.

    Build it (cheap: walks the folder, plans, builds the runner unloaded), :meth:`load` it (or
    use ``with``), iterate :meth:`batches` for the rows as they are ready, then read
    :attr:`summary`. ``model`` is a ``.pt``, ``.ts`` or ``.onnx`` path (backend from the suffix
    unless ``backend`` names one) or a :class:`Runner`, used as it is and not closed: it keeps
    the threads it was built with (build it with ``**runner_options(plan_run())``).
    ``batch_size``, ``workers``, ``threads``, ``streams``: see :func:`plan_run`, which chooses
    whatever is None.
    """

    def __init__(
        self,
        model: Path | str | Runner,
        folder: Path | str,
        *,
        backend: str = "auto",
        device: Device | str = Device.auto,
        batch_size: int | None = None,
        workers: int | None = None,
        threads: int | None = None,
        streams: int | None = None,
        recursive: bool = True,
        invert: Invert | str = Invert.auto,
        fit: bool = False,
        probabilities: bool = False,
    ) -> None:
        from lstm_export.infer.registry import backend_for, make_runner

        self.invert = Invert(invert)
        self.fit = fit
        self.probabilities = probabilities
        self._owns_runner = not isinstance(model, Runner)
        if isinstance(model, Runner) and threads is None:  # its threads were fixed when built
            threads = getattr(model.options, "threads", None) or usable_cores()
        self._choice: dict[str, Any] = {
            "workers": workers,
            "threads": threads,
            "batch_size": batch_size,
            "streams": streams,
            "fit": fit,
        }
        self.plan = plan_run(**self._choice)
        if isinstance(model, Runner):
            self.runner = model
        else:
            name = backend_for(model) if backend == "auto" else backend
            self.runner = make_runner(Path(model), name, device, **runner_options(self.plan, name))
            if not self.runner.path.is_file():
                raise ModelLoadError(f"model file {model} not found")
        self.recursive = recursive
        self.walk = walk_images(Path(folder), recursive=recursive)
        self.class_names: list[str] = []
        self.labels: list[int] | None = None
        self.summary: Summary | None = None

    def require_images(self) -> FolderRun:
        """InputError when the folder holds no image file (a run over it would do nothing)."""
        if not self.walk.paths:
            where = "" if self.recursive else "; subfolders not searched"
            raise InputError(
                f"no image files in {self.walk.root} ({self.walk.skipped} other files skipped, "
                f"{self.walk.hidden} hidden left out{where})"
            )
        return self

    # -- lifecycle -------------------------------------------------------------------------------
    def load(self) -> FolderRun:
        """Load the model; on CUDA the plan is made again for the GPU. Idempotent."""
        if self.summary is not None:
            return self
        runner = self.runner.load()
        if runner.device == "cuda":
            self.plan = plan_run(**self._choice, device="cuda")
        self.class_names = class_names_of(runner)
        self.labels, labels_note = imagefolder_labels(self.walk, self.class_names)
        for problem in check_preprocessing(runner.metadata):
            log.warning("%s: %s", runner.path.name, problem)
        self.summary = Summary(
            folder=str(self.walk.root),
            model=str(runner.path),
            backend=runner.description,
            device=runner.device or "cpu",
            class_names=self.class_names,
            plan=self.plan,
            images=len(self.walk.paths),
            skipped=self.walk.skipped,
            hidden=self.walk.hidden,
            unreadable_folders=list(self.walk.unreadable),
            labels=labels_note,
            confusion=Confusion(self.class_names) if self.labels is not None else None,
        )
        return self

    def close(self) -> None:
        """Release the runner if this run built it."""
        if self._owns_runner:
            self.runner.close()

    def __enter__(self) -> FolderRun:
        try:
            return self.load()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    # -- the run ---------------------------------------------------------------------------------
    def batches(self) -> Iterator[list[Prediction]]:
        """Rows batch by batch, in the folder's stable order; every image file exactly once."""
        summary = self.load().summary
        assert summary is not None
        started = time.perf_counter()
        start = 0
        results = pipelined(
            self.walk.paths, self.plan, self._infer, invert=self.invert, fit=self.fit
        )
        try:
            for errors, probs in results:
                rows = self._rows(summary, start, errors, probs)
                start += len(errors)
                summary.seconds = time.perf_counter() - started
                yield rows
        finally:
            results.close()  # stops the decode and inference threads when the consumer stops
            summary.seconds = time.perf_counter() - started

    def _infer(self, digits: np.ndarray, errors: list[str | None]) -> np.ndarray:
        """uint8 digits ``(B, 28, 28)`` -> probabilities ``(ok, C)`` of the decoded ones.

        Runs in the inference threads.
        """
        if all(e is None for e in errors):
            return softmax(self.runner.infer(to_batch(digits)))
        ok = [i for i, e in enumerate(errors) if e is None]
        if not ok:
            return np.zeros((0, len(self.class_names)))
        return softmax(self.runner.infer(to_batch(digits[ok])))

    def _rows(
        self, summary: Summary, start: int, errors: list[str | None], probs: np.ndarray
    ) -> list[Prediction]:
        """One batch's rows (main thread: plain Python lists, no per-row numpy)."""
        names = self.class_names
        predicted = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
        classes = predicted.tolist()
        confidence = probs.max(axis=1).tolist() if len(probs) else []
        every = probs.tolist() if self.probabilities else None
        paths = self.walk.names[start : start + len(errors)]
        labels = (
            [names[c] for c in self.labels[start : start + len(errors)]]
            if self.labels is not None
            else [None] * len(errors)
        )
        rows: list[Prediction] = []
        ok: list[int] = []
        k = 0
        for i, error in enumerate(errors):
            if error is not None:
                rows.append(Prediction(paths[i], None, None, error, labels[i]))
                continue
            probabilities = tuple(every[k]) if every is not None else None
            rows.append(
                Prediction(
                    paths[i], names[classes[k]], confidence[k], None, labels[i], probabilities
                )
            )
            ok.append(i)
            k += 1
        summary.classified += len(ok)
        summary.errors += len(errors) - len(ok)
        if summary.confusion is not None and self.labels is not None and ok:
            summary.confusion.add([self.labels[start + i] for i in ok], predicted)
        return rows


def classify_folder(
    model: Path | str | Runner,
    folder: Path | str,
    *,
    on_batch: Callable[[list[Prediction]], None] | None = None,
    **settings: Any,
) -> FolderResult:
    """Classify every image file under ``folder`` (or one image file); no CLI needed.

    ``settings`` are those of :class:`FolderRun` (``backend``, ``device``, ``batch_size``,
    ``workers``, ``threads``, ``streams``, ``recursive``, ``invert``, ``fit``,
    ``probabilities``). Decode processes (``workers >= 2``) start with ``forkserver``, so
    scripts using them need the usual ``if __name__ == "__main__":`` guard. ``on_batch`` is
    called with each batch of rows as it is ready.

    Returns every row in a stable order (sorted by relative path) and the summary; bad files
    get an ``error`` row and never stop the run.
    """
    rows: list[Prediction] = []
    with FolderRun(model, folder, **settings) as run:
        for batch in run.batches():
            rows.extend(batch)
            if on_batch is not None:
                on_batch(batch)
    assert run.summary is not None
    return FolderResult(rows=rows, summary=run.summary)
