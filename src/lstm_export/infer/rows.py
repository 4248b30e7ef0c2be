"""What both engines make of a folder, so they cannot disagree: scores per file
(:func:`scored_batches`, in-process and in each Ray actor), rows, counts, the confusion matrix."""

from __future__ import annotations

import heapq
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

from lstm_export.data.preprocess import describe
from lstm_export.errors import InferenceError, ModelLoadError
from lstm_export.infer.images import Invert, to_batch
from lstm_export.infer.pipeline import Plan, pipelined
from lstm_export.infer.walk import Walk
from lstm_export.infer.writers import Prediction

log = logging.getLogger(__name__)

#: the error of a file whose logits hold NaN or infinity (never a prediction)
NON_FINITE = "the model gave non-finite logits"
#: most classes whose matrix goes into the summary's JSON (beyond: the top confused pairs only)
JSON_MATRIX_CLASSES = 1000


class Confusion:
    """Counts of (true, predicted) class pairs, the mistakes kept sparse (by code ``true * C +
    predicted``), so 10^5 classes cost what the images do; :attr:`matrix` ``(C, C)`` (rows true,
    columns predicted) is built on demand."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = list(class_names)
        self.true_counts = np.zeros(len(self.class_names), np.int64)
        self.correct_counts = np.zeros(len(self.class_names), np.int64)
        self.mistakes: Counter[int] = Counter()

    def add(self, labels: ArrayLike, predicted: ArrayLike) -> None:
        """Count pairs of class indices, ``labels`` and ``predicted`` both ``(N,)``."""
        truth, guess = np.asarray(labels, np.int64), np.asarray(predicted, np.int64)
        n, right = len(self.true_counts), truth == guess
        self.true_counts += np.bincount(truth, minlength=n)
        self.correct_counts += np.bincount(truth[right], minlength=n)
        self.mistakes.update((truth[~right] * n + guess[~right]).tolist())

    def top_mistakes(self, k: int) -> list[tuple[str, str, int]]:
        """The ``k`` most frequent ``(true name, predicted name, count)``, most first."""
        top = heapq.nsmallest(k, self.mistakes.items(), key=lambda pair: (-pair[1], pair[0]))
        n = len(self.class_names)
        return [(self.class_names[c // n], self.class_names[c % n], m) for c, m in top]

    @property
    def matrix(self) -> np.ndarray:
        """int64 ``(C, C)``: C * C cells, so for a few thousand classes at most."""
        n = len(self.class_names)
        dense = np.zeros(n * n, np.int64)
        dense[list(self.mistakes)] = list(self.mistakes.values())
        dense[:: n + 1] = self.correct_counts
        return dense.reshape(n, n)

    @property
    def total(self) -> int:
        return int(self.true_counts.sum())

    @property
    def correct(self) -> int:
        return int(self.correct_counts.sum())

    @property
    def accuracy(self) -> float | None:
        """Fraction correct, None when nothing was counted."""
        return self.correct / self.total if self.total else None

    def per_class_recall(self) -> np.ndarray:
        """float64 ``(C,)``: correct / true count per class (NaN where a class has no images)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.true_counts > 0, self.correct_counts / self.true_counts, np.nan)


@dataclass
class Summary:
    """Counts, timing and (labelled folders) accuracy of a run; ``ray``: what the cluster did."""

    folder: str
    model: str
    backend: str
    device: str
    class_names: list[str]
    plan: Any  # a Plan, or the Ray engine's RayPlan (both have describe())
    images: int = 0  # files with an image extension, one row each
    classified: int = 0
    errors: int = 0
    skipped: int = 0  # files without an image extension
    hidden: int = 0
    unreadable_folders: list[str] = field(default_factory=list)
    labels: str = ""  # why the folder is (not) taken as labelled
    confusion: Confusion | None = None
    seconds: float = 0.0
    ray: dict[str, Any] | None = None

    def count(self, truth: np.ndarray | None, predicted: np.ndarray) -> None:
        """Count rows: ``predicted`` class indices ``(N,)`` (-1: error), ``truth`` ``(N,)``."""
        ok = predicted >= 0
        self.classified += int(ok.sum())
        self.errors += len(ok) - int(ok.sum())
        if self.confusion is not None and truth is not None:
            self.confusion.add(truth[ok], predicted[ok])

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
        """JSON-ready (the confusion matrix up to 1,000 classes, the 20 most confused pairs)."""
        keys = "folder model backend device images classified errors skipped hidden"
        out, c = {key: getattr(self, key) for key in keys.split()}, self.confusion
        out |= {
            "unreadable_folders": self.unreadable_folders,
            "labelled": self.labelled,
            "labels": self.labels,
            "accuracy": self.accuracy,
            "confusion_matrix": c.matrix.tolist()
            if c is not None and len(self.class_names) <= JSON_MATRIX_CLASSES
            else None,
            "top_confusions": c.top_mistakes(20) if c is not None else None,
            "class_names": self.class_names,
            "seconds": round(self.seconds, 4),
            "images_per_second": round(self.images_per_second, 1),
            "plan": self.plan.describe(),
        }
        return out if self.ray is None else {**out, "ray": self.ray}


