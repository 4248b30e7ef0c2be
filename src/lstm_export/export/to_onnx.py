"""Checkpoint -> ONNX with torch.onnx, checked to hold native LSTM ops, validated before renaming.

The graph takes ``pixels`` float32 ``[batch, 28, 28]`` (raw pixels in [0, 1]) and returns
``logits`` float32 ``[batch, classes]``; the batch axis is symbolic (named ``batch``).

``dynamic_seq`` (``--dynamic-seq``): the time axis is symbolic too, ``[batch, time, 28]``, and
reaches every LSTM node (checked on the graph), so the file takes any number of rows T >= 1:
a prefix of a digit's rows, or a taller image. It is validated against eager PyTorch at 1, 7,
28 and 100 rows. ``lstm-export infer`` still feeds 28 rows: it resizes every image to 28x28
before the model sees it (pad to a square, resize; or ``--fit``), whatever the file takes;
other lengths go through the Python API (``runner.infer(x)`` with x (N, T, 28)).

``with_state`` (``--with-state``, implies ``dynamic_seq``): the graph also takes ``h_0``
``[D*num_layers, batch, H_out]`` and ``c_0`` ``[..., H]`` and returns ``h_n``, ``c_n`` beside the
logits, so a stream of rows can be fed in chunks (``Runner.step`` / ``Runner.stream``). Zeros
for ``h_0``, ``c_0`` give the stateless answer; the runners feed zeros in ``infer``. Validation
also feeds 28 rows in chunks of 7+7+14 and requires the logits and states of all 28 at once.
Bidirectional models cannot stream (see :func:`lstm_export.model.check_streamable`).

``proj_size`` models are refused: ONNX's LSTM has no projection of the hidden state.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lstm_export.artifacts import Artifact
from lstm_export.errors import ConfigError, ExportError
from lstm_export.export.audit import OnnxAudit, audit_onnx, check_io, check_native_lstm
from lstm_export.export.metadata import (
    BATCH_DIM,
    INPUT_NAME,
    OUTPUT_NAME,
    STATE_INPUTS,
    STATE_OUTPUTS,
    TIME_DIM,
    set_onnx_metadata,
    source_metadata,
)
from lstm_export.export.progress import ProgressFn, status
from lstm_export.export.quiet import quiet_exporters
from lstm_export.export.simplify import simplify_lstm_graph
from lstm_export.export.source import load_source
from lstm_export.export.validate import (
    DEFAULT_TOLERANCE,
    STREAM_BATCHES,
    ValidationReport,
    describe_checks,
    length_batches,
    load_test_set,
    make_batches,
    validate_onnx,
)
from lstm_export.fileio import atomic_path, check_writable_file

if TYPE_CHECKING:
    import onnx

    from lstm_export.config import ModelConfig
    from lstm_export.model import LSTMClassifier

log = logging.getLogger(__name__)

#: opset used when none is asked for (pinned so a torch upgrade does not silently change files)
DEFAULT_OPSET = 20
#: the first opset with an LSTM op
MIN_OPSET = 7


class Exporter(str, Enum):
    """Which torch.onnx exporter."""

    dynamo = "dynamo"
    legacy = "legacy"


@dataclass
class OnnxExportReport:
    """What ``export_onnx`` wrote and proved."""

    path: Path
    checkpoint: Path
    exporter: str
    opset: int
    audit: OnnxAudit
    validation: ValidationReport | None
    metadata: dict[str, str]
    file_size: int
    export_seconds: float
    validate_seconds: float
    constants_folded: bool
    #: the exporter's node count before :func:`simplify_lstm_graph` (None: nothing to simplify)
    simplified_from: int | None = None
    dynamic_seq: bool = False
    with_state: bool = False


def opset_range(exporter: Exporter) -> tuple[int, int]:
    """The opsets ``exporter`` is asked for here (the dynamo exporter may still refuse some)."""
    import onnx

    if exporter == Exporter.legacy:
        try:
            from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as legacy_max
        except ImportError:  # pragma: no cover - other torch versions
            legacy_max = 20
        return MIN_OPSET, int(legacy_max)
    return MIN_OPSET, int(onnx.defs.onnx_opset_version())


def resolve_opset(opset: int | None, exporter: Exporter) -> int:
    """``None`` -> :data:`DEFAULT_OPSET`; ConfigError when outside :func:`opset_range`."""
    wanted = DEFAULT_OPSET if opset is None else int(opset)
    low, high = opset_range(exporter)
    if not low <= wanted <= high:
        raise ConfigError(
            f"opset {wanted} is not available with the {exporter.value} exporter "
            f"(supported here: {low}..{high})"
        )
    return wanted


@dataclass(frozen=True)
class Interface:
    """What the exported graph takes and returns."""

    dynamic_seq: bool = False
    with_state: bool = False

    @property
    def input_names(self) -> list[str]:
        return [INPUT_NAME, *STATE_INPUTS] if self.with_state else [INPUT_NAME]

    @property
    def output_names(self) -> list[str]:
        return [OUTPUT_NAME, *STATE_OUTPUTS] if self.with_state else [OUTPUT_NAME]


def check_onnx_exportable(config: ModelConfig, interface: Interface) -> None:
    """Refuse, before exporting, what ONNX cannot express (ExportError, ConfigError)."""
    if config.proj_size:
        raise ExportError(
            f"this model has proj_size={config.proj_size}, which ONNX cannot express: the ONNX "
            "LSTM operator has no projection of the hidden state (PyTorch multiplies h by a "
            f"learned {config.proj_size}x{config.hidden_size} matrix inside the recurrence). "
            "Export it with `lstm-export torchscript` instead"
        )
    if interface.with_state:
        from lstm_export.model import check_streamable

        check_streamable(config)


def _module_and_args(model: LSTMClassifier, interface: Interface) -> tuple[Any, tuple[Any, ...]]:
    """The module to export and its example inputs (3 images of 28 rows)."""
    import torch

    from lstm_export.model import StatefulClassifier

    x = torch.rand(3, 28, model.config.input_size, generator=torch.Generator().manual_seed(0))
    if not interface.with_state:
        return model, (x,)
    config = model.config
    h_0 = torch.zeros(config.state_layers, 3, config.output_size)
    c_0 = torch.zeros(config.state_layers, 3, config.hidden_size)
    return StatefulClassifier(model).eval(), (x, h_0, c_0)


def _fresh_trace_state() -> None:
    """Forget what earlier traces in this process cached about aten::lstm.

    For a dynamic time axis the dynamo exporter swaps in a while-loop LSTM decomposition while it
    traces (torch 2.14). Two caches outlive a trace and make every later export in the process
    silently specialise the time axis to the example's 28 rows: aten::lstm's dispatch cache,
    which keeps the unrolled decomposition (the while loop is then never called), and dynamo's
    compiled frames of the while loop's body, which keep the static shapes of an earlier
    batch-only export. :func:`lstm_export.export.audit.check_io` refuses such a graph; clearing
    both caches before each export keeps the axis symbolic. (``torch._dynamo.reset`` also drops
    anything else this process compiled with ``torch.compile``; it recompiles on next use.)
    """
    import torch

    packet = torch.ops.aten.lstm
    for name in packet.overloads():
        cache = getattr(getattr(packet, name), "_dispatch_cache", None)
        if isinstance(cache, dict):
            cache.clear()
    torch._dynamo.reset()


def _export_dynamo(model: LSTMClassifier, opset: int, interface: Interface) -> onnx.ModelProto:
    import torch

    batch = torch.export.Dim(BATCH_DIM)
    pixels: dict[int, Any] = {0: batch}
    if interface.dynamic_seq:
        pixels[1] = torch.export.Dim(TIME_DIM)
    dynamic_shapes: tuple[Any, ...] = (pixels,)
    if interface.with_state:
        dynamic_shapes += ({1: batch}, {1: batch})
    module, args = _module_and_args(model, interface)
    _fresh_trace_state()
    program = torch.onnx.export(
        module,
        args,
        dynamo=True,
        input_names=interface.input_names,
        output_names=interface.output_names,
        dynamic_shapes=dynamic_shapes,
        opset_version=opset,
        optimize=True,
        verbose=False,
        report=False,
    )
    if program is None:  # pragma: no cover - torch returns None only when writing to f
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto


def _export_legacy(model: LSTMClassifier, opset: int, interface: Interface) -> onnx.ModelProto:
    import onnx
    import torch

    axes: dict[str, dict[int, str]] = {INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}}
    if interface.dynamic_seq:
        axes[INPUT_NAME][1] = TIME_DIM
    if interface.with_state:
        axes.update({name: {1: BATCH_DIM} for name in (*STATE_INPUTS, *STATE_OUTPUTS)})
    module, args = _module_and_args(model, interface)
    with tempfile.TemporaryDirectory(prefix="lstm-export-legacy-") as work:
        path = Path(work) / "model.onnx"
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            input_names=interface.input_names,
            output_names=interface.output_names,
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
        )
        return onnx.load(str(path))


def fold_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """Fold constant subgraphs of any size (the dynamo exporter builds LSTM W/R/B in the graph).

    Afterwards each LSTM's weights are initializers, which quantizers and TensorRT expect.
    Returns ``(model, folded)``; on an optimiser failure the model is returned unchanged.
    """
    try:
        import onnxscript.optimizer

        limit = 1 << 31
        folded = onnxscript.optimizer.optimize(
            model, input_size_limit=limit, output_size_limit=limit
        )
    except Exception as exc:
        log.warning("constant folding skipped: %s", str(exc).splitlines()[0] if str(exc) else exc)
        return model, False
    return folded, True


def _simplified(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int | None]:
    """``simplify_lstm_graph(model)`` and the node count before it (None: nothing changed).

    A failure of the simplifier keeps the graph as exported, with a warning: the rewrites only
    remove bookkeeping, and the export's validation proves whichever graph is written.
    """
    try:
        simpler, report = simplify_lstm_graph(model)
    except Exception as exc:
        log.warning(
            "graph simplification skipped: %s", str(exc).splitlines()[0] if str(exc) else exc
        )
        return model, None
    changed = report.nodes_after < report.nodes_before
    return simpler, report.nodes_before if changed else None


def reinfer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with its shape annotations inferred afresh by ONNX shape inference.

    torch 2.11's dynamo exporter annotates the logits read from an LSTM's final state as
    ``[1, batch, C]`` while they are ``[batch, C]`` at run time; ONNX Runtime then warns and
    tools that read the declared interface are misled. Inference from the graph itself gives the
    true shapes. On an inference failure the model is returned unchanged.
    """
    import onnx

    fresh = onnx.ModelProto()
    fresh.CopyFrom(model)
    del fresh.graph.value_info[:]
    for output in fresh.graph.output:
        output.type.tensor_type.ClearField("shape")
    try:
        return onnx.shape_inference.infer_shapes(fresh, strict_mode=True, data_prop=True)
    except Exception as exc:
        log.warning("shape re-inference skipped: %s", str(exc).splitlines()[0] if str(exc) else exc)
        return model


