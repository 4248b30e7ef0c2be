r"""Prediction rows to CSV, JSON Lines or Parquet, into a temporary file renamed on success.

Every row survives any bytes in any file name, in both formats, and reads back to the exact name.
How text cells (``path``, ``label``, ``prediction``, ``error``) are written:

- **Text is UTF-8**, always: the outputs are valid UTF-8 whatever the names hold.
- **Bytes that are not UTF-8** (Linux file names are bytes: ``caf\xe9.png`` in Latin-1) are
  written as ``\xHH`` (two lower-case hex digits), and a backslash in a name as ``\\``, so that
  the escape is unambiguous. Python sees such a byte as a ``surrogateescape`` character
  (``"caf\udce9.png"``, what :func:`os.listdir` returns); :func:`unescape_text` turns the cell back
  into that string and ``os.fsencode`` into the exact bytes. A name that is valid UTF-8 and has no
  backslash (nearly all) is written as it is. Any other lone surrogate is written ``\uXXXX``.
- **Control characters** stay as they are: CSV quotes every cell holding a line break (``\r``
  included, which the csv module leaves unquoted with ``\n`` line ends), and JSON escapes them.
- **Spreadsheet formulas** (CSV only): a cell starting with ``=``, ``+``, ``-``, ``@``, a tab, a
  carriage return or a line feed would be run as a formula by Excel or LibreOffice, so it gets a
  leading ``'``; so does a cell that really starts with ``'``, which keeps this reversible: drop one
  leading ``'`` when present (:func:`decode_cell` does both steps). JSONL is not prefixed.

So ``os.fsencode(decode_cell(cell, "csv"))`` (or ``"jsonl"`` for a JSON string value) gives back
the file name's bytes. Numbers (``confidence``, ``p_*``) are written as plain numbers.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Any

import numpy as np

from lstm_export.errors import OutputError
from lstm_export.fileio import atomic_open


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


class OutputFormat(str, Enum):
    """``auto`` takes the format from the output's suffix (CSV on stdout)."""

    auto = "auto"
    csv = "csv"
    jsonl = "jsonl"
    parquet = "parquet"


_SUFFIXES = {
    ".csv": OutputFormat.csv,
    ".jsonl": OutputFormat.jsonl,
    ".ndjson": OutputFormat.jsonl,
    ".parquet": OutputFormat.parquet,
}


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
            f"cannot tell the format of {path}: use a .csv, .jsonl or .parquet name, or name the format"
        ) from None


#: a CSV cell starting with one of these is neutralised with a leading ``'`` (see the docstring)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "'")
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4})")


def escape_text(text: str) -> str:
    """Text as written in a cell: backslashes doubled, non-UTF-8 bytes as ``\\xHH``.

    ``text`` is a Python string as :func:`os.fsdecode` gives it (a byte that is not UTF-8 is a
    ``surrogateescape`` character ``U+DC80..U+DCFF``). The inverse is :func:`unescape_text`.
    """
    if "\\" not in text:
        try:
            text.encode("utf-8")
            return text  # the common case: nothing to escape
        except UnicodeEncodeError:
            pass
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def unescape_text(text: str) -> str:
    """The inverse of :func:`escape_text` (``\\xHH`` back to the ``surrogateescape`` character)."""
    if "\\" not in text:
        return text

    def one(match: re.Match[str]) -> str:
        what = match.group(1)
        if what == "\\":
            return "\\"
        if what[0] == "x":
            byte = int(what[1:], 16)
            return chr(0xDC00 + byte) if byte >= 0x80 else chr(byte)
        return chr(int(what[1:], 16))

    return _ESCAPE.sub(one, text)


#: bidirectional overrides and isolates: they reorder what a terminal shows after them
_BIDI = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))


