"""``lstm-export onnx``, ``torchscript``, ``inspect`` and ``shapes``.

The only module of the export stage that prints: results on stdout (or JSON with ``--json``),
progress spinners and caveats on stderr. Heavy imports stay inside the commands.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from lstm_export.console import console, err_console
from lstm_export.data.cli import require_mnist

DATA_DIR_HELP = "Folder with the MNIST IDX files (default: $LSTM_EXPORT_DATA_DIR, then the cache)."


class InspectDevice(str, Enum):
    """Device whose ONNX Runtime providers ``inspect`` reports node placement for."""

    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


# -- output helpers --------------------------------------------------------------------------------
def _refuse_overwriting_the_checkpoint(out: Path | None, checkpoint: Path) -> None:
    """-o may not name the checkpoint (or any other input): checked before any work."""
    from lstm_export.checkpoint import resolve_checkpoint
    from lstm_export.fileio import check_outputs_against_inputs

    check_outputs_against_inputs([out], [resolve_checkpoint(checkpoint)])


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        for name in (
            "by_provider",
            "max_abs_diff",
            "agreement",
            "control_flow",
            "ok",
            "holds",
            "problems",
        ):
            attr = getattr(type(value), name, None)
            if isinstance(attr, property):
                out[name] = _jsonable(getattr(value, name))
        return out
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    return value


def _print_json(payload: Any) -> None:
    console.print_json(json.dumps(_jsonable(payload)))


def _size(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):,.2f} MiB"


def _ops(counts: dict[str, int]) -> str:
    return ", ".join(f"{op} {n}" for op, n in counts.items())


def _line(label: str, text: str) -> None:
    from rich.markup import escape

    console.print(f"  [bold]{label:<9}[/] {escape(text)}", highlight=False, soft_wrap=True)


@contextmanager
def _progress() -> Iterator[Any]:
    """A transient spinner / bar on stderr driven by the library's progress callback."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    if not err_console.is_terminal:  # pipes and CI logs get no animation, only the results

        def silent(description: str, completed: int, total: int) -> None:
            pass

        yield silent
        return
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    task = progress.add_task("starting", total=None)

    def report(description: str, completed: int, total: int) -> None:
        progress.update(task, description=description, completed=completed, total=total or None)

    with progress:
        yield report


def _print_validation(validation: Any) -> None:
    if validation is None:
        console.print("[yellow]not validated[/] (--no-validate)")
        return
    console.print(
        f"[green]validated[/] {validation.candidate} vs {validation.reference}, "
        f"tolerance {validation.tolerance:.0e} ({validation.seconds:.1f} s)",
        highlight=False,
        soft_wrap=True,
    )
    if validation.structural:
        _line("checks", ", ".join(validation.structural))
    lengths = sorted({c.seq_len for c in validation.checks})
    for c in validation.checks:
        rows = f" x {c.seq_len}" if lengths != [28] else ""
        _line(
            f"batch {c.batch}{rows}",
            f"max |logit diff| {c.max_abs_diff:.2e}, argmax agreement {c.agree}/{c.batch}",
        )
    for st in getattr(validation, "streams", []):
        _line(
            "stream",
            f"{st.batch} digit(s) in chunks {'+'.join(str(n) for n in st.chunks)} with the state "
            f"carried vs all at once: max |diff| (logits, h_n, c_n) {st.chunked:.2e}; "
            f"eager PyTorch the same {st.eager_chunked:.2e}; vs eager {st.vs_eager:.2e}; "
            f"stateless vs zero state {st.zero_state:.2e}",
        )


def _print_lstm(nodes: list[Any]) -> str:
    if not nodes:
        return "none"
    parts = [
        f"{n.op_type} {n.direction} hidden {n.hidden_size}"
        + (f", time axis {n.time_axis}" if n.time_axis != "?" else "")
        + ("" if n.weights_are_initializers else " (weights computed in-graph)")
        for n in nodes
    ]
    return f"{len(nodes)} native node(s): " + "; ".join(parts)