def export_onnx(
    checkpoint: Path,
    out: Path | None = None,
    *,
    opset: int | None = None,
    legacy: bool = False,
    validate: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    data_dir: Path | None = None,
    progress: ProgressFn | None = None,
    dynamic_seq: bool = False,
    with_state: bool = False,
) -> OnnxExportReport:
    """Export a checkpoint (run folder or ``.pt``) to ONNX; default output ``model.onnx`` beside it.

    The file is written under a temporary name, checked (native LSTM ops, interface, metadata,
    ``onnx.checker``, shape inference, ONNX Runtime CPU vs eager PyTorch at batch 1, 7 and 512
    within ``tolerance`` with every argmax equal) and only then renamed onto ``out``.
    ``dynamic_seq``: symbolic time axis, validated at 1, 7, 28 and 100 rows; ``with_state``:
    ``h_0``/``c_0`` in, ``h_n``/``c_n`` out, validated fed in chunks too (module docstring).
    Raises CheckpointError, ConfigError, OutputError, DataError, ExportError or ValidationError.
    """
    import onnx

    if not tolerance > 0:
        raise ConfigError(f"tolerance must be > 0, got {tolerance}")
    interface = Interface(dynamic_seq=dynamic_seq or with_state, with_state=with_state)
    exporter = Exporter.legacy if legacy else Exporter.dynamo
    wanted_opset = resolve_opset(opset, exporter)
    status(progress, "loading checkpoint")
    source = load_source(checkpoint)
    check_onnx_exportable(source.config, interface)
    target = check_writable_file(
        Path(out) if out is not None else Artifact.onnx.beside(source.path)
    )
    batches = streams = None
    if validate:
        images = load_test_set(data_dir)[0]
        batches = length_batches(images) if interface.dynamic_seq else make_batches(images)
        streams = make_batches(images, STREAM_BATCHES) if interface.with_state else []

    status(progress, f"exporting with the {exporter.value} exporter (opset {wanted_opset})")
    t0 = time.perf_counter()
    try:
        with quiet_exporters():
            export = _export_legacy if legacy else _export_dynamo
            proto = export(source.model, wanted_opset, interface)
            proto, folded = fold_constants(proto)
            proto, simplified_from = _simplified(proto)
            proto = reinfer_shapes(proto)
    except ExportError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(
            f"the {exporter.value} exporter failed at opset {wanted_opset}: {first[:300]}"
        ) from exc
    got_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if got_opset != wanted_opset:
        hint = " (opsets below 18 need the legacy exporter)" if exporter == Exporter.dynamo else ""
        raise ExportError(
            f"the {exporter.value} exporter cannot produce opset {wanted_opset}: "
            f"it produced opset {got_opset}{hint}"
        )
    exporter_name = f"torch.onnx {'legacy TorchScript-based' if legacy else 'dynamo'} exporter"
    meta = source_metadata(
        source,
        exporter=exporter_name,
        fmt="onnx",
        dynamic_seq=interface.dynamic_seq,
        with_state=interface.with_state,
    )
    set_onnx_metadata(proto, meta)
    rows = TIME_DIM if interface.dynamic_seq else "28"
    state = (
        "; h_0, c_0 in and h_n, c_n out (zeros: the stateless answer)"
        if interface.with_state
        else ""
    )
    proto.doc_string = (
        f"MNIST row-by-row LSTM classifier: pixels float32 [batch, {rows}, 28] in [0, 1] -> "
        f"logits float32 [batch, classes]{state}. Exported by lstm-export."
    )
    audit = audit_onnx(proto)
    check_native_lstm(audit, source.config)
    try:
        check_io(
            audit,
            source.config,
            INPUT_NAME,
            OUTPUT_NAME,
            dynamic_seq=interface.dynamic_seq,
            with_state=interface.with_state,
        )
    except ExportError as exc:
        if interface.dynamic_seq and exporter == Exporter.dynamo and "fixed steps" in str(exc):
            import torch

            raise ExportError(
                f"{exc} (the dynamo exporter of torch {torch.__version__} specialises the time "
                "axis; torch 2.14's keeps it symbolic, and so does the legacy exporter)"
            ) from exc
        raise
    export_seconds = time.perf_counter() - t0

    validation = None
    t1 = time.perf_counter()
    with atomic_path(target) as tmp:
        onnx.save_model(proto, str(tmp))
        if batches is not None:
            status(
                progress, f"validating against eager PyTorch ({describe_checks(batches, streams)})"
            )
            validation = validate_onnx(tmp, source.path, batches, tolerance, streams=streams or ())
        else:
            log.warning("validation skipped: %s is unchecked", target)
    size = target.stat().st_size
    audit.file_size = size
    log.info("wrote %s (%d bytes)", target, size)
    return OnnxExportReport(
        path=target,
        checkpoint=source.path,
        exporter=exporter.value,
        opset=got_opset,
        audit=audit,
        validation=validation,
        metadata=meta,
        file_size=size,
        export_seconds=export_seconds,
        validate_seconds=time.perf_counter() - t1,
        constants_folded=folded,
        simplified_from=simplified_from,
        dynamic_seq=interface.dynamic_seq,
        with_state=interface.with_state,
    )
