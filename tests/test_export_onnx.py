"""ONNX export: round trips, dynamic batch, native LSTM, metadata, validation catching errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lstm_export.config import ModelConfig
from lstm_export.errors import ConfigError, DataError, ExportError, ValidationError

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "bidirectional": {
        "hidden_size": 16,
        "bidirectional": True,
        "input_mean": 0.13,
        "input_std": 0.3,
    },
    "one_layer": {"hidden_size": 16, "num_layers": 1},
}


def save_ckpt(folder: Path, *, seed: int = 0, **config: Any) -> Path:
    """An untrained (seeded) checkpoint of any architecture in ``folder/model.pt``."""
    import torch

    from lstm_export.checkpoint import make_checkpoint, save_checkpoint
    from lstm_export.model import build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig(**config)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.pt"
    metrics = {"test_accuracy": 0.1234, "test_examples": 10000}
    save_checkpoint(make_checkpoint(model, metrics=metrics), path)
    return path


def eager_logits(checkpoint: Path, x: np.ndarray) -> np.ndarray:
    import torch

    from lstm_export.export.source import load_source

    model = load_source(checkpoint).model
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"pixels": x})[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> dict[str, Any]:
    """One dynamo export per config in CONFIGS: name -> (checkpoint, report)."""
    from lstm_export.export.to_onnx import export_onnx

    out = {}
    for name, config in CONFIGS.items():
        ckpt = save_ckpt(tmp_path_factory.mktemp(name), **config)
        out[name] = (ckpt, export_onnx(ckpt, data_dir=mnist_dir))
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_round_trip_is_validated_and_native(exported: dict[str, Any], name: str) -> None:
    ckpt, report = exported[name]
    config = ModelConfig(**CONFIGS[name])
    assert report.path == ckpt.with_suffix(".onnx") and report.path.is_file()
    assert report.opset == 20 and report.exporter == "dynamo"
    v = report.validation
    assert [c.batch for c in v.checks] == [1, 7, 512]
    assert all(c.max_abs_diff <= 1e-4 and c.agree == c.batch for c in v.checks)
    assert "onnx.checker (full)" in v.structural
    audit = report.audit
    assert audit.op_counts.get("LSTM") == config.num_layers
    assert (
        not audit.control_flow and "Loop" not in audit.op_counts and "Scan" not in audit.op_counts
    )
    want_dir = "bidirectional" if config.bidirectional else "forward"
    assert [n.direction for n in audit.lstm_nodes] == [want_dir] * config.num_layers
    assert all(n.hidden_size == config.hidden_size for n in audit.lstm_nodes)
    assert all(n.weights_are_initializers for n in audit.lstm_nodes), "constants were not folded"
    assert [str(t) for t in audit.inputs] == ["pixels: float32 [batch, 28, 28]"]
    assert [str(t) for t in audit.outputs] == [f"logits: float32 [batch, {config.num_classes}]"]
    assert report.file_size == report.path.stat().st_size


@pytest.mark.parametrize("name", ["default", "bidirectional"])
def test_dynamic_batch(exported: dict[str, Any], name: str) -> None:
    ckpt, report = exported[name]
    rng = np.random.default_rng(0)
    for batch in (1, 2, 33, 1000):
        x = rng.random((batch, 28, 28), dtype=np.float32)
        got = ort_logits(report.path, x)
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, eager_logits(ckpt, x), atol=1e-4, rtol=0)


def test_metadata(exported: dict[str, Any]) -> None:
    import onnx

    from lstm_export import __version__
    from lstm_export.checkpoint import load_checkpoint
    from lstm_export.fileio import file_digest

    ckpt, report = exported["default"]
    meta = {p.key: p.value for p in onnx.load(str(report.path)).metadata_props}
    source = load_checkpoint(ckpt)
    assert meta["class_names"] == ",".join(str(d) for d in range(10))
    assert json.loads(meta["preprocessing"]) == source["preprocessing"]
    assert meta["source_checkpoint_sha256"] == file_digest(ckpt)
    assert float(meta["test_accuracy"]) == pytest.approx(0.1234)
    assert meta["lstm_export_version"] == __version__
    assert json.loads(meta["model_config"]) == ModelConfig().to_dict()
    assert "dynamo" in meta["exporter"] and meta["precision"] == "fp32"


def test_runner_reads_metadata(exported: dict[str, Any]) -> None:
    from lstm_export.infer.registry import load_runner

    _, report = exported["one_layer"]
    with load_runner(report.path, device="cpu") as runner:
        assert runner.metadata["class_names"].split(",") == [str(d) for d in range(10)]
        assert runner.infer(np.zeros((3, 28, 28), np.float32)).shape == (3, 10)


def test_legacy_exporter(tmp_path: Path, mnist_dir: Path) -> None:
    from lstm_export.export.to_onnx import export_onnx

    ckpt = save_ckpt(tmp_path / "run", hidden_size=16)
    report = export_onnx(
        tmp_path / "run", tmp_path / "legacy.onnx", legacy=True, opset=17, data_dir=mnist_dir
    )
    assert report.exporter == "legacy" and report.opset == 17 and report.checkpoint == ckpt
    assert report.audit.op_counts["LSTM"] == 2 and not report.audit.control_flow
    assert report.audit.inputs[0].dims == ["batch", 28, 28]
    x = np.random.default_rng(1).random((5, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(ort_logits(report.path, x), eager_logits(ckpt, x), atol=1e-4, rtol=0)


def test_perturbed_graph_is_caught_and_nothing_written(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph that drifts from eager (here: fc.bias + 0.01) fails validation; no file is left."""
    from onnx import numpy_helper

    from lstm_export.export import to_onnx

    real_fold = to_onnx.fold_constants

    def fold_and_perturb(model: Any) -> Any:
        model = real_fold(model)
        for init in model.graph.initializer:
            if init.name == "fc.bias":
                init.CopyFrom(
                    numpy_helper.from_array(numpy_helper.to_array(init) + 0.01, init.name)
                )
        return model

    monkeypatch.setattr(to_onnx, "fold_constants", fold_and_perturb)
    ckpt = save_ckpt(tmp_path / "run", hidden_size=16, num_layers=1)
    with pytest.raises(ValidationError, match=r"batch 1: max \|logit diff\| 0\.01"):
        to_onnx.export_onnx(ckpt, data_dir=mnist_dir)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.pt"]


def test_validation_catches_argmax_disagreement(exported: dict[str, Any], tmp_path: Path) -> None:
    """Even with a huge tolerance, swapped class rows are caught by the argmax check."""
    import onnx
    from onnx import numpy_helper

    from lstm_export.export.validate import (
        check_onnx_file,
        load_test_set,
        make_batches,
        validate_export,
    )

    ckpt, report = exported["one_layer"]
    model = onnx.load(str(report.path))
    for init in model.graph.initializer:
        if init.name in ("fc.weight", "fc.bias"):
            arr = numpy_helper.to_array(init).copy()
            arr[[0, 1]] = arr[[1, 0]]
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    bad = tmp_path / "swapped.onnx"
    onnx.save(model, str(bad))
    batches = make_batches(load_test_set()[0])
    with pytest.raises(ValidationError, match="argmax differs"):
        validate_export(
            bad, "onnxruntime", ckpt, batches, 1e3, candidate_name="ORT", structural=check_onnx_file
        )


def test_a_fixed_time_axis_is_refused_where_a_dynamic_one_is_wanted(
    exported: dict[str, Any],
) -> None:
    """The check that catches an exporter specialising the time axis to the example's 28."""
    from lstm_export.export.audit import check_io

    _, report = exported["one_layer"]
    assert [n.time_axis for n in report.audit.lstm_nodes] == [28]
    with pytest.raises(ExportError) as info:
        check_io(report.audit, ModelConfig(**CONFIGS["one_layer"]), dynamic_seq=True)
    assert "expected pixels: float32 [batch, <symbolic>, 28]" in str(info.value)
    assert "the time axis does not reach the LSTM" in str(info.value)
    assert "runs 28 fixed steps" in str(info.value)
    with pytest.raises(ExportError, match="expected inputs pixels, h_0, c_0, got pixels"):
        check_io(report.audit, ModelConfig(**CONFIGS["one_layer"]), with_state=True)


def test_dynamic_seq_seed_model(exported: dict[str, Any], tmp_path: Path, mnist_dir: Path) -> None:
    """--dynamic-seq on the seed architecture: symbolic time axis into both LSTM nodes, and
    validated at 1, 7, 28 and 100 rows; the batch-only file stays as it was.

    Also a regression test: it runs after the module's batch-only dynamo exports, which used to
    leave caches that made torch specialise the time axis to 28 (to_onnx._fresh_trace_state).
    """
    import torch

    from lstm_export.errors import ExportError
    from lstm_export.export.to_onnx import export_onnx

    ckpt, fixed = exported["default"]
    if tuple(int(p) for p in torch.__version__.split(".")[:2]) < (2, 14):
        # torch 2.11's dynamo exporter unrolls the LSTM to 28 steps: refused, saying what works
        with pytest.raises(ExportError, match="so does the legacy exporter"):
            export_onnx(ckpt, tmp_path / "dyn.onnx", dynamic_seq=True, data_dir=mnist_dir)
        return
    report = export_onnx(ckpt, tmp_path / "dyn.onnx", dynamic_seq=True, data_dir=mnist_dir)
    assert report.dynamic_seq and not report.with_state and not fixed.dynamic_seq
    assert [str(t) for t in report.audit.inputs] == ["pixels: float32 [batch, time, 28]"]
    assert [n.time_axis for n in report.audit.lstm_nodes] == ["time", "time"]
    assert sorted({c.seq_len for c in report.validation.checks}) == [1, 7, 28, 100]
    assert report.validation.max_abs_diff <= 1e-4
    assert report.metadata["seq_len"] == "any" and fixed.metadata["seq_len"] == "28"
    x = np.random.default_rng(4).random((2, 300, 28), dtype=np.float32)
    np.testing.assert_allclose(ort_logits(report.path, x), eager_logits(ckpt, x), atol=1e-4, rtol=0)


