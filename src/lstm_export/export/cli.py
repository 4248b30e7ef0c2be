"""``lstm-export onnx``, ``torchscript``, ``inspect`` and ``shapes``: results on stdout (through
:mod:`lstm_export.export.render`, or whole with ``--json``), progress and caveats on stderr."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from lstm_export.cli_options import CheckpointArg, DataDirOption, JsonFlag
from lstm_export.console import print_json, progress_bar
from lstm_export.data.cli import require_mnist
from lstm_export.export import render


class InspectDevice(str, Enum):
    """Device whose ONNX Runtime providers ``inspect`` reports node placement for."""

    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


def _out_option(default: str) -> Any:
    return typer.Option(
        "--out", "-o", help=f"File to write (default: {default} beside the checkpoint)."
    )


ValidateFlag = Annotated[
    bool,
    typer.Option("--validate/--no-validate", help="Check the written file against eager PyTorch."),
]
WithStateFlag = Annotated[
    bool,
    typer.Option(
        "--with-state",
        help="Also take h_0, c_0 and return h_n, c_n, to feed rows in chunks (unidirectional "
        "models; ONNX: implies --dynamic-seq).",
    ),
]
ToleranceOption = Annotated[
    float,
    typer.Option("--tolerance", help="Largest allowed absolute logit difference in validation."),
]


def _prepare(checkpoint: Path, out: Path | None, tolerance: float) -> None:
    """Checks before any work: a positive tolerance, and -o is not the checkpoint itself."""
    from lstm_export.checkpoint import resolve_checkpoint
    from lstm_export.errors import ConfigError
    from lstm_export.fileio import check_outputs_against_inputs

    if not tolerance > 0:
        raise ConfigError(f"--tolerance must be > 0, got {tolerance}")
    check_outputs_against_inputs([out], [resolve_checkpoint(checkpoint)])


def onnx(
    checkpoint: CheckpointArg,
    out: Annotated[Path | None, _out_option("model.onnx")] = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset (default 20).")] = None,
    legacy: Annotated[
        bool, typer.Option("--legacy", help="The TorchScript-based exporter (dynamo=False).")
    ] = False,
    validate: ValidateFlag = True,
    tolerance: ToleranceOption = 1e-4,
    int8: Annotated[
        bool, typer.Option("--int8", help="Also write <out>.int8.onnx (accuracy-guarded).")
    ] = False,
    int8_max_drop: Annotated[
        float, typer.Option("--int8-max-drop", min=0.0, help="Largest int8 accuracy loss (points).")
    ] = 0.3,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Also write <out>.fp16.onnx (fp16 weights; GPUs).")
    ] = False,
    dynamic_seq: Annotated[
        bool,
        typer.Option("--dynamic-seq", help="Any number of rows (validated at 1, 7, 28 and 100)."),
    ] = False,
    with_state: WithStateFlag = False,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Export a checkpoint to ONNX, prove it matches eager PyTorch, optionally int8 / fp16 too.

    `infer` feeds every file 28 rows (it resizes images to 28x28); --dynamic-seq files take
    other lengths through the Python API.
    """
    from functools import partial

    from lstm_export.errors import LstmExportError
    from lstm_export.export.fp16 import convert_fp16
    from lstm_export.export.quantize import quantize_int8
    from lstm_export.export.to_onnx import export_onnx

    _prepare(checkpoint, out, tolerance)
    if validate or int8:  # the int8 guard needs MNIST even with --no-validate
        data_dir = require_mnist(data_dir)
    with progress_bar(transient=True) as progress:
        report = export_onnx(
            checkpoint, out, opset=opset, legacy=legacy, validate=validate, tolerance=tolerance,
            data_dir=data_dir, progress=progress, dynamic_seq=dynamic_seq, with_state=with_state,
        )  # fmt: skip
    reports: dict[str, Any] = {"onnx": report}
    if not as_json:
        render.onnx(report)
    steps: list[tuple[str, Any, Any]] = []  # files derived from the fp32 one: tag, how, render
    if int8:
        int8_guard = partial(quantize_int8, max_accuracy_drop=int8_max_drop / 100)
        steps.append(("int8", int8_guard, render.int8))
    if fp16:
        steps.append(("fp16", partial(convert_fp16, validate=validate), render.fp16))
    try:
        for tag, derive, show in steps:
            with progress_bar(transient=True) as progress:
                reports[tag] = derive(report.path, data_dir=data_dir, progress=progress)
            if not as_json:
                show(reports[tag])
    except LstmExportError as exc:  # the fp32 file is valid and stays: the one line says so
        state = "written and validated" if report.validation else "written (not validated)"
        raise type(exc)(f"{exc} ({report.path} itself was {state})") from exc
    if as_json:
        print_json(reports)


def torchscript(
    checkpoint: CheckpointArg,
    out: Annotated[Path | None, _out_option("model.ts")] = None,
    validate: ValidateFlag = True,
    tolerance: ToleranceOption = 1e-4,
    with_state: WithStateFlag = False,
    data_dir: DataDirOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Export a checkpoint to TorchScript (scripted, frozen, optimised) and prove it.

    The file takes any number of rows; validation runs 1, 7, 28 and 100.
    """
    from lstm_export.export.to_torchscript import export_torchscript

    _prepare(checkpoint, out, tolerance)
    if validate:
        data_dir = require_mnist(data_dir)
    with progress_bar(transient=True) as progress:
        report = export_torchscript(
            checkpoint, out, validate=validate, tolerance=tolerance, data_dir=data_dir,
            progress=progress, with_state=with_state,
        )  # fmt: skip
    print_json(report) if as_json else render.torchscript(report)


def inspect(
    model: Annotated[
        Path, typer.Argument(help="A .onnx, .ts or .pt file (or a run folder).", show_default=False)
    ],
    device: Annotated[
        InspectDevice,
        typer.Option("--device", help="ONNX only: report node placement for this device."),
    ] = InspectDevice.cpu,
    as_json: JsonFlag = False,
) -> None:
    """Show a model file's ops, opset, inputs/outputs, metadata and (ONNX) node placement."""
    from lstm_export.export.inspect_model import inspect_model

    with progress_bar(transient=True) as progress:
        progress(f"inspecting {model}", 0, 0)
        info = inspect_model(model, device.value)
    print_json(info) if as_json else render.inspect(info)


def shapes(
    model: Annotated[
        Path,
        typer.Argument(
            help="A checkpoint or run folder (everything measured), or a .onnx / .ts file.",
            show_default=False,
        ),
    ],
    batch: Annotated[
        int, typer.Option("--batch", "-n", min=1, help="N: images in the batch run.")
    ] = 3,
    seq_len: Annotated[
        int, typer.Option("--seq-len", "-t", min=1, help="T: rows (steps) fed.")
    ] = 28,
    as_json: JsonFlag = False,
) -> None:
    """nn.LSTM's arguments, every tensor's shape (formula and measured) and their identities.

    A shape that differs from its formula, or an identity that fails, is an error (exit 1).
    """
    from lstm_export.export.shapes import check_shapes, measure_shapes

    with progress_bar(transient=True) as progress:
        progress(f"running {model}", 0, 0)
        report = measure_shapes(model, batch, seq_len)
    print_json(report) if as_json else render.shapes(report)
    check_shapes(report)
