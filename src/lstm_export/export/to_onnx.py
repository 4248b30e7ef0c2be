"""Checkpoint -> ONNX with torch.onnx, checked to hold native LSTM ops, validated before renaming.

The graph takes ``pixels`` float32 ``[batch, 28, 28]`` (raw pixels in [0, 1]) and returns
``logits`` float32 ``[batch, classes]``. ``dynamic_seq``: ``[batch, time, 28]``, any T >= 1;
``with_state`` (implies ``dynamic_seq``): also ``h_0`` ``[D*num_layers, batch, H_out]``, ``c_0``
``[..., H]`` in and ``h_n``, ``c_n`` out (docs/stages.md). ``proj_size`` models are refused: ONNX's
LSTM has no projection of the hidden state.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lstm_export.artifacts import Artifact
from lstm_export.errors import ConfigError, ExportError, first_line
from lstm_export.export.audit import (
    OnnxAudit,
    audit_onnx,
    check_io,
    check_native_lstm,
    without_shapes,
)
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
from lstm_export.export.quiet import ProgressFn, quiet_exporters, status
from lstm_export.export.simplify import simplify_lstm_graph
from lstm_export.export.source import ExportPlan, ExportReport, plan_export, write_validated
from lstm_export.export.validate import DEFAULT_TOLERANCE, check_onnx_file

if TYPE_CHECKING:
    import onnx

    from lstm_export.config import ModelConfig
    from lstm_export.model import LSTMClassifier

log = logging.getLogger(__name__)

#: opset used when none is asked for (pinned so a torch upgrade does not silently change files)
DEFAULT_OPSET = 20
MIN_OPSET = 7  # the first with an LSTM op


@dataclass(kw_only=True)
class OnnxExportReport(ExportReport):
    """What ``export_onnx`` wrote and proved."""

    exporter: str
    opset: int
    audit: OnnxAudit
    constants_folded: bool
    #: the exporter's node count before :func:`simplify_lstm_graph` (None: nothing to simplify)
    simplified_from: int | None = None
    dynamic_seq: bool = False


def _name(legacy: bool) -> str:
    return "legacy" if legacy else "dynamo"


def resolve_opset(opset: int | None, legacy: bool) -> int:
    """``None`` -> :data:`DEFAULT_OPSET`; ConfigError when the exporter is not asked for it here
    (the dynamo exporter may still refuse some)."""
    import onnx

    high = int(onnx.defs.onnx_opset_version())
    if legacy:
        try:
            from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as high
        except ImportError:  # pragma: no cover - other torch versions
            high = 20
    wanted = DEFAULT_OPSET if opset is None else int(opset)
    if not MIN_OPSET <= wanted <= high:
        raise ConfigError(
            f"opset {wanted} is not available with the {_name(legacy)} exporter "
            f"(supported here: {MIN_OPSET}..{high})"
        )
    return wanted


def check_onnx_exportable(config: ModelConfig) -> None:
    """Refuse, before exporting, what ONNX cannot express (ExportError)."""
    if config.proj_size:
        raise ExportError(
            f"this model has proj_size={config.proj_size}, which ONNX cannot express: the ONNX "
            "LSTM operator has no projection of the hidden state (PyTorch multiplies h by a "
            f"learned {config.proj_size}x{config.hidden_size} matrix inside the recurrence). "
            "Export it with `lstm-export torchscript` instead"
        )


def _fresh_trace_state() -> None:
    """Forget what earlier traces in this process cached about aten::lstm: its dispatch cache and
    dynamo's compiled frames outlive a trace and would fix a later export's dynamic time axis to
    28 rows (torch 2.14), which :func:`~lstm_export.export.audit.check_io` refuses."""
    import torch

    packet = torch.ops.aten.lstm
    for name in packet.overloads():
        cache = getattr(getattr(packet, name), "_dispatch_cache", None)
        if isinstance(cache, dict):
            cache.clear()
    torch._dynamo.reset()


def _export(model: LSTMClassifier, opset: int, legacy: bool, dynamic_seq: bool, state: bool) -> Any:
    """The ModelProto of ``model`` exported by the dynamo or the ``legacy`` exporter, from 3
    example images of 28 rows (and a zero state)."""
    import onnx
    import torch

    from lstm_export.model import StatefulClassifier

    x = torch.rand(3, 28, model.config.input_size, generator=torch.Generator().manual_seed(0))
    zeros = [torch.zeros(model.state_layers, 3, n) for n in (model.output_size, model.cell_size)]
    module, args = (StatefulClassifier(model).eval(), (x, *zeros)) if state else (model, (x,))
    names: dict[str, Any] = {
        "input_names": [INPUT_NAME, *STATE_INPUTS] if state else [INPUT_NAME],
        "output_names": [OUTPUT_NAME, *STATE_OUTPUTS] if state else [OUTPUT_NAME],
        "opset_version": opset,
    }
    if legacy:
        axes = {INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}}
        if dynamic_seq:
            axes[INPUT_NAME][1] = TIME_DIM
        axes.update({n: {1: BATCH_DIM} for n in (*STATE_INPUTS, *STATE_OUTPUTS) if state})
        with tempfile.TemporaryDirectory(prefix="lstm-export-legacy-") as work:
            path = Path(work) / "model.onnx"
            torch.onnx.export(module, args, path, dynamo=False, dynamic_axes=axes, **names)
            return onnx.load(str(path))
    batch = torch.export.Dim(BATCH_DIM)
    pixels = {0: batch, 1: torch.export.Dim(TIME_DIM)} if dynamic_seq else {0: batch}
    shapes = (pixels, {1: batch}, {1: batch}) if state else (pixels,)
    _fresh_trace_state()
    program = torch.onnx.export(
        module, args, dynamo=True, dynamic_shapes=shapes, optimize=True, verbose=False, **names
    )
    if program is None:  # pragma: no cover - torch returns None only when writing to f
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant subgraphs of any size folded: the dynamo exporter builds LSTM W/R/B in the graph,
    where quantizers and TensorRT want initializers."""
    import onnxscript.optimizer

    limit = 1 << 31
    return onnxscript.optimizer.optimize(model, input_size_limit=limit, output_size_limit=limit)


