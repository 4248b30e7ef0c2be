"""Prediction rows to CSV or JSON Lines, streamed into a temporary file renamed on success."""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from lstm_export.errors import OutputError
from lstm_export.fileio import atomic_path

if TYPE_CHECKING:
    from lstm_export.infer.classify import Prediction


class OutputFormat(str, Enum):
    """``auto`` takes the format from the output's suffix (CSV on stdout)."""

    auto = "auto"
    csv = "csv"
    jsonl = "jsonl"


_SUFFIXES = {".csv": OutputFormat.csv, ".jsonl": OutputFormat.jsonl, ".ndjson": OutputFormat.jsonl}


def resolve_format(path: Path | None, fmt: OutputFormat | str = OutputFormat.auto) -> OutputFormat:
    """The concrete format for ``path`` (None: stdout); OutputError for an unknown suffix."""
    fmt = OutputFormat(fmt)
    if fmt != OutputFormat.auto:
        return fmt
    if path is None:
        return OutputFormat.csv
    try:
        return _SUFFIXES[Path(path).suffix.lower()]
    except KeyError:
        raise OutputError(
            f"cannot tell the format of {path}: use a .csv or .jsonl name, or --format"
        ) from None


def columns(*, labelled: bool, class_names: Sequence[str] | None = None) -> list[str]:
    """Column names: ``path, [label,] prediction, confidence, error[, p_<class>...]``."""
    cols = ["path"]
    if labelled:
        cols.append("label")
    cols += ["prediction", "confidence", "error"]
    if class_names:
        cols += [f"p_{name}" for name in class_names]
    return cols


class RowWriter:
    """Writes :class:`Prediction` rows in one format to an open text stream."""

    def __init__(
        self,
        stream: IO[str],
        fmt: OutputFormat,
        *,
        labelled: bool,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.stream = stream
        self.fmt = fmt
        self.labelled = labelled
        self.class_names = list(class_names) if class_names else None
        self.count = 0
        self._csv: Any = None
        if fmt == OutputFormat.csv:
            self._csv = csv.writer(stream, lineterminator="\n")
            self._csv.writerow(columns(labelled=labelled, class_names=self.class_names))

    def write(self, rows: Iterable[Prediction]) -> None:
        """Append rows (in the order given)."""
        for row in rows:
            if self._csv is not None:
                self._csv.writerow(self._csv_cells(row))
            else:
                self.stream.write(json.dumps(self._record(row), ensure_ascii=False) + "\n")
            self.count += 1

    def _csv_cells(self, row: Prediction) -> list[str]:
        cells = [row.path]
        if self.labelled:
            cells.append(row.label or "")
        cells += [
            row.prediction or "",
            "" if row.confidence is None else f"{row.confidence:.6f}",
            row.error or "",
        ]
        if self.class_names:
            probs = row.probabilities
            cells += [f"{p:.6f}" for p in probs] if probs else [""] * len(self.class_names)
        return cells

    def _record(self, row: Prediction) -> dict[str, Any]:
        record: dict[str, Any] = {"path": row.path}
        if self.labelled:
            record["label"] = row.label
        record["prediction"] = row.prediction
        record["confidence"] = None if row.confidence is None else round(row.confidence, 6)
        record["error"] = row.error
        if self.class_names:
            probs = row.probabilities
            record["probabilities"] = (
                dict(zip(self.class_names, (round(p, 6) for p in probs), strict=True))
                if probs
                else None
            )
        return record


@contextlib.contextmanager
def open_rows(
    path: Path | None,
    fmt: OutputFormat | str = OutputFormat.auto,
    *,
    labelled: bool,
    class_names: Sequence[str] | None = None,
    stream: IO[str] | None = None,
) -> Iterator[RowWriter]:
    """A :class:`RowWriter` on ``path`` (atomic: renamed into place only on success).

    With ``path=None`` the rows go to ``stream`` (the CLI passes stdout). ``class_names`` adds
    one probability column per class.
    """
    concrete = resolve_format(path, fmt)
    if path is None:
        if stream is None:
            raise OutputError("no output: give a path or a stream")
        yield RowWriter(stream, concrete, labelled=labelled, class_names=class_names)
        stream.flush()
        return
    with atomic_path(Path(path)) as tmp:
        try:
            stream = open(tmp, "w", encoding="utf-8", newline="")  # noqa: SIM115
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        with stream:
            yield RowWriter(stream, concrete, labelled=labelled, class_names=class_names)
