"""Checkpoint -> TorchScript (``.ts``): scripted, frozen, optimised for inference, validated.

Scripted, not traced, so nothing device-specific is baked in; it loads with plain
``torch.jit.load`` and carries its metadata as ``_extra_files={"metadata.json": ...}``.
``module(x)`` takes x float32 (N, T, 28) for any T; with ``with_state``,
``module(x, h_0=None, c_0=None) -> (logits, h_n, c_n)`` (None: zeros).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lstm_export.artifacts import Artifact
from lstm_export.errors import ExportError, first_line
from lstm_export.export.metadata import source_metadata
from lstm_export.export.quiet import ProgressFn, quiet_exporters, status
from lstm_export.export.source import ExportReport, plan_export, write_validated
from lstm_export.export.validate import DEFAULT_TOLERANCE
from lstm_export.trust import graph_kinds

if TYPE_CHECKING:
    from lstm_export.model import LSTMClassifier

log = logging.getLogger(__name__)

#: graph ops that tie a TorchScript file to the machine it was optimised on
_NON_PORTABLE = ("mkldnn", "to_dense", "prim::MKLDNN", "Device = prim::Constant")


@dataclass(kw_only=True)
class TorchScriptExportReport(ExportReport):
    """What ``export_torchscript`` wrote and proved."""

    method: str
    optimized: bool
    op_counts: dict[str, int]
    notes: list[str] = field(default_factory=list)


def graph_op_counts(graph: Any) -> dict[str, int]:
    """Node kinds of a TorchScript graph, nested blocks included, constants left out."""
    return dict(Counter(k for k in graph_kinds(graph) if k != "prim::Constant").most_common())


def pack_lstm_weights(model: Any) -> None:
    """Make each ``nn.LSTM``'s weights views into one buffer in ``all_weights`` order, in place,
    values unchanged: cuDNN then runs from the frozen file's constants as they are instead of
    copying them on every call (docs/design.md)."""
    import torch
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    for module in model.modules():
        if isinstance(module, torch.nn.LSTM):
            weights = [w for layer in module.all_weights for w in layer]
            with torch.no_grad():
                vector_to_parameters(parameters_to_vector(weights), weights)


def build_scripted(model: LSTMClassifier | Any) -> tuple[Any, bool, list[str]]:
    """Pack the LSTM weights, script, freeze and optimise ``model``: ``(module, optimized,
    notes)``. Where ``torch.jit.optimize_for_inference`` fails or bakes in machine-specific
    (MKLDNN) ops, the frozen module is kept, so the file stays portable across devices."""
    import torch

    pack_lstm_weights(model)
    scripted = torch.jit.script(model.eval())
    frozen = torch.jit.freeze(scripted.eval())
    try:
        optimized = torch.jit.optimize_for_inference(torch.jit.freeze(scripted.eval()))
    except Exception as exc:  # pragma: no cover - depends on torch build
        return frozen, False, [f"optimize_for_inference failed ({first_line(exc)}); kept frozen"]
    if any(marker in str(optimized.graph) for marker in _NON_PORTABLE):
        note = "optimize_for_inference produced machine-specific ops; kept frozen module"
        return frozen, False, [note]
    return optimized, True, []


def _saved(module: Any, meta: dict[str, str]) -> bytes:
    """The file's bytes, serialised in memory: torch's C++ writer aborts the whole process when
    the disk fills (its destructor throws), where a Python write is an OutputError."""
    import torch

    buffer = io.BytesIO()
    with quiet_exporters():
        torch.jit.save(module, buffer, _extra_files={"metadata.json": json.dumps(meta)})
    return buffer.getvalue()


def export_torchscript(
    checkpoint: Path,
    out: Path | None = None,
    *,
    validate: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    data_dir: Path | None = None,
    progress: ProgressFn | None = None,
    with_state: bool = False,
) -> TorchScriptExportReport:
    """Export a checkpoint (run folder or ``.pt``) to TorchScript; default ``model.ts`` beside it.
    The saved file is reloaded and compared with eager PyTorch (:func:`write_validated`) before
    it is renamed onto ``out``.
    """
    from lstm_export.model import StatefulClassifier

    plan = plan_export(
        checkpoint,
        out,
        Artifact.torchscript,
        validate=validate,
        tolerance=tolerance,
        data_dir=data_dir,
        any_length=True,
        with_state=with_state,
        progress=progress,
    )
    status(progress, "scripting, freezing and optimising")
    t0 = time.perf_counter()
    model = StatefulClassifier(plan.source.model) if with_state else plan.source.model
    try:
        with quiet_exporters():
            module, optimized, notes = build_scripted(model.eval())
    except Exception as exc:
        raise ExportError(f"TorchScript export failed: {first_line(exc)}") from exc
    method = "torch.jit.script + freeze" + (" + optimize_for_inference" if optimized else "")
    meta = source_metadata(plan, exporter=method, fmt="torchscript")
    written = write_validated(
        plan,
        lambda tmp: tmp.write_bytes(_saved(module, meta)),
        backend="torchscript",
        candidate_name="TorchScript",
        structural=lambda path: ["reloaded with torch.jit.load"],
        metadata=meta,
        export_seconds=time.perf_counter() - t0,
        progress=progress,
    )
    for note in notes:
        log.info(note)
    return TorchScriptExportReport(
        **written,
        method=method,
        optimized=optimized,
        op_counts=graph_op_counts(module.graph),
        notes=notes,
    )