def printable_text(text: str) -> str:
    """``text`` for a terminal: :func:`escape_text`, and control characters escaped too.

    A file name can hold ANSI escape sequences (``\\x1b]0;...``) that would retitle, recolour or
    rewrite the user's terminal when printed, a carriage return that hides what precedes it, or
    bidirectional overrides that reorder it. Those are written ``\\xHH`` (below 0x80) or
    ``\\uXXXX``; :func:`unescape_text` still gives the original back.
    """
    text = escape_text(text)
    if text.isprintable() and not _BIDI.intersection(text):
        return text
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if ch in _BIDI or (not ch.isprintable() and ch != " "):
            out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def encode_cell(text: str, fmt: OutputFormat | str) -> str:
    """A text value as written in ``fmt``: escaped, and in CSV neutralised against formulas."""
    text = escape_text(text)
    if OutputFormat(fmt) == OutputFormat.csv and text.startswith(FORMULA_START):
        return "'" + text
    return text


def decode_cell(cell: str, fmt: OutputFormat | str) -> str:
    """A text cell read back from ``fmt`` -> the original value (``os.fsencode`` it for bytes)."""
    if OutputFormat(fmt) == OutputFormat.csv and cell.startswith("'"):
        cell = cell[1:]
    return unescape_text(cell)


def columns(*, labelled: bool, class_names: Sequence[str] | None = None) -> list[str]:
    """Column names: ``path, [label,] prediction, confidence, error[, p_<class>...]``.

    OutputError when two class names are the same: their columns would merge.
    """
    cols = ["path", *(["label"] if labelled else []), "prediction", "confidence", "error"]
    names = list(class_names or ())
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})[:3]
        raise OutputError(
            f"class names repeat ({', '.join(map(repr, twice))}): columns would merge"
        )
    return cols + [f"p_{name}" for name in names]


class RowWriter:
    """Writes :class:`Prediction` rows in one format to an open text stream.

    Text cells are written as the module docstring says (:func:`encode_cell`).
    """

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
        header = columns(labelled=labelled, class_names=self.class_names)
        self.count = 0
        self._csv: Any = None
        self._csv_quoted: Any = None
        if fmt == OutputFormat.csv:
            self._csv = csv.writer(stream, lineterminator="\n")
            # With "\n" line ends the csv module leaves a lone "\r" unquoted, and readers then
            # split the row there: rows with a "\r" anywhere are written fully quoted.
            self._csv_quoted = csv.writer(stream, lineterminator="\n", quoting=csv.QUOTE_ALL)
            self._write_csv([encode_cell(c, OutputFormat.csv) for c in header])

    def write(self, rows: Iterable[Prediction]) -> None:
        """Append rows (in the order given). JSON is strict: no NaN or infinity."""
        for row in rows:
            if self._csv is not None:
                self._write_csv(self._csv_cells(row))
            else:
                record = self._record(row)
                self.stream.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
            self.count += 1

    def _write_csv(self, cells: list[str]) -> None:
        quoted = any("\r" in cell for cell in cells)
        (self._csv_quoted if quoted else self._csv).writerow(cells)

    def _csv_cells(self, row: Prediction) -> list[str]:
        def text(value: str | None) -> str:
            return "" if value is None else encode_cell(value, OutputFormat.csv)

        cells = [text(row.path), *([text(row.label)] if self.labelled else [])]
        confidence = "" if row.confidence is None else f"{row.confidence:.6f}"
        cells += [text(row.prediction), confidence, text(row.error)]
        if self.class_names:
            probs = row.probabilities
            cells += [f"{p:.6f}" for p in probs] if probs else [""] * len(self.class_names)
        return cells

    def _record(self, row: Prediction) -> dict[str, Any]:
        def text(value: str | None) -> str | None:
            return None if value is None else escape_text(value)

        record: dict[str, Any] = {"path": text(row.path)}
        if self.labelled:
            record["label"] = text(row.label)
        record["prediction"] = text(row.prediction)
        record["confidence"] = None if row.confidence is None else round(row.confidence, 6)
        record["error"] = text(row.error)
        if self.class_names:
            probs = row.probabilities
            keys = (escape_text(n) for n in self.class_names)
            values = (round(p, 6) for p in probs) if probs else None
            record["probabilities"] = dict(zip(keys, values, strict=True)) if values else None
        return record


