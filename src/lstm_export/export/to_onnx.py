"""Checkpoint -> ONNX with torch.onnx, checked to hold native LSTM ops, validated before renaming.

The graph takes ``pixels`` float32 ``[batch, 28, 28]`` (raw pixels in [0, 1]) and returns
``logits`` float32 ``[batch, classes]``; the batch axis is symbolic (named ``batch``).
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
    set_onnx_metadata,
    source_metadata,
)
from lstm_export.export.progress import ProgressFn, status
from lstm_export.export.quiet import quiet_exporters
from lstm_export.export.source import load_source
from lstm_export.export.validate import (
    DEFAULT_TOLERANCE,
    ValidationReport,
    load_test_set,
    make_batches,
    validate_onnx,
)
from lstm_export.fileio import atomic_path, check_writable_file

if TYPE_CHECKING:
    import onnx

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


def _example_input(model: LSTMClassifier) -> Any:
    import torch

    return torch.rand(3, 28, model.config.input_size, generator=torch.Generator().manual_seed(0))


def _export_dynamo(model: LSTMClassifier, opset: int) -> onnx.ModelProto:
    import torch

    batch = torch.export.Dim(BATCH_DIM)
    program = torch.onnx.export(
        model,
        (_example_input(model),),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},),
        opset_version=opset,
        optimize=True,
        verbose=False,
        report=False,
    )
    if program is None:  # pragma: no cover - torch returns None only when writing to f
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto


def _export_legacy(model: LSTMClassifier, opset: int) -> onnx.ModelProto:
    import onnx
    import torch

    with tempfile.TemporaryDirectory(prefix="lstm-export-legacy-") as work:
        path = Path(work) / "model.onnx"
        torch.onnx.export(
            model,
            (_example_input(model),),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
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
) -> OnnxExportReport:
    """Export a checkpoint (run folder or ``.pt``) to ONNX; default output ``model.onnx`` beside it.

    The file is written under a temporary name, checked (native LSTM ops, interface, metadata,
    ``onnx.checker``, shape inference, ONNX Runtime CPU vs eager PyTorch at batch 1, 7 and 512
    within ``tolerance`` with every argmax equal) and only then renamed onto ``out``.
    Raises CheckpointError, ConfigError, OutputError, DataError, ExportError or ValidationError.
    """
    import onnx

    if not tolerance > 0:
        raise ConfigError(f"tolerance must be > 0, got {tolerance}")
    exporter = Exporter.legacy if legacy else Exporter.dynamo
    wanted_opset = resolve_opset(opset, exporter)
    status(progress, "loading checkpoint")
    source = load_source(checkpoint)
    target = check_writable_file(
        Path(out) if out is not None else Artifact.onnx.beside(source.path)
    )
    batches = make_batches(load_test_set(data_dir)[0]) if validate else None

    status(progress, f"exporting with the {exporter.value} exporter (opset {wanted_opset})")
    t0 = time.perf_counter()
    try:
        with quiet_exporters():
            export = _export_legacy if legacy else _export_dynamo
            proto = export(source.model, wanted_opset)
            proto, folded = fold_constants(proto)
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
    meta = source_metadata(source, exporter=exporter_name, fmt="onnx")
    set_onnx_metadata(proto, meta)
    proto.doc_string = (
        "MNIST row-by-row LSTM classifier: pixels float32 [batch, 28, 28] in [0, 1] -> "
        "logits float32 [batch, classes]. Exported by lstm-export."
    )
    audit = audit_onnx(proto)
    check_native_lstm(audit, source.config)
    check_io(audit, source.config, INPUT_NAME, OUTPUT_NAME)
    export_seconds = time.perf_counter() - t0

    validation = None
    t1 = time.perf_counter()
    with atomic_path(target) as tmp:
        onnx.save_model(proto, str(tmp))
        if batches is not None:
            status(progress, "validating against eager PyTorch (batch 1, 7, 512)")
            validation = validate_onnx(tmp, source.path, batches, tolerance)
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
    )