def class_names_of(runner: Any) -> list[str]:
    """The (loaded) runner's class names, one per column of its logits (``0..C-1`` when unnamed;
    counted on a blank digit where the model does not declare them); ModelLoadError when its
    metadata names another number of them."""
    count = runner.classes or int(runner.infer(np.zeros((1, 28, 28), np.float32)).shape[1])
    names = list(runner.class_names) or [str(i) for i in range(count)]
    if len(names) != count:
        shown = ",".join(names[:12]) + (",..." if len(names) > 12 else "")
        raise ModelLoadError(
            f"{runner.path} scores {count} classes but its metadata names {len(names)} "
            f"({shown}); refusing to guess which name goes with which score"
        )
    return names


def check_preprocessing(metadata: Mapping[str, str]) -> list[str]:
    """Warnings when a model records preprocessing other than what infer does (light on dark, /255)."""
    try:
        recorded, ours = json.loads(metadata.get("preprocessing") or "null"), describe()
    except ValueError:
        return []
    return [
        f"model records {key} {recorded[key]!r}, infer uses {ours[key]!r}"
        for key in ("scale", "polarity", "range", "input_shape")
        if isinstance(recorded, dict) and key in recorded and recorded[key] != ours.get(key)
    ]


def imagefolder_labels(walk: Walk, class_names: Sequence[str]) -> tuple[list[int] | None, str]:
    """Class index of each file from its first-level folder (ImageFolder: every image inside a
    folder named after one of the model's classes), or None; and a line saying why."""
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


@dataclass
class Scores:
    """What the model made of consecutive files: ``predicted`` int64 ``(N,)`` class index (-1 on
    error), ``confidence`` float64 ``(N,)`` (NaN on error), ``errors`` (None where classified),
    ``probabilities`` float64 ``(N, C)`` (NaN rows on error) when kept."""

    predicted: np.ndarray
    confidence: np.ndarray
    errors: list[str | None]
    probabilities: np.ndarray | None

    @classmethod
    def failed(cls, errors: list[str | None], classes: int, keep: bool) -> Scores:
        n = len(errors)
        probs = np.full((n, classes), np.nan) if keep else None
        return cls(np.full(n, -1, np.int64), np.full(n, np.nan), errors, probs)

    @classmethod
    def concat(cls, parts: Sequence[Scores]) -> Scores:
        probs = [p.probabilities for p in parts if p.probabilities is not None]
        return cls(
            np.concatenate([p.predicted for p in parts]),
            np.concatenate([p.confidence for p in parts]),
            [e for p in parts for e in p.errors],
            np.concatenate(probs) if probs else None,
        )


def score(logits: np.ndarray | None, errors: list[str | None], classes: int, keep: bool) -> Scores:
    """Logits ``(ok, C)`` of the files whose error is None -> the :class:`Scores` of all files
    (softmax in float64); non-finite logits are the error :data:`NON_FINITE`, never a class.
    InferenceError when the logits are not ``(ok, classes)``."""
    out = Scores.failed(list(errors), classes, keep)
    ok = np.flatnonzero([e is None for e in errors])
    shape = None if logits is None else logits.shape
    if len(ok) and shape != (len(ok), classes):
        raise InferenceError(
            f"the model gave logits {shape} for {len(ok)} images of {classes} classes"
        )
    if not len(ok) or logits is None:
        return out
    finite = np.isfinite(logits).all(axis=1)
    z = logits[finite].astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    probs, good = e / e.sum(axis=1, keepdims=True), ok[finite]
    out.predicted[good], out.confidence[good] = probs.argmax(axis=1), probs.max(axis=1)
    if out.probabilities is not None:
        out.probabilities[good] = probs
    for i in ok[~finite].tolist():
        out.errors[i] = NON_FINITE
    return out


