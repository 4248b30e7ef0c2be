"""Checkpoint -> TorchScript (``.ts``): scripted, frozen, optimised for inference, validated.

The module is scripted (not traced) so that nothing device-specific is baked in: the LSTM's
initial state is created on the input's device, and ``torch.jit.load(path, map_location="cuda")``
works. It loads with plain ``torch.jit.load`` in a process that never imports ``lstm_export``,
and carries its metadata as ``_extra_files={"metadata.json": ...}`` (a JSON object of strings).

A scripted LSTM takes any number of rows: ``module(x)`` with x (N, T, 28) for any T >= 1, which
validation proves at 1, 7, 28 and 100 rows (a prefix of each digit's rows, or digits stacked
into a taller image). ``lstm-export infer`` still feeds 28 rows (it resizes every image to 28x28).

``with_state`` (``--with-state``): ``module(x, h_0=None, c_0=None) -> (logits, h_n, c_n)``, where
a missing state is zeros (the stateless answer), so a stream of rows can be fed in chunks;
validation feeds 28 rows in chunks of 7+7+14 and requires the logits and states of all at once.
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
from lstm_export.errors import ConfigError, ExportError
from lstm_export.export.metadata import source_metadata
from lstm_export.export.progress import ProgressFn, status
from lstm_export.export.quiet import quiet_exporters
from lstm_export.export.source import load_source
from lstm_export.export.validate import (
    DEFAULT_TOLERANCE,
    STREAM_BATCHES,
    ValidationReport,
    describe_checks,
    length_batches,
    load_test_set,
    make_batches,
    validate_export,
)
from lstm_export.fileio import atomic_path, check_writable_file

if TYPE_CHECKING:
    from lstm_export.model import LSTMClassifier

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
#: graph ops that tie a TorchScript file to the machine it was optimised on
_NON_PORTABLE = ("mkldnn", "to_dense", "prim::MKLDNN")


@dataclass
class TorchScriptExportReport:
    """What ``export_torchscript`` wrote and proved."""

    path: Path
    checkpoint: Path
    method: str
    optimized: bool
    op_counts: dict[str, int]
    validation: ValidationReport | None
    metadata: dict[str, str]
    file_size: int
    export_seconds: float
    validate_seconds: float
    notes: list[str] = field(default_factory=list)
    with_state: bool = False


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

    cuDNN runs an LSTM from one weight buffer. ``nn.LSTM.to("cuda")`` repacks its weights into
    one, but a frozen TorchScript module holds them as constants, and when they are separate
    tensors cuDNN copies them into a buffer on every call (with a warning). Frozen constants that
    are views of one storage stay so through ``torch.jit.save`` and
    ``torch.jit.load(map_location="cuda")``, and cuDNN uses that storage as it is when the layout
    is its own: per layer and direction, ``w_ih, w_hh, b_ih, b_hh``, dense, which is the order of
    ``nn.LSTM.all_weights``.
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
        notes.append(f"optimize_for_inference failed ({str(exc).splitlines()[0]}); kept frozen")
        return frozen, False, notes
    if not _is_portable(optimized):
        notes.append("optimize_for_inference produced machine-specific ops; kept frozen module")
        return frozen, False, notes
    return optimized, True, notes


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
    test images at batch 1, 7 and 512 of 28 rows and 1, 7 and 64 of 1, 7 and 100 rows (``tolerance`` on logits,
    every argmax equal), and with ``with_state`` fed in chunks too, before it is renamed onto
    ``out``.
    """
    import torch

    from lstm_export.model import StatefulClassifier, check_streamable

    if not tolerance > 0:
        raise ConfigError(f"tolerance must be > 0, got {tolerance}")
    status(progress, "loading checkpoint")
    source = load_source(checkpoint)
    if with_state:
        check_streamable(source.config)
    target = check_writable_file(
        Path(out) if out is not None else Artifact.torchscript.beside(source.path)
    )
    batches = streams = None
    if validate:
        images = load_test_set(data_dir)[0]
        batches = length_batches(images)
        streams = make_batches(images, STREAM_BATCHES) if with_state else []

    status(progress, "scripting, freezing and optimising")
    t0 = time.perf_counter()
    try:
        with quiet_exporters():
            model = StatefulClassifier(source.model).eval() if with_state else source.model
            module, optimized, notes = build_scripted(model)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"TorchScript export failed: {first[:300]}") from exc
    method = "torch.jit.script + freeze" + (" + optimize_for_inference" if optimized else "")
    meta = source_metadata(
        source, exporter=method, fmt="torchscript", dynamic_seq=True, with_state=with_state
    )
    op_counts = graph_op_counts(module.graph)
    export_seconds = time.perf_counter() - t0

    validation = None
    t1 = time.perf_counter()
    # Serialised in memory and written by Python: torch's C++ writer aborts the whole process
    # when the disk fills (its destructor throws), where a Python write is an OutputError.
    buffer = io.BytesIO()
    with quiet_exporters():
        torch.jit.save(module, buffer, _extra_files={METADATA_FILE: json.dumps(meta)})
    with atomic_path(target) as tmp:
        tmp.write_bytes(buffer.getvalue())
        if batches is not None:
            status(
                progress, f"validating against eager PyTorch ({describe_checks(batches, streams)})"
            )
            with quiet_exporters():
                validation = validate_export(
                    tmp,
                    "torchscript",
                    source.path,
                    batches,
                    tolerance,
                    candidate_name="TorchScript",
                    streams=streams or (),
                )
            validation.structural = ["reloaded with torch.jit.load"]
        else:
            log.warning("validation skipped: %s is unchecked", target)
    for note in notes:
        log.info(note)
    size = target.stat().st_size
    return TorchScriptExportReport(
        path=target,
        checkpoint=source.path,
        method=method,
        optimized=optimized,
        op_counts=op_counts,
        validation=validation,
        metadata=meta,
        file_size=size,
        export_seconds=export_seconds,
        validate_seconds=time.perf_counter() - t1,
        notes=notes,
        with_state=with_state,
    )
