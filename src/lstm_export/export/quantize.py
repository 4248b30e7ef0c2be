"""fp32 ONNX -> dynamic int8 ONNX whose LSTMs really are quantized, with an accuracy guard.

ONNX Runtime's ``quantize_dynamic`` only turns an ``LSTM`` into ``DynamicQuantizeLSTM`` when its
W and R inputs are initializers; the dynamo exporter computes them inside the graph, and the
quantizer then silently leaves the LSTM in fp32. The graph is therefore pre-processed first
(``quant_pre_process``: ORT basic optimisation folds those constants, plus shape inference), and
the result must hold one ``DynamicQuantizeLSTM`` per original ``LSTM``. Accuracy on the full MNIST
test set (10k images) must stay within ``max_accuracy_drop`` of the fp32 file.
"""

from __future__ import annotations

import logging
import tempfile
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

log = logging.getLogger(__name__)

DEFAULT_MAX_ACCURACY_DROP = 0.003


@dataclass
class QuantizeReport:
    """What ``quantize_int8`` wrote and measured; accuracies are in 0..1."""

    path: Path
    source: Path
    weight_type: str
    per_channel: bool
    lstm_nodes: int
    quantized_lstm_nodes: int
    fp32_accuracy: float
    int8_accuracy: float
    accuracy_drop: float
    max_accuracy_drop: float
    argmax_agreement: float
    max_abs_diff: float
    test_examples: int
    audit: OnnxAudit
    file_size: int
    source_size: int
    quantize_seconds: float
    evaluate_seconds: float


def _prune_opset_imports(model: Any) -> None:
    """Drop the opset imports ORT's optimiser adds but no node uses (training, nchwc, aten...)."""
    used = {n.domain or "" for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if (o.domain or "") in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def quantize_int8(
    onnx_path: Path,
    out: Path | None = None,
    *,
    data_dir: Path | None = None,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    per_channel: bool = False,
    progress: ProgressFn | None = None,
) -> QuantizeReport:
    """Quantize ``onnx_path`` (default output ``<stem>.int8.onnx`` beside it).

    Weights int8 (symmetric), activations quantized per batch at run time. Raises ExportError when
    an LSTM was left unquantized and ValidationError when the test accuracy drops by more than
    ``max_accuracy_drop`` (0.003 = 0.3 points); no file is left behind in either case.
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = Path(onnx_path)
    if not source.is_file():
        raise ModelLoadError(f"ONNX file {source} not found")
    if not 0 <= max_accuracy_drop < 1:
        raise ConfigError(f"max accuracy drop must be in [0, 1), got {max_accuracy_drop}")
    target = check_writable_file(Path(out) if out is not None else derived_path(source, "int8"))
    try:
        original = onnx.load(str(source))
    except Exception as exc:
        raise ModelLoadError(f"{source} is not a readable ONNX file: {exc}") from exc
    src_audit = audit_onnx(original)
    n_lstm = sum(1 for n in src_audit.lstm_nodes if n.op_type == "LSTM")
    if n_lstm == 0:
        raise ExportError(f"{source} holds no fp32 LSTM node to quantize")
    images, labels = load_test_set(data_dir, purpose="the int8 accuracy guard", skippable=False)

    status(progress, "quantizing to int8 (folding constants first)")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lstm-export-int8-") as work:
        pre, quant = Path(work) / "pre.onnx", Path(work) / "int8.onnx"
        try:
            with quiet_exporters():
                quant_pre_process(str(source), str(pre))
                quantize_dynamic(
                    str(pre),
                    str(quant),
                    weight_type=QuantType.QInt8,
                    per_channel=per_channel,
                )
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExportError(
                f"onnxruntime.quantization failed on {source}: {first[:300]}"
            ) from exc
        model = onnx.load(str(quant))
    _prune_opset_imports(model)
    audit = audit_onnx(model)
    quantized = sum(1 for n in audit.lstm_nodes if n.op_type == "DynamicQuantizeLSTM")
    left = sum(1 for n in audit.lstm_nodes if n.op_type == "LSTM")
    if quantized != n_lstm or left:
        raise ExportError(
            f"int8 quantization left {left} of {n_lstm} LSTM node(s) in fp32 "
            f"({quantized} DynamicQuantizeLSTM); their W/R inputs are probably not constants"
        )
    meta = dict(src_audit.metadata)
    meta.update(
        {
            "precision": "int8 (dynamic: int8 weights, uint8 activations quantized per batch)",
            "quantizer": f"onnxruntime.quantization.quantize_dynamic {onnxruntime.__version__}",
            "source_onnx_sha256": file_digest(source),
        }
    )
    quantize_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    with atomic_path(target) as tmp:
        onnx.save_model(model, str(tmp))
        fp32_logits = predict_all(
            ort_predict(ort_session(source)), images, progress=progress, description="fp32 accuracy"
        )
        int8_logits = predict_all(
            ort_predict(ort_session(tmp)), images, progress=progress, description="int8 accuracy"
        )
        check = check_accuracy_drop(
            fp32_logits,
            int8_logits,
            labels,
            max_drop=max_accuracy_drop,
            what="int8",
            suffix=f" on {len(labels)} test images",
        )
        fp32_acc, int8_acc = check.fp32_accuracy, check.accuracy
        log.info("fp32 %.4f, int8 %.4f, drop %.4f", fp32_acc, int8_acc, check.drop)
        # Record the measured figures in the file itself, then save the final bytes.
        meta.update(
            {
                "test_accuracy": f"{int8_acc:.6g}",
                "test_examples": str(len(labels)),
                "fp32_test_accuracy": f"{fp32_acc:.6g}",
            }
        )
        set_onnx_metadata(model, meta)
        onnx.save_model(model, str(tmp))
    size = target.stat().st_size
    audit.metadata, audit.file_size = dict(meta), size
    return QuantizeReport(
        path=target,
        source=source,
        weight_type="QInt8",
        per_channel=per_channel,
        lstm_nodes=n_lstm,
        quantized_lstm_nodes=quantized,
        fp32_accuracy=fp32_acc,
        int8_accuracy=int8_acc,
        accuracy_drop=check.drop,
        max_accuracy_drop=max_accuracy_drop,
        argmax_agreement=check.argmax_agreement,
        max_abs_diff=check.max_abs_diff,
        test_examples=len(labels),
        audit=audit,
        file_size=size,
        source_size=source.stat().st_size,
        quantize_seconds=quantize_seconds,
        evaluate_seconds=time.perf_counter() - t1,
    )