def scored_batches(
    paths: Sequence[str],
    plan: Plan,
    runner: Any,
    classes: int,
    refused: Mapping[int, str],
    *,
    invert: Invert | str = Invert.auto,
    fit: bool = False,
    probabilities: bool = False,
) -> Iterator[Scores]:
    """Decode ``paths`` and run ``runner`` (a loaded Runner) on them, batch by batch as
    :func:`~lstm_export.infer.pipeline.pipelined` plans it, in order; the files in ``refused``
    (position -> error) are never read. Each :class:`Scores` covers the next positions."""
    todo = [i for i in range(len(paths)) if i not in refused]

    def infer(digits: np.ndarray, errors: list[str | None]) -> Scores:  # inference threads
        ok = [i for i, e in enumerate(errors) if e is None]
        x = to_batch(digits if len(ok) == len(errors) else digits[ok]) if ok else None
        return score(None if x is None else runner.infer(x), errors, classes, probabilities)

    def spread(scores: Scores, start: int, stop: int) -> Scores:
        """``scores`` of the files read among positions ``start..stop``, and the refused."""
        out = Scores.failed([refused.get(i) for i in range(start, stop)], classes, probabilities)
        read = np.flatnonzero([i not in refused for i in range(start, stop)])
        out.predicted[read], out.confidence[read] = scores.predicted, scores.confidence
        if out.probabilities is not None:
            out.probabilities[read] = scores.probabilities
        for i, error in zip(read.tolist(), scores.errors, strict=True):
            out.errors[i] = error
        return out

    done, read = 0, 0
    results = pipelined([paths[i] for i in todo], plan, infer, invert=invert, fit=fit)
    try:
        for _, scores in results:
            read += len(scores.errors)
            stop = todo[read - 1] + 1
            yield spread(scores, done, stop) if refused else scores
            done = stop
        if tail := [refused.get(i) for i in range(done, len(paths))]:  # after the last file read
            yield Scores.failed(tail, classes, probabilities)
    finally:
        results.close()  # stops the decode and inference threads when the consumer stops


def make_rows(
    names: Sequence[str],
    labels: Sequence[str | None] | None,
    class_names: Sequence[str],
    scores: Scores,
) -> list[Prediction]:
    """The rows of ``scores`` (plain Python lists, no per-row numpy); ``labels``: class names."""
    predicted, confidence = scores.predicted.tolist(), scores.confidence.tolist()
    every = scores.probabilities.tolist() if scores.probabilities is not None else None
    truth = labels if labels is not None else [None] * len(names)
    return [
        Prediction(names[i], class_names[c], confidence[i], None, truth[i],
                   tuple(every[i]) if every is not None else None)
        if c >= 0 else Prediction(names[i], None, None, scores.errors[i], truth[i])
        for i, c in enumerate(predicted)
    ]  # fmt: skip


class Run(Protocol):
    """One run over one folder, in this process or on Ray, as the CLI drives it: walked and
    planned when built, :meth:`load` (or ``with``) before :meth:`batches`. Both engines subclass
    it for what they share: class names, labels, summary, rows."""

    walk: Walk
    probabilities: bool
    plan: Any  # a Plan, or RayPlan (describe())
    #: once loaded: the model's class names, each file's class (labelled folders), the summary
    class_names: list[str]
    labels: list[int] | None = None
    summary: Summary | None = None
    #: where the rows are written by the run itself (the Ray cluster's Parquet files), if so
    output_dir: Path | None = None

    @property
    def model_line(self) -> str: ...  # what runs the model, where
    def load(self) -> Run: ...
    def close(self) -> None: ...
    def _batches(self) -> Iterator[list[Prediction]]: ...  # the rows, once loaded

    def batches(self) -> Iterator[list[Prediction]]:
        """Rows batch by batch, in the folder's stable order; every image file exactly once."""
        summary = self.load().summary
        assert summary is not None
        started = time.perf_counter()
        try:
            for rows in self._batches():
                summary.seconds = time.perf_counter() - started
                yield rows
        finally:
            summary.seconds = time.perf_counter() - started

    def __enter__(self) -> Run:
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

    def _begin(self, runner: Any, **about: Any) -> Summary:
        """Class names and labels from the loaded ``runner``; the summary (``about``: model,
        backend, device, plan) before any row."""
        self.class_names = class_names_of(runner)
        self.labels, note = imagefolder_labels(self.walk, self.class_names)
        for problem in check_preprocessing(runner.metadata):
            log.warning("%s: %s", runner.path.name, problem)
        w, names = self.walk, self.class_names
        self.summary = Summary(
            folder=str(w.root), class_names=names, images=len(w.paths), skipped=w.skipped,
            hidden=w.hidden, unreadable_folders=list(w.unreadable), labels=note,
            confusion=Confusion(names) if self.labels is not None else None, **about,
        )  # fmt: skip
        return self.summary

    def _rows(self, start: int, scores: Scores) -> list[Prediction]:
        """The rows of the files from position ``start`` on, counted in the summary."""
        assert self.summary is not None
        stop = start + len(scores.errors)
        truth = None if self.labels is None else np.asarray(self.labels[start:stop], np.int64)
        self.summary.count(truth, scores.predicted)
        labels = None if truth is None else [self.class_names[c] for c in truth.tolist()]
        return make_rows(self.walk.names[start:stop], labels, self.class_names, scores)
