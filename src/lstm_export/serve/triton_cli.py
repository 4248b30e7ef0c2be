"""``lstm-export triton``: write a Triton model repository for an exported model.

The only module of :mod:`lstm_export.serve.triton_config` that prints; the library does the work.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from lstm_export.cli_options import OUTPUT, TUNING, JsonFlag
from lstm_export.console import console, plain
from lstm_export.serve.triton_config import InstanceKind, RepositoryReport

TORCHSCRIPT_HELP = "Also write the run's model.ts as a pytorch_libtorch model <name>_torchscript."
OPENVINO_HELP = "Also write OpenVINO IR (model.xml/.bin) as an openvino model <name>_openvino."

NameOption = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="Model name (folder name in the repository). Default: the run folder's name.",
        show_default=False,
    ),
]


def _tuning(default: Any, flag: str, low: float, text: str) -> Any:
    """A numeric option of the Tuning panel, at least ``low``."""
    return typer.Option(default, flag, min=low, help=text, rich_help_panel=TUNING)


def triton(
    model: Path = typer.Argument(..., help="Run folder (with model.onnx) or an ONNX file."),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Repository folder: new, empty, or an existing model repository.",
        rich_help_panel=OUTPUT,
    ),
    name: NameOption = None,
    version: int = typer.Option(1, "--version", min=1, help="Version folder to write."),
    torchscript: bool = typer.Option(False, "--torchscript", help=TORCHSCRIPT_HELP),
    openvino: bool = typer.Option(False, "--openvino", help=OPENVINO_HELP),
    max_batch_size: int = _tuning(
        256, "--max-batch-size", 1, "Largest batch Triton forms (1: none)."
    ),
    max_queue_delay_us: int = _tuning(
        100, "--max-queue-delay-us", 0, "How long dynamic batching waits for more requests, in us."
    ),
    instances: int = _tuning(1, "--instances", 1, "Model instances (instance_group count)."),
    kind: InstanceKind = typer.Option(
        InstanceKind.cpu, "--kind", help="Where the instances run.", rich_help_panel=TUNING
    ),
    max_sequences: int = _tuning(1000, "--max-sequences", 1, "Stateful: sequences kept at once."),
    sequence_idle_s: float = _tuning(
        60.0,
        "--sequence-idle-s",
        0.001,
        "Stateful: seconds after which an idle sequence is dropped.",
    ),
    as_json: JsonFlag = False,
) -> None:
    """Write a Triton model repository: config.pbtxt (Triton's ModelConfig) + <version>/model.onnx.

    Inputs and outputs are read from the model's own session and checked against its metadata.
    A --with-state export gets sequence batching with Triton's implicit state.
    `lstm-export serve REPO` serves the repository as Triton does.
    """
    from lstm_export.serve.triton_config import TritonOptions, write_repository

    options = TritonOptions(
        name=name,
        version=version,
        torchscript=torchscript,
        openvino=openvino,
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        kind=kind,
        max_sequences=max_sequences,
        sequence_idle_us=round(sequence_idle_s * 1e6),
    )
    _show(write_repository(model, out, options), as_json)


def _show(report: RepositoryReport, as_json: bool) -> None:
    """The repository written: JSON on stdout, or one line per model."""
    if as_json:
        console.print_json(json.dumps(dataclasses.asdict(report), default=str))
        return
    what = "wrote" if report.created else "updated"
    console.print(f"{what} Triton model repository {plain(report.repo)}", highlight=False)
    for m in report.models:
        added = "  (new version)" if m.added_version_only else ""
        console.print(
            f"  {plain(m.name)}  version {m.version}  {m.backend}  {plain(m.folder)}{added}",
            highlight=False,
        )
    for note in report.notes:
        console.print(f"  note: {plain(note)}", highlight=False)
