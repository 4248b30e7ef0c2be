"""Options shared by several commands, declared once in typer's ``Annotated`` form; panels group
the flags a first-time reader can skip in ``--help``."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

#: ``--help`` panels
TUNING = "Tuning"
RAY = "Ray (--engine ray)"
OUTPUT = "Output"


class Engine(str, Enum):
    """Where ``infer`` and ``serve`` run: in this process, or on Ray (Ray Data, Ray Serve)."""

    in_process = "in-process"
    ray = "ray"


JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout.", rich_help_panel=OUTPUT)
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder with the four MNIST IDX files (raw or .gz). Default: $LSTM_EXPORT_DATA_DIR, else the cache.",
        show_default=False,
    ),
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="Threads for the model (capped at the cores this machine has).",
        show_default="auto",
        rich_help_panel=TUNING,
    ),
]
TrustFlag = Annotated[
    bool,
    typer.Option(
        "--trust-model",
        help="Lift the checks that keep a model file from running code (TorchScript code, other "
        "ONNX operator domains): only for a file from a source you trust.",
    ),
]
ProgressFlag = Annotated[
    bool,
    typer.Option(
        "--progress/--no-progress", help="Progress bar on stderr.", rich_help_panel=OUTPUT
    ),
]
CheckpointArg = Annotated[
    Path, typer.Argument(help="Run folder or checkpoint file (model.pt).", show_default=False)
]


def cap_threads(threads: int | None) -> int | None:
    """``--threads`` capped at the cores this process may use, saying so on stderr."""
    from lstm_export.console import count, err_console
    from lstm_export.devices import usable_cores

    cores = usable_cores()
    if threads is None or threads <= cores:
        return threads
    err_console.print(
        f"note: --threads {threads} is more than the {count(cores, 'core')} here; using {cores}"
    )
    return cores


def positive_finite(value: float | None) -> float | None:
    """A typer callback: the value must be a finite number above 0 (``inf`` and ``nan`` parse)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a finite number > 0, got {value}")
    return value
