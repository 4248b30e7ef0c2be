"""Terminal output shared by the CLI modules: consoles, escaping, progress bars, JSON, logging."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console()
err_console = Console(stderr=True)

#: C0 and C1 control characters, DEL included (an escape sequence starts with ESC, 0x1b, or CSI, 0x9b)
_CONTROL = {
    c: f"\\x{c:02x}" for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)] if chr(c) not in "\t"
}


def plain(text: object) -> str:
    """``text`` from outside (a path, a file name, model metadata, an exception message) made safe
    to print: control characters shown as ``\\xNN`` so no escape sequence reaches the terminal,
    and rich markup escaped so ``model[v2].onnx`` prints as it is, never as a style."""
    from rich.markup import escape

    return escape(str(text).translate(_CONTROL))


def count(n: int, noun: str) -> str:
    """``1 image``, ``2 images``: a count with its noun (a regular plural)."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def print_whole(target: Console, renderable: RenderableType) -> None:
    """Print ``renderable`` (a table) at its natural width even where that is wider than the
    console (an 80-column log file, a narrow terminal): rich would otherwise cut cells to "10…"."""
    from rich.measure import Measurement

    needed = Measurement.get(target, target.options.update(width=10_000), renderable).maximum
    width = target.width
    try:
        target.width = max(width, needed)
        target.print(renderable)
    finally:
        target.width = width


_LOG_CONTROL = {c: v for c, v in _CONTROL.items() if c != 0x0A}  # a message may have lines


class _NoControlCharacters(logging.Filter):
    """Log messages quote paths and exception texts: no escape sequence reaches the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = record.getMessage().translate(_LOG_CONTROL), None
        return True


def setup_logging(verbose: bool) -> None:
    """Library logs go to stderr through rich (no markup); warnings only unless ``verbose``."""
    handler = RichHandler(console=err_console, show_time=False, show_path=False)
    handler.addFilter(_NoControlCharacters())
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[handler],
        force=True,
    )


def make_progress(*extra: ProgressColumn, transient: bool = False) -> Progress:
    """A progress bar on stderr (so stdout stays machine-readable), with count and ETA."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
    )


@contextmanager
def progress_bar(*, transient: bool = False) -> Iterator[Callable[[str, int, int], None]]:
    """A bar driven by a library's ``progress(description, done, total)`` callback (``total``
    0: not known yet, a spinner)."""
    progress = make_progress(transient=transient)
    task = progress.add_task("starting", total=None)

    def report(description: str, done: int, total: int) -> None:
        progress.update(task, description=plain(description), completed=done, total=total or None)

    with progress:
        yield report


def to_jsonable(value: Any) -> Any:
    """A report as JSON-ready data: its ``to_dict()`` where it has one, else a dataclass's fields
    and public properties; paths and enums as strings."""
    if hasattr(value, "to_dict"):
        return to_jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        for name, attr in vars(type(value)).items():
            if isinstance(attr, property) and not name.startswith("_"):
                out[name] = getattr(value, name)
        return to_jsonable(out)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    return str(value) if isinstance(value, Path) else value


def print_json(value: Any) -> None:
    """``value`` (a report, a dict) as JSON on stdout."""
    console.print_json(json.dumps(to_jsonable(value)))
