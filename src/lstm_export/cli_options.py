"""Options shared by several commands, declared once in typer's ``Annotated`` form.

A command writes ``as_json: JsonFlag = False`` instead of repeating the flag, its name and its help.
Panels group the flags a first-time reader can skip in ``--help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

#: ``--help`` panels
TUNING = "Tuning"
RAY = "Ray (--engine ray)"
OUTPUT = "Output"

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
ProgressFlag = Annotated[
    bool,
    typer.Option("--progress/--no-progress", help="Progress bar on stderr.", rich_help_panel=OUTPUT),
]
