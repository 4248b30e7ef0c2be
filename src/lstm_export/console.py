"""Terminal output shared by the CLI modules: consoles, progress bars, logging setup."""

from __future__ import annotations

import logging

from rich.console import Console, RenderableType
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console()
err_console = Console(stderr=True)

#: C0 and C1 control characters, DEL included (an escape sequence starts with ESC, 0x1b, or CSI, 0x9b)
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)] if chr(c) not in "\t"}


def plain(text: object) -> str:
    """``text`` from outside (a path, a file name, model metadata, an exception message) made safe
    to print: control characters shown as ``\\xNN`` so no escape sequence reaches the terminal,
    and rich markup escaped so ``model[v2].onnx`` prints as it is, never as a style."""
    from rich.markup import escape

    return escape(str(text).translate(_CONTROL))


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


def setup_logging(verbose: bool) -> None:
    """Library logs go to stderr through rich; warnings only unless ``verbose``."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_time=False, show_path=False)],
        force=True,
    )


def make_progress(*extra: TextColumn) -> Progress:
    """A progress bar on stderr (so stdout stays machine-readable), with count and ETA."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )
