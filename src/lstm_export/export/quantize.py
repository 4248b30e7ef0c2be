"""fp32 ONNX -> dynamic int8 ONNX whose LSTMs really are quantized, with an accuracy guard.

ONNX Runtime's ``quantize_dynamic`` quantizes an ``LSTM`` only when its W and R are initializers,
so the graph is pre-processed first (``quant_pre_process`` folds them), and the result must hold
one ``DynamicQuantizeLSTM`` per original ``LSTM``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstm_export.errors import ExportError, first_line
from lstm_export.export.audit import OnnxAudit, audit_onnx
from lstm_export.export.derive import DerivedReport, derive_onnx
from lstm_export.export.quiet import ProgressFn

DEFAULT_MAX_ACCURACY_DROP = 0.003


@dataclass(kw_only=True)
class QuantizeReport(DerivedReport):
    """What ``quantize_int8`` wrote and measured; accuracies are in 0..1."""

    lstm_nodes: int
    quantized_lstm_nodes: int
    fp32_accuracy: float
    int8_accuracy: float
    accuracy_drop: float
    argmax_agreement: float
    max_abs_diff: float
    test_examples: int
    quantize_seconds: float
    weight_type: str = "QInt8"
    per_channel: bool = False


def _prune_opset_imports(model: Any) -> None:
    """Drop the opset imports ORT's optimiser adds but no node uses (training, nchwc, aten...)."""
    used = {n.domain or "" for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if (o.domain or "") in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def to_int8(original: Any, audit: OnnxAudit) -> Any:
    """Dynamic int8 copy of an fp32 ModelProto; ExportError unless every LSTM got quantized."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    n_lstm = audit.op_counts.get("LSTM", 0)
    if n_lstm == 0:
        raise ExportError("the ONNX file holds no fp32 LSTM node to quantize")
    with tempfile.TemporaryDirectory(prefix="lstm-export-int8-") as work:
        pre, quant = Path(work) / "pre.onnx", Path(work) / "int8.onnx"
        try:
            quant_pre_process(original, str(pre))
            quantize_dynamic(str(pre), str(quant), weight_type=QuantType.QInt8)
        except Exception as exc:
            raise ExportError(f"onnxruntime.quantization failed: {first_line(exc)}") from exc
        model = onnx.load(str(quant))
    _prune_opset_imports(model)
    after = audit_onnx(model)
    quantized, left = after.op_counts.get("DynamicQuantizeLSTM", 0), after.op_counts.get("LSTM", 0)
    if quantized != n_lstm or left:
        raise ExportError(
            f"int8 quantization left {left} of {n_lstm} LSTM node(s) in fp32 "
            f"({quantized} DynamicQuantizeLSTM); their W/R inputs are probably not constants"
        )
    return model


def quantize_int8(
    onnx_path: Path,
    out: Path | None = None,
    *,
    data_dir: Path | None = None,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    progress: ProgressFn | None = None,
) -> QuantizeReport:
    """Quantize ``onnx_path`` (default output ``<stem>.int8.onnx`` beside it): int8 weights,
    activations quantized per batch at run time. The accuracy guard always runs; ExportError
    (an LSTM left unquantized) or ValidationError (a drop over ``max_accuracy_drop``, 0.003 = 0.3
    points) leaves no file behind.
    """
    import onnxruntime

    report, guard, _, seconds = derive_onnx(
        onnx_path,
        out,
        tag="int8",
        precision="int8 (dynamic: int8 weights, uint8 activations quantized per batch)",
        transform=to_int8,
        extra_metadata={
            "quantizer": f"onnxruntime.quantization.quantize_dynamic {onnxruntime.__version__}"
        },
        data_dir=data_dir,
        max_accuracy_drop=max_accuracy_drop,
        progress=progress,
    )
    assert guard is not None and guard.accuracy is not None
    assert guard.reference_accuracy is not None
    quantized = report["audit"].op_counts.get("DynamicQuantizeLSTM", 0)
    return QuantizeReport(
        **report,
        lstm_nodes=quantized,
        quantized_lstm_nodes=quantized,
        fp32_accuracy=guard.reference_accuracy,
        int8_accuracy=guard.accuracy,
        accuracy_drop=guard.reference_accuracy - guard.accuracy,
        argmax_agreement=guard.agreement,
        max_abs_diff=guard.max_abs_diff,
        test_examples=guard.images,
        quantize_seconds=seconds,
    )