def test_native_lstm_check_rejects_other_graphs() -> None:
    """An unrolled or Loop-based recurrence is refused with a message naming what was found."""
    from onnx import TensorProto, helper

    from lstm_export.export.audit import audit_onnx, check_native_lstm

    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"])],
        "body",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, [])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["y"]),
            helper.make_node("Loop", ["", "cond"], ["z"], body=body),
        ],
        "unrolled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    audit = audit_onnx(helper.make_model(graph))
    with pytest.raises(ExportError, match=r"Loop x1.*expected 2 native LSTM node\(s\).*found 0"):
        check_native_lstm(audit, ModelConfig())


@pytest.mark.parametrize(
    ("opset", "legacy", "error", "match"),
    [
        (
            5,
            False,
            ConfigError,
            r"opset 5 is not available with the dynamo exporter \(supported here: 7\.\.",
        ),
        (
            21,
            True,
            ConfigError,
            r"opset 21 is not available with the legacy exporter \(supported here: 7\.\.20\)",
        ),
        (
            9,
            False,
            ExportError,
            r"cannot produce opset 9: it produced opset 18 \(opsets below 18 need the legacy exporter\)",
        ),
    ],
)
def test_opset_the_exporter_cannot_do(
    tmp_path: Path, opset: int, legacy: bool, error: type[Exception], match: str
) -> None:
    from lstm_export.export.to_onnx import export_onnx

    ckpt = save_ckpt(tmp_path / "run", hidden_size=8, num_layers=1)
    with pytest.raises(error, match=match):
        export_onnx(ckpt, opset=opset, legacy=legacy, validate=False)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.pt"]


def test_missing_mnist_is_named_and_no_validate_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lstm_export.export.to_onnx import export_onnx

    monkeypatch.delenv("LSTM_EXPORT_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    ckpt = save_ckpt(tmp_path / "run", hidden_size=8, num_layers=1)
    with pytest.raises(DataError, match=r"validation needs the MNIST test set.*not asked for"):
        export_onnx(ckpt)  # the library never downloads on its own
    assert not ckpt.with_suffix(".onnx").exists()
    report = export_onnx(ckpt, validate=False)
    assert report.validation is None and report.path.is_file()


def test_runtime_refusal_is_one_readable_sentence(exported: dict[str, Any], tmp_path: Path) -> None:
    """An opset ONNX Runtime does not support yet: its reason, without C++ signatures or paths."""
    import onnx

    from lstm_export.export.validate import validate_export

    ckpt, report = exported["one_layer"]
    model = onnx.load(str(report.path))
    for imp in model.opset_import:
        if imp.domain == "":
            imp.version = 28
    path = tmp_path / "future.onnx"
    onnx.save(model, str(path))
    with pytest.raises(
        ValidationError, match=r"cannot load the exported graph: ONNX Runtime only"
    ) as info:
        validate_export(path, "onnxruntime", ckpt, [], candidate_name="ONNX Runtime (CPU)")
    assert "onnxruntime_src" not in str(info.value) and str(path) not in str(info.value)


@pytest.mark.cuda
def test_onnx_runs_on_cuda_provider(exported: dict[str, Any]) -> None:
    from lstm_export.export.placement import node_placement
    from lstm_export.ort_session import open_session

    ckpt, report = exported["default"]
    session = open_session(report.path, "cuda")
    x = np.random.default_rng(4).random((64, 28, 28), dtype=np.float32)
    got = session.run(["logits"], {"pixels": x})[0]
    want = eager_logits(ckpt, x)
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    assert (got.argmax(1) == want.argmax(1)).all()
    lstm = [n for n in node_placement(report.path, "cuda").nodes if n.op_type == "LSTM"]
    assert lstm and all(n.provider == "CUDAExecutionProvider" for n in lstm)