def _or_as_is(step: str, change: Callable[[Any], Any], graph: Any) -> Any:
    """``change(graph)``, or ``graph`` as it is with a warning when that fails: each of these
    steps only improves a graph, and the export's validation proves whichever graph is written."""
    try:
        return change(graph)
    except Exception as exc:
        log.warning("%s skipped: %s", step, first_line(exc))
        return graph


def _optimised(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, bool, int | None]:
    """:func:`fold_constants`, :func:`simplify_lstm_graph`, then the shapes inferred afresh from
    the graph itself (torch 2.11's dynamo exporter annotated the logits ``[1, batch, C]``, which
    are ``[batch, C]``). Returns ``(graph, folded, node count before simplifying or None)``."""
    import onnx

    folded = _or_as_is("constant folding", fold_constants, proto)  # a new model when it works
    simpler = _or_as_is("graph simplification", simplify_lstm_graph, folded)
    inferred = _or_as_is(
        "shape re-inference",
        lambda g: onnx.shape_inference.infer_shapes(
            without_shapes(g), strict_mode=True, data_prop=True
        ),
        simpler,
    )
    before = len(folded.graph.node)
    simplified_from = before if len(simpler.graph.node) < before else None
    return inferred, folded is not proto, simplified_from


def _build(
    plan: ExportPlan, opset: int, legacy: bool
) -> tuple[Any, dict[str, str], dict[str, Any]]:
    """Export, fold, simplify, describe and check the graph (ExportError when it is not ours):
    ``(ModelProto, its metadata, the OnnxExportReport fields of the graph)``."""
    dynamic_seq = plan.any_length
    try:
        with quiet_exporters():
            proto = _export(plan.source.model, opset, legacy, dynamic_seq, plan.with_state)
            proto, folded, simplified_from = _optimised(proto)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(
            f"the {_name(legacy)} exporter failed at opset {opset}: {first_line(exc)}"
        ) from exc
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if got != opset:
        hint = "" if legacy else " (opsets below 18 need the legacy exporter)"
        raise ExportError(
            f"the {_name(legacy)} exporter cannot produce opset {opset}: "
            f"it produced opset {got}{hint}"
        )
    kind = "legacy TorchScript-based" if legacy else "dynamo"
    meta = source_metadata(plan, exporter=f"torch.onnx {kind} exporter", fmt="onnx")
    set_onnx_metadata(proto, meta)
    state = "; h_0, c_0 in and h_n, c_n out (zeros: the stateless answer)"
    proto.doc_string = (
        "MNIST row-by-row LSTM classifier: pixels float32 "
        f"[batch, {TIME_DIM if dynamic_seq else 28}, 28] in [0, 1] -> logits float32 "
        f"[batch, classes]{state if plan.with_state else ''}. Exported by lstm-export."
    )
    config = plan.source.model.config
    audit = audit_onnx(proto)
    check_native_lstm(audit, config)
    try:
        check_io(audit, config, dynamic_seq=dynamic_seq, with_state=plan.with_state)
    except ExportError as exc:
        if dynamic_seq and not legacy and "fixed steps" in str(exc):
            import torch

            raise ExportError(
                f"{exc} (the dynamo exporter of torch {torch.__version__} specialises the time "
                "axis; torch 2.14's keeps it symbolic, and so does the legacy exporter)"
            ) from exc
        raise
    fields = {"audit": audit, "constants_folded": folded, "simplified_from": simplified_from}
    return proto, meta, fields


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
    Plan, build the graph (export, fold, simplify, check), write it, validate it
    (:func:`check_onnx_file`, then :func:`write_validated`) and rename it onto ``out``.
    """
    import onnx

    dynamic_seq = dynamic_seq or with_state
    opset = resolve_opset(opset, legacy)
    plan = plan_export(
        checkpoint,
        out,
        Artifact.onnx,
        validate=validate,
        tolerance=tolerance,
        data_dir=data_dir,
        any_length=dynamic_seq,
        with_state=with_state,
        progress=progress,
        refuse=check_onnx_exportable,
    )
    status(progress, f"exporting with the {_name(legacy)} exporter (opset {opset})")
    t0 = time.perf_counter()
    proto, meta, graph = _build(plan, opset, legacy)
    written = write_validated(
        plan,
        lambda tmp: onnx.save_model(proto, str(tmp)),
        backend="onnxruntime",
        candidate_name="ONNX Runtime (CPU)",
        structural=check_onnx_file,
        metadata=meta,
        export_seconds=time.perf_counter() - t0,
        progress=progress,
    )
    graph["audit"].file_size = written["file_size"]
    return OnnxExportReport(
        **written, **graph, exporter=_name(legacy), opset=opset, dynamic_seq=dynamic_seq
    )
