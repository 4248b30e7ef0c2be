"""Checkpoint -> TorchScript (``.ts``): scripted, frozen, optimised for inference, validated.

Scripted, not traced, so nothing device-specific is baked in (``torch.jit.load(path,
map_location="cuda")`` works); it loads with plain ``torch.jit.load`` without ``lstm_export`` and
carries its metadata as ``_extra_files={"metadata.json": ...}`` (a JSON object of strings). It
takes any number of rows, ``module(x)`` with x (N, T, 28), validated at 1, 7, 28 and 100 rows.
``with_state``: ``module(x, h_0=None, c_0=None) -> (logits, h_n, c_n)`` (None: zeros), validated
fed in chunks of 7+7+14 rows too.
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
from lstm_export.export.source import ExportPlan, ExportReport, plan_export, write_validated
from lstm_export.export.validate import DEFAULT_TOLERANCE, ValidationReport, validate_export

if TYPE_CHECKING:
    from lstm_export.model import LSTMClassifier

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
#: graph ops that tie a TorchScript file to the machine it was optimised on
_NON_PORTABLE = ("mkldnn", "to_dense", "prim::MKLDNN")


@dataclass(kw_only=True)
class TorchScriptExportReport(ExportReport):
    """What ``export_torchscript`` wrote and proved."""

    method: str
    optimized: bool
    op_counts: dict[str, int]
    notes: list[str] = field(default_factory=list)


def graph_op_counts(graph: Any) -> dict[str, int]:
    """Node kinds of a TorchScript graph, nested blocks included, constants left out."""
    counts: Counter[str] = Counter()

    def walk(block: Any) -> None:
        for node in block.nodes():
            if node.kind() != "prim::Constant":
                counts[node.kind()] += 1
            for sub in node.blocks():
                walk(sub)

    walk(graph)
    return dict(counts.most_common())


def _is_portable(module: Any) -> bool:
    text = str(module.graph)
    return (
        not any(marker in text for marker in _NON_PORTABLE)
        and "Device = prim::Constant" not in text
    )


def pack_lstm_weights(model: Any) -> None:
    """Make each ``nn.LSTM``'s weights views into one buffer, in place, values unchanged.

    A frozen module holds them as constants, which cuDNN would copy into one buffer on every call
    (with a warning); views of one storage survive ``torch.jit.save`` and ``load(map_location=
    "cuda")``, and in ``nn.LSTM.all_weights`` order (per layer and direction ``w_ih, w_hh, b_ih,
    b_hh``, dense) cuDNN uses that storage as it is.
    """
    import torch
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    for module in model.modules():
        if isinstance(module, torch.nn.LSTM):
            weights = [w for layer in module.all_weights for w in layer]
            with torch.no_grad():
                vector_to_parameters(parameters_to_vector(weights), weights)


def build_scripted(model: LSTMClassifier | Any) -> tuple[Any, bool, list[str]]:
    """Script, freeze and optimise ``model``: ``(module, optimized, notes)``.

    ``torch.jit.optimize_for_inference`` may bake in machine-specific (MKLDNN) ops; when it does,
    the frozen module is kept instead so the file stays portable across devices. Each LSTM's
    weights are packed into one buffer first (:func:`pack_lstm_weights`).
    """
    import torch

    notes: list[str] = []
    pack_lstm_weights(model)
    scripted = torch.jit.script(model.eval())
    frozen = torch.jit.freeze(scripted.eval())
    try:
        optimized = torch.jit.optimize_for_inference(torch.jit.freeze(scripted.eval()))
    except Exception as exc:  # pragma: no cover - depends on torch build
        notes.append(f"optimize_for_inference failed ({first_line(exc)}); kept frozen")
        return frozen, False, notes
    if not _is_portable(optimized):
        notes.append("optimize_for_inference produced machine-specific ops; kept frozen module")
        return frozen, False, notes
    return optimized, True, notes


def _script(plan: ExportPlan) -> tuple[Any, bool, list[str]]:
    """:func:`build_scripted` on the plan's model (ExportError when scripting fails)."""
    from lstm_export.model import StatefulClassifier

    model = plan.source.model
    try:
        with quiet_exporters():
            return build_scripted(StatefulClassifier(model).eval() if plan.with_state else model)
    except Exception as exc:
        raise ExportError(f"TorchScript export failed: {first_line(exc)}") from exc


def _saved(module: Any, meta: dict[str, str]) -> bytes:
    """The file's bytes, serialised in memory: torch's C++ writer aborts the whole process when
    the disk fills (its destructor throws), where a Python write is an OutputError."""
    import torch

    buffer = io.BytesIO()
    with quiet_exporters():
        torch.jit.save(module, buffer, _extra_files={METADATA_FILE: json.dumps(meta)})
    return buffer.getvalue()


def _validate(path: Path, plan: ExportPlan) -> ValidationReport:
    with quiet_exporters():
        return validate_export(
            path,
            "torchscript",
            plan.source.path,
            plan.batches or [],
            plan.tolerance,
            candidate_name="TorchScript",
            streams=plan.streams,
            structural=lambda path: ["reloaded with torch.jit.load"],
        )


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

    The saved file is reloaded with ``torch.jit.load`` and compared with eager PyTorch on MNIST
    test images at batch 1, 7 and 512 of 28 rows and 1, 7 and 64 of 1, 7 and 100 rows
    (``tolerance`` on logits, every argmax equal), and with ``with_state`` fed in chunks too,
    before it is renamed onto ``out``.
    """
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
    module, optimized, notes = _script(plan)
    method = "torch.jit.script + freeze" + (" + optimize_for_inference" if optimized else "")
    meta = source_metadata(
        plan.source, exporter=method, fmt="torchscript", dynamic_seq=True, with_state=with_state
    )
    export_seconds = time.perf_counter() - t0
    written = write_validated(
        plan,
        lambda tmp: tmp.write_bytes(_saved(module, meta)),
        lambda tmp: _validate(tmp, plan),
        metadata=meta,
        export_seconds=export_seconds,
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
