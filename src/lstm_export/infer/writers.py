r"""Prediction rows to CSV, JSON Lines or Parquet, into a temporary file renamed on success.

Text cells (``path``, ``label``, ``prediction``, ``error``) are UTF-8 whatever a file name holds:
a byte that is not UTF-8 (a ``surrogateescape`` character, as :func:`os.listdir` gives it) is
written ``\xHH``, another lone surrogate ``\uXXXX``, a backslash ``\\`` (:func:`escape_text`).
In CSV a cell starting with ``=``, ``+``, ``-``, ``@``, a tab, CR, LF or ``'`` gets a leading ``'``
(a spreadsheet would run it as a formula). ``os.fsencode(decode_cell(cell, fmt))`` gives back a
file name's bytes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Any

from lstm_export.errors import OutputError
from lstm_export.fileio import atomic_open


@dataclass(frozen=True, slots=True)
class Prediction:
    """One image file's row: ``path`` relative to the folder (``/``-separated), the class name
    ``prediction`` and its softmax ``confidence`` (None on error), ``error`` (None when
    classified), ``label``: the true class of an ImageFolder layout (its first-level folder), and
    the softmax ``probabilities`` ``(C,)`` when asked for."""

    path: str
    prediction: str | None
    confidence: float | None
    error: str | None = None
    label: str | None = None
    probabilities: tuple[float, ...] | None = None


class OutputFormat(str, Enum):
    """``auto`` takes the format from the output's suffix (CSV on stdout)."""

    auto = "auto"
    csv = "csv"
    jsonl = "jsonl"
    parquet = "parquet"


_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
#: a CSV cell starting with one of these gets a leading ``'``
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "'")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4})")
_TEXT_COLUMNS = ("path", "label", "prediction", "error")


def resolve_format(path: Path | None, fmt: OutputFormat | str = OutputFormat.auto) -> OutputFormat:
    """The concrete format for ``path`` (None: stdout); OutputError for an unknown suffix."""
    if OutputFormat(fmt) != OutputFormat.auto:
        return OutputFormat(fmt)
    suffix = "" if path is None else Path(path).suffix.lower()
    if path is not None and suffix not in _SUFFIXES:
        raise OutputError(
            f"cannot tell the format of {path}: use a .csv, .jsonl or .parquet name, or name the format"
        )
    return OutputFormat(_SUFFIXES.get(suffix, "csv"))


def _surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def escape_text(text: str) -> str:
    """Text as written in a cell (see the module docstring); ``text`` as :func:`os.fsdecode`
    gives it. The inverse is :func:`unescape_text`."""
    return _SURROGATE.sub(_surrogate, text.replace("\\", "\\\\"))


def _unescape(match: re.Match[str]) -> str:
    what = match.group(1)
    if what == "\\":
        return "\\"
    code = int(what[1:], 16)
    return chr(0xDC00 + code) if what[0] == "x" and code >= 0x80 else chr(code)


def unescape_text(text: str) -> str:
    """The inverse of :func:`escape_text` (``\\xHH`` back to the ``surrogateescape`` character)."""
    return _ESCAPE.sub(_unescape, text)


def printable_text(text: str) -> str:
    """``text`` for a terminal: :func:`escape_text`, and every character that is not printable
    (ANSI escape sequences, CR, bidirectional overrides) as ``\\xHH`` or ``\\uXXXX`` too, which
    :func:`unescape_text` still undoes."""
    return "".join(
        ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 0x80 else f"\\u{ord(ch):04x}"
        for ch in escape_text(text)
    )


def _csv_cell(value: Any) -> str:
    """A cell of :func:`cells` in CSV: formulas neutralised, numbers with 6 decimals."""
    if isinstance(value, str):
        return "'" + value if value.startswith(FORMULA_START) else value
    return "" if value is None else f"{value:.6f}"


def encode_cell(text: str, fmt: OutputFormat | str) -> str:
    """A text value as written in ``fmt``: escaped, and in CSV neutralised against formulas."""
    text = escape_text(text)
    return _csv_cell(text) if OutputFormat(fmt) == OutputFormat.csv else text


def decode_cell(cell: str, fmt: OutputFormat | str) -> str:
    """A text cell read back from ``fmt`` -> the original value (``os.fsencode`` it for bytes)."""
    if OutputFormat(fmt) == OutputFormat.csv and cell.startswith("'"):
        cell = cell[1:]
    return unescape_text(cell)


def columns(*, labelled: bool, class_names: Sequence[str] | None = None) -> list[str]:
    """Column names: ``path, [label,] prediction, confidence, error[, p_<class>...]`` (escaped);
    OutputError when two class names are the same (their columns would merge)."""
    twice = [name for name, n in Counter(class_names or ()).items() if n > 1]
    if twice:
        raise OutputError(
            f"class names repeat ({', '.join(map(repr, twice[:3]))}): columns would merge"
        )
    cols = ["path", *(["label"] if labelled else []), "prediction", "confidence", "error"]
    return cols + [f"p_{escape_text(name)}" for name in class_names or ()]


