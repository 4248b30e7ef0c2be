"""How the export stage's reports read on a terminal; every text from a file goes through
:func:`~lstm_export.console.plain` before rich sees it."""

from __future__ import annotations

from typing import Any

from lstm_export.console import console, count, err_console, plain


def _out(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


def _line(label: str, text: object) -> None:
    _out(f"  [bold]{label:<9}[/] {plain(text)}")


def _size(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):,.2f} MiB"


def _ops(counts: dict[str, int]) -> str:
    return ", ".join(f"{op} {n}" for op, n in counts.items())


def _wrote(path: object, details: str) -> None:
    _out(f"[green]wrote[/] {plain(path)}  ({details})")


def _tensors(inputs: list[Any], outputs: list[Any]) -> None:
    for label, tensors in (("input", inputs), ("output", outputs)):
        for t in tensors:
            _line(label, t)


def _lstm(nodes: list[Any]) -> str:
    if not nodes:
        return "none"
    parts = [
        f"{n.op_type} {n.direction} hidden {n.hidden_size}"
        + (f", time axis {n.time_axis}" if n.time_axis != "?" else "")
        + ("" if n.weights_are_initializers else " (weights computed in-graph)")
        for n in nodes
    ]
    return f"{count(len(nodes), 'native node')}: " + "; ".join(parts)


def validation(report: Any) -> None:
    """A :class:`~lstm_export.export.validate.ValidationReport`, or None (not validated)."""
    if report is None:
        _out("[yellow]not validated[/] (--no-validate)")
        return
    _out(
        f"[green]validated[/] {plain(report.candidate)} vs {plain(report.reference)}, "
        f"tolerance {report.tolerance:.0e} ({report.seconds:.1f} s)"
    )
    if report.structural:
        _line("checks", ", ".join(report.structural))
    lengths = sorted({c.seq_len for c in report.checks})
    for c in report.checks:
        rows = f" x {c.seq_len}" if lengths != [28] else ""
        _line(
            f"batch {c.batch}{rows}",
            f"max |logit diff| {c.max_abs_diff:.2e}, argmax agreement {c.agree}/{c.batch}",
        )
    for st in report.streams:
        _line(
            "stream",
            f"{count(st.batch, 'digit')} in chunks {'+'.join(str(n) for n in st.chunks)} with the "
            f"state carried vs all at once: max |diff| (logits, h_n, c_n) {st.chunked:.2e}; "
            f"eager PyTorch the same {st.eager_chunked:.2e}; vs eager {st.vs_eager:.2e}; "
            f"stateless vs zero state {st.zero_state:.2e}",
        )


def onnx(report: Any) -> None:
    """An :class:`~lstm_export.export.to_onnx.OnnxExportReport`."""
    audit = report.audit
    _wrote(
        report.path,
        f"{_size(report.file_size)}, {report.exporter} exporter, opset {report.opset}, "
        f"{report.export_seconds:.1f} s",
    )
    _tensors(audit.inputs, audit.outputs)
    _line("LSTM", _lstm(audit.lstm_nodes))
    was = (
        f" (the exporter's {report.simplified_from}, simplified)" if report.simplified_from else ""
    )
    _line("ops", f"{count(audit.node_count, 'node')}{was}: {_ops(audit.op_counts)}")
    _line("params", f"{audit.parameters:,}")
    acc = report.metadata.get("test_accuracy")
    _line(
        "metadata",
        f"{count(len(report.metadata), 'key')}; test_accuracy {acc or 'unknown'}, "
        f"source sha256 {report.metadata['source_checkpoint_sha256'][:12]}…",
    )
    validation(report.validation)


def int8(r: Any) -> None:
    """A :class:`~lstm_export.export.quantize.QuantizeReport`."""
    _wrote(
        r.path,
        f"{_size(r.file_size)}, {r.quantized_lstm_nodes}/{r.lstm_nodes} LSTM -> "
        f"DynamicQuantizeLSTM, {r.quantize_seconds:.2f} s",
    )
    _line("ops", _ops(r.audit.op_counts))
    _line(
        "accuracy",
        f"fp32 {r.fp32_accuracy * 100:.2f} %, int8 {r.int8_accuracy * 100:.2f} % on "
        f"{count(r.test_examples, 'test image')}: drop {r.accuracy_drop * 100:.2f} points "
        f"(allowed {r.max_accuracy_drop * 100:.2f}); argmax agreement {r.argmax_agreement * 100:.2f} %",
    )


