"""int8 (DynamicQuantizeLSTM, accuracy guard) and fp16 (float32 I/O kept) conversions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lstm_export.config import ModelConfig
from lstm_export.errors import DeviceError, ExportError, ValidationError


def save_ckpt(folder: Path, *, seed: int = 0, **config: Any) -> Path:
    """An untrained (seeded) checkpoint of any architecture in ``folder/model.pt``."""
    import torch

    from lstm_export.checkpoint import make_checkpoint, save_checkpoint
    from lstm_export.model import build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig(**config)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.pt"
    save_checkpoint(make_checkpoint(model, metrics={"test_accuracy": 0.1}), path)
    return path


def ops(path: Path) -> Counter[str]:
    import onnx

    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def cuda_usable() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.fixture(scope="module")
def trained_onnx(
    trained_checkpoint: Path, mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    from lstm_export.export.to_onnx import export_onnx

    out = tmp_path_factory.mktemp("trained_onnx") / "model.onnx"
    return export_onnx(trained_checkpoint, out, data_dir=mnist_dir).path


@pytest.fixture(scope="module")
def small_onnx(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lstm_export.export.to_onnx import export_onnx

    ckpt = save_ckpt(tmp_path_factory.mktemp("small"), hidden_size=16)
    return export_onnx(ckpt, data_dir=mnist_dir).path


def test_int8_quantizes_every_lstm_within_accuracy_bound(
    trained_onnx: Path, mnist_dir: Path
) -> None:
    import onnx

    from lstm_export.export.quantize import quantize_int8

    report = quantize_int8(trained_onnx, data_dir=mnist_dir)
    assert report.path == trained_onnx.with_name("model.int8.onnx") and report.path.is_file()
    counts = ops(report.path)
    assert counts["DynamicQuantizeLSTM"] == 2 and counts["LSTM"] == 0
    assert report.quantized_lstm_nodes == report.lstm_nodes == 2
    assert report.test_examples == 10000
    assert report.fp32_accuracy > 0.5, "the trained fixture should be far better than chance"
    assert report.fp32_accuracy - report.int8_accuracy <= 0.003
    assert report.accuracy_drop == pytest.approx(report.fp32_accuracy - report.int8_accuracy)
    assert report.file_size < report.source_size / 2
    meta = {p.key: p.value for p in onnx.load(str(report.path)).metadata_props}
    assert float(meta["test_accuracy"]) == pytest.approx(report.int8_accuracy)
    assert float(meta["fp32_test_accuracy"]) == pytest.approx(report.fp32_accuracy)
    assert meta["precision"].startswith("int8") and meta["class_names"]
    # only domains the graph uses are imported (ORT's optimiser adds training/nchwc/aten ones)
    assert {o.domain for o in onnx.load(str(report.path)).opset_import} <= {"", "com.microsoft"}


def test_int8_guard_refuses_an_accuracy_drop(
    small_onnx: Path, mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from lstm_export import parity
    from lstm_export.export import quantize

    real_compare = parity.compare

    def worse(candidate: Any, reference: Any, labels: Any = None) -> parity.Parity:
        measured = real_compare(candidate, reference, labels)
        return dataclasses.replace(measured, accuracy=0.90, reference_accuracy=0.95)

    monkeypatch.setattr(parity, "compare", worse)
    out = tmp_path / "q.onnx"
    with pytest.raises(
        ValidationError,
        match=r"int8 accuracy 90\.00 % is 5\.00 points below fp32 95\.00 % on 10000 test images",
    ):
        quantize.quantize_int8(small_onnx, out, data_dir=mnist_dir)
    assert list(tmp_path.iterdir()) == []


def test_int8_folds_in_graph_weights_first(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dynamo exporter computes W/R in the graph; plain quantize_dynamic then skips the LSTM.

    quantize_int8 folds first, so every LSTM is still quantized.
    """
    from onnxruntime.quantization import quantize_dynamic

    from lstm_export.export import to_onnx
    from lstm_export.export.quantize import quantize_int8

    monkeypatch.setattr(to_onnx, "fold_constants", lambda model: model)
    ckpt = save_ckpt(tmp_path / "run")  # hidden 128: torch.onnx's own folding limit leaves W/R
    report = to_onnx.export_onnx(ckpt, data_dir=mnist_dir)
    assert not any(n.weights_are_initializers for n in report.audit.lstm_nodes)

    import onnx

    raw = onnx.load(str(report.path))
    del raw.graph.value_info[:]  # else the naive quantizer crashes in shape inference
    naive = tmp_path / "naive.int8.onnx"
    quantize_dynamic(raw, str(naive))
    assert ops(naive)["DynamicQuantizeLSTM"] == 0, "premise: the naive quantizer skips the LSTM"

    q = quantize_int8(report.path, data_dir=mnist_dir, max_accuracy_drop=0.5)
    assert ops(q.path)["DynamicQuantizeLSTM"] == 2 and ops(q.path)["LSTM"] == 0


def test_int8_refuses_a_graph_without_lstm(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from lstm_export.export.quantize import quantize_int8

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ExportError, match="holds no fp32 LSTM node"):
        quantize_int8(path)


def test_fp16_keeps_float32_io_and_validates(small_onnx: Path, mnist_dir: Path) -> None:
    import onnx
    import onnxruntime as ort

    from lstm_export.export.fp16 import convert_fp16

    report = convert_fp16(small_onnx, data_dir=mnist_dir)
    assert report.path == small_onnx.with_name("model.fp16.onnx")
    model = onnx.load(str(report.path))
    elem = onnx.TensorProto
    assert model.graph.input[0].type.tensor_type.elem_type == elem.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == elem.FLOAT
    lstm_weights = [i for i in model.graph.initializer if i.data_type == elem.FLOAT16]
    assert len(lstm_weights) >= 4, "weights should be float16"
    assert report.validated and report.accuracy_drop is not None
    assert report.accuracy_drop <= report.max_accuracy_drop
    if not report.gpu_checked:
        assert report.provider == "CPUExecutionProvider" and report.caveat
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["precision"].startswith("fp16") and meta["validated_on"] == report.provider
    x = np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)
    out = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"]).run(
        None, {"pixels": x}
    )[0]
    assert out.dtype == np.float32 and out.shape == (3, 10)


@pytest.mark.skipif("cuda_usable()")
def test_fp16_cuda_validation_asked_without_cuda(
    small_onnx: Path, mnist_dir: Path, tmp_path: Path
) -> None:
    from lstm_export.export.fp16 import convert_fp16

    with pytest.raises(DeviceError, match="CUDA was asked for"):
        convert_fp16(small_onnx, tmp_path / "h.onnx", data_dir=mnist_dir, device="cuda")
    assert not (tmp_path / "h.onnx").exists()


@pytest.mark.cuda
def test_fp16_validated_on_cuda(trained_onnx: Path, mnist_dir: Path, tmp_path: Path) -> None:
    from lstm_export.export.fp16 import convert_fp16
    from lstm_export.export.placement import node_placement

    report = convert_fp16(
        trained_onnx, tmp_path / "model.fp16.onnx", data_dir=mnist_dir, device="cuda"
    )
    assert (
        report.gpu_checked and report.provider == "CUDAExecutionProvider" and report.caveat is None
    )
    assert report.accuracy_drop is not None and report.accuracy_drop <= 0.001
    placement = node_placement(report.path, "cuda")
    lstm = [n for n in placement.nodes if n.op_type == "LSTM"]
    assert lstm and all(n.provider == "CUDAExecutionProvider" for n in lstm)