def cells(row: Prediction, labelled: bool, classes: int) -> list[Any]:
    """``row`` in the order of :func:`columns`: text escaped, numbers as floats, None if empty."""
    values = [row.path, *([row.label] if labelled else []), row.prediction, row.confidence]
    out = [escape_text(v) if isinstance(v, str) else v for v in [*values, row.error]]
    if classes:
        out += row.probabilities or [None] * classes
    return out


def rows_table(
    rows: Sequence[Prediction], *, labelled: bool, class_names: Sequence[str] | None = None
) -> Any:
    """The rows as a ``pyarrow.Table`` of :func:`columns` (text as in JSON Lines, numbers
    float64, probabilities ``(N, C)`` null on error rows)."""
    import pyarrow as pa

    names = columns(labelled=labelled, class_names=class_names)
    table = [cells(r, labelled, len(class_names or ())) for r in rows]
    values = list(zip(*table, strict=True)) or [()] * len(names)
    kinds = [pa.string() if name in _TEXT_COLUMNS else pa.float64() for name in names]
    return pa.table([pa.array(v, k) for v, k in zip(values, kinds, strict=True)], names=names)


class RowWriter:
    """Writes :class:`Prediction` rows in one format: CSV or JSON Lines (strict: no NaN) on a
    text stream, Parquet (a row group per :meth:`write`) on a binary one."""

    def __init__(
        self, stream: IO[Any], fmt: OutputFormat, labelled: bool, class_names: Sequence[str]
    ) -> None:
        self.stream, self.fmt, self.labelled = stream, fmt, labelled
        self.class_names = list(class_names)
        self.names = columns(labelled=labelled, class_names=self.class_names)
        # with "\n" line ends the csv module leaves a lone "\r" unquoted: such rows are all quoted
        self._csv = csv.writer(stream, lineterminator="\n")
        self._quoted = csv.writer(stream, lineterminator="\n", quoting=csv.QUOTE_ALL)
        if fmt == OutputFormat.csv:
            self._write_csv(self.names)
        if fmt == OutputFormat.parquet:  # the columns are written even without rows
            import pyarrow.parquet as pq

            self._parquet = pq.ParquetWriter(stream, self._table([]).schema)

    def write(self, rows: Sequence[Prediction]) -> None:
        """Append ``rows`` in the order given."""
        if self.fmt == OutputFormat.parquet:
            if rows:
                self._parquet.write_table(self._table(rows))
            return
        for row in rows:
            values = cells(row, self.labelled, len(self.class_names))
            if self.fmt == OutputFormat.csv:
                self._write_csv(values)
            else:
                line = json.dumps(self._record(values), ensure_ascii=False, allow_nan=False)
                self.stream.write(line + "\n")

    def close(self) -> None:
        """End a Parquet file."""
        if self.fmt == OutputFormat.parquet:
            self._parquet.close()

    def _write_csv(self, values: list[Any]) -> None:
        text = [_csv_cell(v) for v in values]
        (self._quoted if any("\r" in cell for cell in text) else self._csv).writerow(text)

    def _record(self, values: list[Any]) -> dict[str, Any]:
        k = len(self.names) - len(self.class_names)
        numbers = [round(v, 6) if isinstance(v, float) else v for v in values]
        record = dict(zip(self.names[:k], numbers[:k], strict=True))
        if self.class_names:
            keys = [escape_text(n) for n in self.class_names]
            probs = None if values[k] is None else dict(zip(keys, numbers[k:], strict=True))
            record["probabilities"] = probs
        return record

    def _table(self, rows: Sequence[Prediction]) -> Any:
        return rows_table(rows, labelled=self.labelled, class_names=self.class_names)


@contextlib.contextmanager
def open_rows(
    path: Path | None,
    fmt: OutputFormat | str = OutputFormat.auto,
    *,
    labelled: bool,
    class_names: Sequence[str] | None = None,
    stream: IO[str] | None = None,
) -> Iterator[RowWriter]:
    """A writer of rows on ``path``, renamed into place only on success, so whatever ends the run
    early leaves ``path`` as it was (:func:`lstm_export.fileio.atomic_open`); with ``path=None``
    on ``stream`` (the CLI passes stdout). ``class_names`` adds one probability column per class.
    Parquet needs ``pyarrow`` (the ``ray`` extra)."""
    concrete = resolve_format(path, fmt)
    parquet = concrete == OutputFormat.parquet
    if path is None:
        if parquet or stream is None:
            raise OutputError("Parquet rows need an output file" if parquet else "no output")
        yield RowWriter(stream, concrete, labelled, class_names or ())
        stream.flush()
        return
    try:
        if parquet:
            import pyarrow.parquet  # noqa: F401
    except ImportError as exc:
        raise OutputError(f"Parquet needs pyarrow: pip install 'lstm-export[ray]' ({exc})") from exc
    text = {} if parquet else {"encoding": "utf-8", "newline": ""}
    with atomic_open(Path(path), "wb" if parquet else "w", **text) as out:
        writer = RowWriter(out, concrete, labelled, class_names or ())
        yield writer
        writer.close()
