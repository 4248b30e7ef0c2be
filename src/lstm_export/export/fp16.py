"""fp32 ONNX -> float16 weights and compute, float32 inputs and outputs kept (for GPUs).

Validated on ONNX Runtime's CUDA provider when a GPU is usable, else on the CPU provider, which
proves the graph and the rounded weights but not GPU fp16 arithmetic (the report's ``caveat``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstm_export.devices import Device
from lstm_export.errors import ExportError
from lstm_export.export.audit import OnnxAudit, audit_onnx
from lstm_export.export.derive import DerivedReport, derive_onnx
from lstm_export.export.quiet import ProgressFn
from lstm_export.ort_session import CUDA_EP

DEFAULT_MAX_ACCURACY_DROP = 0.001
CPU_CAVEAT = (
    "validated on ONNX Runtime's CPU provider (no usable CUDA here): this proves the fp16 graph "
    "and rounded weights, not GPU fp16 arithmetic; re-check it on a GPU (inspect with the CUDA "
    "device, and the bench)"
)


@dataclass(kw_only=True)
class Fp16Report(DerivedReport):
    """What ``convert_fp16`` wrote and measured; accuracies are in 0..1."""

    validated: bool
    provider: str | None
    gpu_checked: bool
    caveat: str | None
    fp32_accuracy: float | None
    fp16_accuracy: float | None
    accuracy_drop: float | None
    argmax_agreement: float | None
    max_abs_diff: float | None
    convert_seconds: float


def to_fp16(model: Any, audit: OnnxAudit | None = None) -> Any:
    """fp16 copy of an fp32 ModelProto, float32 graph inputs/outputs kept, nodes sorted (the
    converter appends its Cast nodes at the end; onnx.checker wants them in order)."""
    import onnx
    import onnx_ir as ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(model, keep_io_types=True)
    irm = ir.serde.deserialize_model(half)
    irm.graph.sort()
    half = ir.serde.serialize_model(irm)
    onnx.checker.check_model(half, full_check=True)
    after = audit_onnx(half)
    io_types = {t.dtype for t in after.inputs + after.outputs}
    if io_types != {"float32"}:
        raise ExportError(f"fp16 conversion changed the input/output types to {sorted(io_types)}")
    return half


def convert_fp16(
    onnx_path: Path,
    out: Path | None = None,
    *,
    validate: bool = True,
    data_dir: Path | None = None,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    device: Device | str = Device.auto,
    progress: ProgressFn | None = None,
) -> Fp16Report:
    """Convert ``onnx_path`` to fp16 (default output ``<stem>.fp16.onnx`` beside it).

    ``device``: where to validate -- ``auto`` (CUDA when usable, else CPU with a caveat),
    ``cuda`` (DeviceError without CUDA) or ``cpu``.
    """
    report, guard, provider, seconds = derive_onnx(
        onnx_path,
        out,
        tag="fp16",
        precision="fp16 (float16 weights and compute, float32 inputs and outputs)",
        transform=to_fp16,
        validate=validate,
        data_dir=data_dir,
        max_accuracy_drop=max_accuracy_drop,
        device=device,
        progress=progress,
    )
    return Fp16Report(
        **report,
        validated=guard is not None,
        provider=provider,
        gpu_checked=provider == CUDA_EP,
        caveat=CPU_CAVEAT if guard is not None and provider != CUDA_EP else None,
        fp32_accuracy=guard.reference_accuracy if guard else None,
        fp16_accuracy=guard.accuracy if guard else None,
        accuracy_drop=-guard.accuracy_delta if guard and guard.accuracy_delta is not None else None,
        argmax_agreement=guard.agreement if guard else None,
        max_abs_diff=guard.max_abs_diff if guard else None,
        convert_seconds=seconds,
    )