# -- commands --------------------------------------------------------------------------------------
def onnx(
    checkpoint: Path = typer.Argument(..., help="Run folder or checkpoint file (model.pt)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="ONNX file to write (default: model.onnx beside the checkpoint)."
    ),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset (default 20)."),
    legacy: bool = typer.Option(
        False,
        "--legacy",
        help="Use the TorchScript-based exporter (dynamo=False) instead of dynamo.",
    ),
    validate: bool = typer.Option(
        True,
        "--validate/--no-validate",
        help="Check ONNX Runtime against eager PyTorch (default on).",
    ),
    tolerance: float = typer.Option(
        1e-4, "--tolerance", help="Largest allowed absolute logit difference in validation."
    ),
    int8: bool = typer.Option(
        False, "--int8", help="Also write <out>.int8.onnx (dynamic int8, accuracy-guarded)."
    ),
    int8_max_drop: float = typer.Option(
        0.3, "--int8-max-drop", min=0.0, help="Largest int8 accuracy loss allowed, in points."
    ),
    fp16: bool = typer.Option(
        False, "--fp16", help="Also write <out>.fp16.onnx (float16 weights, float32 I/O; for GPUs)."
    ),
    dynamic_seq: bool = typer.Option(
        False,
        "--dynamic-seq",
        help="Symbolic time axis: the file takes any number of rows (validated at 1, 7, 28, 100).",
    ),
    with_state: bool = typer.Option(
        False,
        "--with-state",
        help="Also take h_0, c_0 and return h_n, c_n, to feed rows in chunks (implies "
        "--dynamic-seq; unidirectional models).",
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the reports as JSON on stdout."),
) -> None:
    """Export a checkpoint to ONNX, prove it matches eager PyTorch, optionally int8 / fp16 too.

    `infer` feeds every file 28 rows (it resizes images to 28x28); --dynamic-seq files take
    other lengths through the Python API.
    """
    from lstm_export.errors import ConfigError
    from lstm_export.export.to_onnx import export_onnx

    if not tolerance > 0:
        raise ConfigError(f"--tolerance must be > 0, got {tolerance}")
    _refuse_overwriting_the_checkpoint(out, checkpoint)
    if validate or int8:  # the int8 guard needs MNIST even with --no-validate
        data_dir = require_mnist(data_dir)
    reports: dict[str, Any] = {}
    with _progress() as progress:
        report = export_onnx(
            checkpoint,
            out,
            opset=opset,
            legacy=legacy,
            validate=validate,
            tolerance=tolerance,
            data_dir=data_dir,
            progress=progress,
            dynamic_seq=dynamic_seq,
            with_state=with_state,
        )
    reports["onnx"] = report
    if not as_json:
        _print_onnx(report)
    try:
        if int8:
            from lstm_export.export.quantize import quantize_int8

            with _progress() as progress:
                reports["int8"] = quantize_int8(
                    report.path,
                    data_dir=data_dir,
                    max_accuracy_drop=int8_max_drop / 100,
                    progress=progress,
                )
            if not as_json:
                _print_int8(reports["int8"])
        if fp16:
            from lstm_export.export.fp16 import convert_fp16

            with _progress() as progress:
                reports["fp16"] = convert_fp16(
                    report.path, validate=validate, data_dir=data_dir, progress=progress
                )
            if not as_json:
                _print_fp16(reports["fp16"])
    except Exception as exc:
        # The fp32 file is valid and stays; say so on the one error line.
        from lstm_export.errors import LstmExportError

        if isinstance(exc, LstmExportError):
            state = "written and validated" if report.validation else "written (not validated)"
            raise type(exc)(f"{exc} ({report.path} itself was {state})") from exc
        raise
    if as_json:
        _print_json(reports)


def _print_onnx(report: Any) -> None:
    audit = report.audit
    console.print(
        f"[green]wrote[/] {report.path}  ({_size(report.file_size)}, {report.exporter} exporter, "
        f"opset {report.opset}, {report.export_seconds:.1f} s)",
        highlight=False,
        soft_wrap=True,
    )
    for t in audit.inputs:
        _line("input", str(t))
    for t in audit.outputs:
        _line("output", str(t))
    _line("LSTM", _print_lstm(audit.lstm_nodes))
    was = (
        f" (the exporter's {report.simplified_from}, simplified)" if report.simplified_from else ""
    )
    _line("ops", f"{audit.node_count} nodes{was}: {_ops(audit.op_counts)}")
    _line("params", f"{audit.parameters:,}")
    acc = report.metadata.get("test_accuracy")
    _line(
        "metadata",
        f"{len(report.metadata)} keys; test_accuracy {acc or 'unknown'}, "
        f"source sha256 {report.metadata['source_checkpoint_sha256'][:12]}…",
    )
    _print_validation(report.validation)


def _print_int8(r: Any) -> None:
    console.print(
        f"[green]wrote[/] {r.path}  ({_size(r.file_size)}, {r.quantized_lstm_nodes}/{r.lstm_nodes} "
        f"LSTM -> DynamicQuantizeLSTM, {r.quantize_seconds:.2f} s)",
        highlight=False,
        soft_wrap=True,
    )
    _line("ops", _ops(r.audit.op_counts))
    _line(
        "accuracy",
        f"fp32 {r.fp32_accuracy * 100:.2f} %, int8 {r.int8_accuracy * 100:.2f} % on "
        f"{r.test_examples} test images: drop {r.accuracy_drop * 100:.2f} points "
        f"(allowed {r.max_accuracy_drop * 100:.2f}); argmax agreement {r.argmax_agreement * 100:.2f} %",
    )


def _print_fp16(r: Any) -> None:
    console.print(
        f"[green]wrote[/] {r.path}  ({_size(r.file_size)}, fp16 weights, float32 inputs/outputs)",
        highlight=False,
        soft_wrap=True,
    )
    if r.validated:
        _line(
            "accuracy",
            f"fp32 {r.fp32_accuracy * 100:.2f} %, fp16 {r.fp16_accuracy * 100:.2f} % on "
            f"{r.provider}; max |logit diff| {r.max_abs_diff:.2e}, "
            f"argmax agreement {r.argmax_agreement * 100:.2f} %",
        )
    else:
        err_console.print("[yellow]not validated[/] (--no-validate): the fp16 file is unchecked")
    if r.caveat:
        err_console.print(f"[yellow]caveat:[/] {r.caveat}", highlight=False, soft_wrap=True)


def torchscript(
    checkpoint: Path = typer.Argument(..., help="Run folder or checkpoint file (model.pt)."),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="TorchScript file to write (default: model.ts beside the checkpoint).",
    ),
    validate: bool = typer.Option(
        True, "--validate/--no-validate", help="Check the saved file against eager PyTorch."
    ),
    tolerance: float = typer.Option(
        1e-4, "--tolerance", help="Largest allowed absolute logit difference in validation."
    ),
    with_state: bool = typer.Option(
        False,
        "--with-state",
        help="forward(x, h_0=None, c_0=None) -> (logits, h_n, c_n), to feed rows in chunks "
        "(unidirectional models).",
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Export a checkpoint to TorchScript (scripted, frozen, optimised) and prove it.

    The file takes any number of rows; validation runs 1, 7, 28 and 100.
    """
    from lstm_export.errors import ConfigError
    from lstm_export.export.to_torchscript import export_torchscript

    if not tolerance > 0:
        raise ConfigError(f"--tolerance must be > 0, got {tolerance}")
    _refuse_overwriting_the_checkpoint(out, checkpoint)
    if validate:
        data_dir = require_mnist(data_dir)
    with _progress() as progress:
        report = export_torchscript(
            checkpoint,
            out,
            validate=validate,
            tolerance=tolerance,
            data_dir=data_dir,
            progress=progress,
            with_state=with_state,
        )
    if as_json:
        _print_json(report)
        return
    console.print(
        f"[green]wrote[/] {report.path}  ({_size(report.file_size)}, {report.method}, "
        f"{report.export_seconds:.1f} s)",
        highlight=False,
        soft_wrap=True,
    )
    _line(
        "load",
        "torch.jit.load(path) -- no lstm_export import needed; any batch size and number of rows",
    )
    if report.with_state:
        _line("forward", "(x, h_0=None, c_0=None) -> (logits, h_n, c_n); None is zeros")
    _line("ops", _ops(report.op_counts))
    for note in report.notes:
        _line("note", note)
    _print_validation(report.validation)


def inspect(
    model: Path = typer.Argument(..., help="A .onnx, .ts or .pt file (or a run folder)."),
    device: InspectDevice = typer.Option(
        InspectDevice.cpu, "--device", help="ONNX only: report node placement for this device."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the description as JSON on stdout."),
) -> None:
    """Show a model file's ops, opset, inputs/outputs, metadata and (ONNX) node placement."""
    from lstm_export.export.inspect_model import inspect_model

    with _progress() as progress:
        progress(f"inspecting {model}", 0, 0)
        info = inspect_model(model, device.value)
    if as_json:
        _print_json(info)
        return
    console.print(
        f"[bold]{info.path}[/]  {info.format}, {_size(info.file_size)}, sha256 {info.sha256[:16]}…",
        highlight=False,
        soft_wrap=True,
    )
    if info.opset is not None:
        others = ", ".join(f"{d} {v}" for d, v in info.opset_imports.items() if d != "ai.onnx")
        _line(
            "opset",
            f"{info.opset}"
            + (f" (+ {others})" if others else "")
            + f"; ir {info.details.get('ir_version')}, producer {info.details.get('producer')}",
        )
    for t in info.inputs:
        _line("input", str(t))
    for t in info.outputs:
        _line("output", str(t))
    if "forward" in info.details:
        _line("forward", str(info.details["forward"]))
    if info.parameters is not None:
        _line("params", f"{info.parameters:,}")
    _line("ops", _ops(info.ops))
    if info.format == "onnx":
        _line("LSTM", _print_lstm(info.lstm_nodes))
    console.print("  [bold]metadata[/]")
    for key, value in sorted(info.metadata.items()):
        shown = value if len(value) <= 100 else value[:97] + "..."
        console.print(f"    {key}: {shown}", highlight=False, soft_wrap=True, markup=False)
    if info.placement is not None:
        p = info.placement
        console.print(
            f"  [bold]placement[/] (--device {p.device}; session providers: "
            f"{', '.join(p.session_providers)}): "
            + ", ".join(f"{ep} {n} node(s)" for ep, n in p.by_provider.items()),
            highlight=False,
            soft_wrap=True,
        )
        for node in p.nodes:
            console.print(
                f"    {node.provider:<26} {node.op_type:<22} {node.node}",
                highlight=False,
                soft_wrap=True,
                markup=False,
            )


def shapes(
    model: Path = typer.Argument(
        ..., help="A checkpoint or run folder (everything measured), or a .onnx / .ts file."
    ),
    batch: int = typer.Option(3, "--batch", "-n", min=1, help="N: images in the batch run."),
    seq_len: int = typer.Option(28, "--seq-len", "-t", min=1, help="T: rows (steps) fed."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """nn.LSTM's arguments, every tensor's shape (formula and measured) and their identities.

    A shape that differs from its formula, or an identity that fails, is an error (exit 1).
    """
    from lstm_export.export.shapes import check_shapes, measure_shapes

    with _progress() as progress:
        progress(f"running {model}", 0, 0)
        report = measure_shapes(model, batch, seq_len)
    if as_json:
        _print_json(report)
    else:
        _print_shapes(report)
    check_shapes(report)


def _print_shapes(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    sym = report.symbols
    console.print(
        f"[bold]{escape(str(report.path))}[/]  {report.kind}; N={sym['N']} images of T={sym['T']} "
        f"rows",
        highlight=False,
        soft_wrap=True,
    )
    args = Table(title="nn.LSTM arguments", title_justify="left", box=None, pad_edge=False)
    for column in ("argument", "value", "meaning"):
        args.add_column(column, overflow="fold")
    for a in report.arguments:
        args.add_row(a.name, escape(str(a.value)), escape(a.meaning))
    console.print(args)
    names = ("N", "T", "H_in", "H_cell", "H_out", "L", "D", "C")
    console.print("  " + ", ".join(f"{k}={sym[k]}" for k in names), highlight=False, soft_wrap=True)
    tensors = Table(title="tensors", title_justify="left", box=None, pad_edge=False)
    for column in ("tensor", "formula", "expected", "measured", ""):
        tensors.add_column(column, overflow="fold")

    def shape(dims: Any) -> str:
        return "-" if dims is None else "(" + ", ".join(str(d) for d in dims) + ")"

    for t in report.tensors:
        mark = "" if t.measured is None else ("[green]ok[/]" if t.ok else "[red]DIFFERS[/]")
        note = f"  {escape(t.note)}" if t.note else ""
        tensors.add_row(t.name, t.formula, shape(t.expected), shape(t.measured), mark + note)
    console.print(tensors)
    if report.identities:
        console.print("[bold]identities[/] (on the run's numbers)")
        for i in report.identities:
            mark = "[green]holds[/]" if i.holds else "[red]FAILS[/]"
            console.print(
                f"  {mark}  {escape(i.statement)}  (max |diff| {i.max_abs_diff:.1e})",
                highlight=False,
                soft_wrap=True,
            )
    for note in report.notes:
        console.print(f"  [dim]{escape(note)}[/]", highlight=False, soft_wrap=True)
