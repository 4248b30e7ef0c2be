"""The exported ONNX graph is simplified: no shape arithmetic, no zero-state bookkeeping.

That the simplified graphs compute what eager PyTorch does is proven by the export's own
validation (tests/test_export_matrix.py, every configuration and both exporters); here: which
nodes are left, that the rewrites leave graphs they do not match alone, and that simplifying
twice changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lstm_export.config import ModelConfig

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


def _export(tmp_path: Path, legacy: bool, **config: Any) -> Any:
    import torch

    from lstm_export.checkpoint import make_checkpoint, save_checkpoint
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.model import build_model

    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_checkpoint(make_checkpoint(build_model(ModelConfig(**config)).eval()), path)
    kwargs = {"opset": 17} if legacy else {}
    return export_onnx(path, legacy=legacy, validate=False, **kwargs)


def _ops(path: Path) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]


SEED = ["Transpose", "LSTM", "Squeeze", "LSTM", "Gather", "Gemm"]


@pytest.mark.parametrize(
    ("config", "legacy", "ops"),
    [
        ({"num_layers": 2, "hidden_size": 8}, False, SEED),
        ({"num_layers": 2, "hidden_size": 8}, True, SEED),
        ({"num_layers": 2, "hidden_size": 8, "batch_first": False, "bias": False}, False, SEED),
        (
            {"num_layers": 3, "hidden_size": 6},
            False,
            ["Transpose", "LSTM", "Squeeze", "LSTM", "Squeeze", "LSTM", "Gather", "Gemm"],
        ),
        (
            {"num_layers": 2, "hidden_size": 5, "bidirectional": True},
            False,
            [
                "Transpose",
                "LSTM",
                "Transpose",
                "Reshape",
                "LSTM",
                "Transpose",
                "Reshape",
                "Transpose",
                "Gather",
                "Gemm",
            ],
        ),
        (
            {"num_layers": 1, "hidden_size": 4, "input_mean": 0.1, "input_std": 0.3},
            True,
            ["Sub", "Div", "Transpose", "LSTM", "Gather", "Gemm"],
        ),
    ],
    ids=["seed-dynamo", "seed-legacy", "time-major-no-bias", "3-layers", "bidirectional", "norm"],
)
def test_what_is_left_of_the_exported_graph(
    tmp_path: Path, config: dict[str, Any], legacy: bool, ops: list[str]
) -> None:
    report = _export(tmp_path, legacy, **config)
    assert _ops(report.path) == ops
    assert report.simplified_from is not None and report.simplified_from > len(ops)
    assert report.audit.node_count == len(ops)


def test_a_stateful_graph_keeps_its_state_inputs(tmp_path: Path) -> None:
    """h_0/c_0 are not zeros: each layer still reads its slice of them."""
    import torch

    from lstm_export.checkpoint import make_checkpoint, save_checkpoint
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.model import build_model

    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_checkpoint(make_checkpoint(build_model(ModelConfig(hidden_size=8)).eval()), path)
    ops = _ops(export_onnx(path, with_state=True, validate=False).path)
    assert ops.count("Slice") == 4 and "Shape" not in ops and "Mul" not in ops
    assert ops.count("Squeeze") == 1


def test_simplifying_twice_changes_nothing(tmp_path: Path) -> None:
    import onnx

    from lstm_export.export.simplify import simplify_lstm_graph

    model = onnx.load(str(_export(tmp_path, False, num_layers=2, hidden_size=8).path))
    assert simplify_lstm_graph(model) is model


# -- what the rewrites must leave alone ----------------------------------------------------------
def _lstm_graph(initial_h: Any, reshape_dims: tuple[int, int]) -> Any:
    """X [T, B, 4] -> LSTM (hidden 3) -> Y [T, 1, B, 3] -> Transpose(0, 2, 1, 3) -> Reshape to
    (Shape(t)[reshape_dims[0]], Shape(t)[reshape_dims[1]], -1)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((1, 12, 4)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((1, 12, 3)).astype(np.float32), "R"),
        numpy_helper.from_array(initial_h, "h0_fill"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "h0_shape"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
    ]
    for i in range(4):
        inits.append(numpy_helper.from_array(np.array([i], np.int64), f"i{i}"))
    a, b = reshape_dims
    nodes = [
        helper.make_node("Expand", ["h0_fill", "h0_shape"], ["h0"]),
        helper.make_node("LSTM", ["X", "W", "R", "", "", "h0"], ["Y"], hidden_size=3),
        helper.make_node("Transpose", ["Y"], ["t"], perm=[0, 2, 1, 3]),
        helper.make_node("Shape", ["t"], ["s"]),
        helper.make_node("Slice", ["s", f"i{a}", f"i{a + 1}"], ["sa"]),
        helper.make_node("Slice", ["s", f"i{b}", f"i{b + 1}"], ["sb"]),
        helper.make_node("Concat", ["sa", "sb", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["t", "target"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [5, 2, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _run(model: Any, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"X": x})[0])


def test_the_rewrites_apply_only_where_they_are_proven(tmp_path: Path) -> None:
    from lstm_export.export.simplify import simplify_lstm_graph

    x = np.random.default_rng(1).random((5, 2, 4), dtype=np.float32)
    # zero state, dims in order: state dropped, reshape -> Squeeze
    model = _lstm_graph(np.zeros((1, 1, 1), np.float32), (0, 1))
    simple = simplify_lstm_graph(model)
    assert [n.op_type for n in simple.graph.node] == ["LSTM", "Squeeze"]
    assert list(simple.graph.node[0].input) == ["X", "W", "R"]  # no initial_h
    np.testing.assert_array_equal(_run(simple, x), _run(model, x))
    # a state of ones and dims swapped: nothing to do but leave it
    model = _lstm_graph(np.ones((1, 1, 1), np.float32), (1, 0))
    assert simplify_lstm_graph(model) is model
    # dims in order but a state of ones: the state stays, the reshape is still a Squeeze
    model = _lstm_graph(np.ones((1, 1, 1), np.float32), (0, 1))
    simple = simplify_lstm_graph(model)
    assert [n.op_type for n in simple.graph.node] == ["Expand", "LSTM", "Squeeze"]
    np.testing.assert_array_equal(_run(simple, x), _run(model, x))


def test_a_simplifier_failure_keeps_the_exported_graph_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from lstm_export.export import to_onnx

    def broken(model: Any) -> Any:
        raise RuntimeError("a pattern nobody foresaw")

    monkeypatch.setattr(to_onnx, "simplify_lstm_graph", broken)
    report = _export(tmp_path, False, num_layers=2, hidden_size=8)
    assert report.simplified_from is None and "Shape" in _ops(report.path)
    assert "graph simplification skipped: a pattern nobody foresaw" in caplog.text