def rows_table(
    rows: Sequence[Prediction], *, labelled: bool, class_names: Sequence[str] | None = None
) -> Any:
    """The rows as a ``pyarrow.Table`` with the CSV's columns (probabilities float64 ``(N, C)``,
    null on error rows). Text is escaped as in JSON Lines (:func:`escape_text`): Parquet strings
    are UTF-8."""
    import pyarrow as pa

    def text(values: Iterable[str | None]) -> Any:
        return pa.array([None if v is None else escape_text(v) for v in values], pa.string())

    names = columns(labelled=labelled, class_names=class_names)
    cells = [text(r.path for r in rows), *([text(r.label for r in rows)] if labelled else [])]
    cells += [
        text(r.prediction for r in rows),
        pa.array([r.confidence for r in rows], pa.float64()),
    ]
    cells.append(text(r.error for r in rows))
    if class_names:
        missing = np.array([r.probabilities is None for r in rows], bool)
        blank = (np.nan,) * len(class_names)
        probs = np.array([r.probabilities or blank for r in rows], np.float64)
        probs = probs.reshape(len(rows), len(class_names))
        cells += [pa.array(probs[:, c], pa.float64(), mask=missing) for c in range(probs.shape[1])]
    return pa.table(cells, names=[escape_text(n) for n in names])


class ParquetRows:
    """Rows into one Parquet file (a row group per :meth:`write`), the columns of the CSV."""

    def __init__(self, sink: IO[bytes], *, labelled: bool, class_names: Sequence[str] | None):
        self.sink, self.labelled, self.class_names = sink, labelled, class_names
        self.count = 0
        self._writer: Any = None

    def write(self, rows: Sequence[Prediction]) -> None:
        import pyarrow.parquet as pq

        table = rows_table(rows, labelled=self.labelled, class_names=self.class_names)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.sink, table.schema)
        if rows:
            self._writer.write_table(table)
        self.count += len(rows)

    def close(self) -> None:
        self.write([])  # no rows: still a valid file with the columns
        self._writer.close()


class NoRows:
    """The rows are written elsewhere (by the Ray workers): nothing to write here."""

    def write(self, rows: Sequence[Prediction]) -> None:
        pass


@contextlib.contextmanager
def open_rows(
    path: Path | None,
    fmt: OutputFormat | str = OutputFormat.auto,
    *,
    labelled: bool,
    class_names: Sequence[str] | None = None,
    stream: IO[str] | None = None,
) -> Iterator[RowWriter | ParquetRows]:
    """A writer of rows on ``path`` (atomic: renamed into place only on success).

    Whatever ends the run early (an exception, Ctrl-C, SIGTERM, SIGHUP, and where Linux's
    ``O_TMPFILE`` works even SIGKILL) leaves ``path`` as it was and no temporary file: see
    :func:`lstm_export.fileio.atomic_open`. With ``path=None`` the rows go to ``stream`` (the CLI
    passes stdout). ``class_names`` adds one probability column per class. Parquet needs
    ``pyarrow`` (installed with the ``ray`` extra).
    """
    concrete = resolve_format(path, fmt)
    if concrete == OutputFormat.parquet:
        if path is None:
            raise OutputError("Parquet rows need an output file, not the terminal")
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError as exc:
            raise OutputError(
                f"Parquet needs pyarrow: pip install 'lstm-export[ray]' ({exc})"
            ) from exc
        with atomic_open(Path(path), "wb") as out:
            parquet = ParquetRows(out, labelled=labelled, class_names=class_names)
            yield parquet
            parquet.close()
    elif path is None:
        if stream is None:
            raise OutputError("no output: give a path or a stream")
        yield RowWriter(stream, concrete, labelled=labelled, class_names=class_names)
        stream.flush()
    else:
        with atomic_open(Path(path), "w", encoding="utf-8", newline="") as out:
            yield RowWriter(out, concrete, labelled=labelled, class_names=class_names)
