"""fp32 ONNX -> float16 weights and compute, float32 inputs and outputs kept (for GPUs).

Policy: the file is produced on any machine and validated on the best device present. With a
usable CUDA device, ONNX Runtime's CUDA execution provider runs it (fp16 kernels: the real
target). Without one, ONNX Runtime's CPU provider runs it; that proves the graph and the
fp16-rounded weights, not the GPU's fp16 arithmetic, and the report says so (``caveat``).
Either way the top-1 accuracy on the full MNIST test set must stay within ``max_accuracy_drop``
of the fp32 file, or no file is written.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstm_export.errors import ConfigError, ExportError, ModelLoadError
from lstm_export.export.audit import OnnxAudit, audit_onnx
from lstm_export.export.metadata import set_onnx_metadata
from lstm_export.export.progress import ProgressFn, status
from lstm_export.export.quiet import quiet_exporters
from lstm_export.export.source import derived_path
from lstm_export.export.validate import (
    check_accuracy_drop,
    load_test_set,
    ort_predict,
    ort_session,
    predict_all,
)
from lstm_export.fileio import atomic_path, check_writable_file, file_digest
from lstm_export.infer.runners.ort_session import CUDA_EP, open_session

log = logging.getLogger(__name__)

DEFAULT_MAX_ACCURACY_DROP = 0.001
CPU_CAVEAT = (
    "validated on ONNX Runtime's CPU provider (no usable CUDA here): this proves the fp16 graph "
    "and rounded weights, not GPU fp16 arithmetic; re-check on the GPU with "
    "`lstm-export inspect MODEL --device cuda` and the bench"
)


@dataclass
class Fp16Report:
    """What ``convert_fp16`` wrote and measured; accuracies are in 0..1."""

    path: Path
    source: Path
    validated: bool
    provider: str | None
    gpu_checked: bool
    caveat: str | None
    fp32_accuracy: float | None
    fp16_accuracy: float | None
    accuracy_drop: float | None
    max_accuracy_drop: float
    argmax_agreement: float | None
    max_abs_diff: float | None
    audit: OnnxAudit
    file_size: int
    source_size: int
    convert_seconds: float
    evaluate_seconds: float


def to_fp16(model: Any) -> Any:
    """fp16 copy of an fp32 ModelProto, float32 graph inputs/outputs kept, nodes sorted."""
    import onnx_ir as ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(model, keep_io_types=True)
    # The converter appends its input/output Cast nodes at the end; onnx.checker wants order.
    irm = ir.serde.deserialize_model(half)
    irm.graph.sort()
    return ir.serde.serialize_model(irm)


def convert_fp16(
    onnx_path: Path,
    out: Path | None = None,
    *,
    validate: bool = True,
    data_dir: Path | None = None,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    device: str = "auto",
    progress: ProgressFn | None = None,
) -> Fp16Report:
    """Convert ``onnx_path`` to fp16 (default output ``<stem>.fp16.onnx`` beside it).

    ``device``: where to validate -- ``auto`` (CUDA when usable, else CPU with a caveat),
    ``cuda`` (DeviceError without CUDA) or ``cpu``.
    """
    import onnx

    source = Path(onnx_path)
    if not source.is_file():
        raise ModelLoadError(f"ONNX file {source} not found")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}")
    if not 0 <= max_accuracy_drop < 1:
        raise ConfigError(f"max accuracy drop must be in [0, 1), got {max_accuracy_drop}")
    target = check_writable_file(Path(out) if out is not None else derived_path(source, "fp16"))
    try:
        original = onnx.load(str(source))
    except Exception as exc:
        raise ModelLoadError(f"{source} is not a readable ONNX file: {exc}") from exc
    data = load_test_set(data_dir, purpose="fp16 validation") if validate else None

    status(progress, "converting to fp16")
    t0 = time.perf_counter()
    try:
        with quiet_exporters():
            half = to_fp16(original)
            onnx.checker.check_model(half, full_check=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"fp16 conversion of {source} failed: {first[:300]}") from exc
    audit = audit_onnx(half)
    io_types = {t.dtype for t in audit.inputs + audit.outputs}
    if io_types != {"float32"}:
        raise ExportError(f"fp16 conversion changed the input/output types to {sorted(io_types)}")
    meta = dict(audit_onnx(original).metadata)
    meta.update(
        {
            "precision": "fp16 (float16 weights and compute, float32 inputs and outputs)",
            "source_onnx_sha256": file_digest(source),
        }
    )
    convert_seconds = time.perf_counter() - t0

    provider = caveat = None
    fp32_acc = fp16_acc = drop = agreement = max_diff = None
    t1 = time.perf_counter()
    with atomic_path(target) as tmp:
        if data is not None:
            images, labels = data
            set_onnx_metadata(half, meta)
            session = open_session(half.SerializeToString(), device)
            provider = session.get_providers()[0]
            if provider != CUDA_EP:
                caveat = CPU_CAVEAT
            fp32_logits = predict_all(
                ort_predict(ort_session(source)),
                images,
                progress=progress,
                description="fp32 accuracy",
            )
            half_logits = predict_all(
                ort_predict(session),
                images,
                progress=progress,
                description=f"fp16 accuracy ({provider})",
            )
            check = check_accuracy_drop(
                fp32_logits,
                half_logits,
                labels,
                max_drop=max_accuracy_drop,
                what=f"fp16 ({provider})",
            )
            fp32_acc, fp16_acc, drop = check.fp32_accuracy, check.accuracy, check.drop
            agreement, max_diff = check.argmax_agreement, check.max_abs_diff
            meta.update(
                {
                    "test_accuracy": f"{fp16_acc:.6g}",
                    "test_examples": str(len(labels)),
                    "fp32_test_accuracy": f"{fp32_acc:.6g}",
                    "validated_on": provider,
                }
            )
        else:
            log.warning("validation skipped (--no-validate): %s is unchecked", target)
            meta["validated_on"] = "not validated"
        set_onnx_metadata(half, meta)
        onnx.save_model(half, str(tmp))
    size = target.stat().st_size
    audit.metadata, audit.file_size = dict(meta), size
    return Fp16Report(
        path=target,
        source=source,
        validated=data is not None,
        provider=provider,
        gpu_checked=provider == CUDA_EP,
        caveat=caveat,
        fp32_accuracy=fp32_acc,
        fp16_accuracy=fp16_acc,
        accuracy_drop=drop,
        max_accuracy_drop=max_accuracy_drop,
        argmax_agreement=agreement,
        max_abs_diff=max_diff,
        audit=audit,
        file_size=size,
        source_size=source.stat().st_size,
        convert_seconds=convert_seconds,
        evaluate_seconds=time.perf_counter() - t1,
    )