def fp16(r: Any) -> None:
    """An :class:`~lstm_export.export.fp16.Fp16Report`."""
    _wrote(r.path, f"{_size(r.file_size)}, fp16 weights, float32 inputs/outputs")
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
        err_console.print(f"[yellow]caveat:[/] {plain(r.caveat)}", highlight=False, soft_wrap=True)


def torchscript(report: Any) -> None:
    """A :class:`~lstm_export.export.to_torchscript.TorchScriptExportReport`."""
    _wrote(
        report.path, f"{_size(report.file_size)}, {report.method}, {report.export_seconds:.1f} s"
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
    validation(report.validation)


def inspect(info: Any) -> None:
    """A :class:`~lstm_export.export.inspect_model.ModelInfo`."""
    _out(
        f"[bold]{plain(info.path)}[/]  {info.format}, {_size(info.file_size)}, "
        f"sha256 {info.sha256[:16]}…"
    )
    if info.opset is not None:
        others = ", ".join(f"{d} {v}" for d, v in info.opset_imports.items() if d != "ai.onnx")
        also = f" (+ {others})" if others else ""
        ir, producer = info.details.get("ir_version"), info.details.get("producer")
        _line("opset", f"{info.opset}{also}; ir {ir}, producer {producer}")
    _tensors(info.inputs, info.outputs)
    if "forward" in info.details:
        _line("forward", info.details["forward"])
    if info.parameters is not None:
        _line("params", f"{info.parameters:,}")
    _line("ops", _ops(info.ops))
    if info.format == "onnx":
        _line("LSTM", _lstm(info.lstm_nodes))
    _out("  [bold]metadata[/]")
    for key, value in sorted(info.metadata.items()):
        _out(f"    {plain(key)}: {plain(value if len(value) <= 100 else value[:97] + '...')}")
    p = info.placement
    if p is not None:
        by_provider = ", ".join(f"{ep} {count(n, 'node')}" for ep, n in p.by_provider.items())
        _out(
            f"  [bold]placement[/] (--device {p.device}; session providers: "
            f"{plain(', '.join(p.session_providers))}): {plain(by_provider)}"
        )
        for node in p.nodes:
            _out(plain(f"    {node.provider:<26} {node.op_type:<22} {node.node}"))


def shapes(report: Any) -> None:
    """A :class:`~lstm_export.export.shapes.ShapesReport`: arguments, tensors, identities."""
    from rich.table import Table

    from lstm_export.export.shapes import dims_text as dims

    sym = report.symbols
    _out(
        f"[bold]{plain(report.path)}[/]  {report.kind}; N={count(sym['N'], 'image')} of T={count(sym['T'], 'row')}"
    )
    args = Table(title="nn.LSTM arguments", title_justify="left", box=None, pad_edge=False)
    for column in ("argument", "value", "meaning"):
        args.add_column(column, overflow="fold")
    for a in report.arguments:
        args.add_row(a.name, plain(a.value), plain(a.meaning))
    console.print(args)
    _out("  " + ", ".join(f"{k}={n}" for k, n in sym.items()))
    tensors = Table(title="tensors", title_justify="left", box=None, pad_edge=False)
    for column in ("tensor", "formula", "expected", "measured", ""):
        tensors.add_column(column, overflow="fold")
    for t in report.tensors:
        mark = "" if t.measured is None else ("[green]ok[/]" if t.ok else "[red]DIFFERS[/]")
        note = f"  {plain(t.note)}" if t.note else ""
        tensors.add_row(t.name, t.formula, dims(t.expected), dims(t.measured), mark + note)
    console.print(tensors)
    if report.identities:
        _out("[bold]identities[/] (on the run's numbers)")
        for i in report.identities:
            mark = "[green]holds[/]" if i.holds else "[red]FAILS[/]"
            _out(f"  {mark}  {plain(i.statement)}  (max |diff| {i.max_abs_diff:.1e})")
    for note in report.notes:
        _out(f"  [dim]{plain(note)}[/]")
