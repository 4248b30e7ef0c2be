"""``lstm-export shapes``: nn.LSTM's arguments, every tensor's shape, the identities, measured."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from _cli_helpers import one_line_error
from lstm_export.cli import app
from lstm_export.errors import ConfigError

pytestmark = pytest.mark.filterwarnings(
    "ignore::FutureWarning",
    "ignore::DeprecationWarning",
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning",
)


def run(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], terminal_width=160)


def shapes_of(report: Any) -> dict[str, tuple[list[int], list[int] | None]]:
    return {t.name: (t.expected, t.measured) for t in report.tensors}


def test_seed_model(make_checkpoint: Callable[..., Path]) -> None:
    """The shipped architecture: 2 layers of 128, unidirectional, batch first."""
    from lstm_export.export.shapes import measure_shapes

    report = measure_shapes(make_checkpoint())
    assert report.ok and report.kind == "checkpoint" and (report.batch, report.seq_len) == (3, 28)
    args = {a.name: a.value for a in report.arguments}
    assert args == {
        "input_size": 28,
        "hidden_size": 128,
        "num_layers": 2,
        "bias": True,
        "batch_first": True,
        "dropout": 0.0,
        "bidirectional": False,
        "proj_size": 0,
    }
    # D beside bidirectional False is 1: the meaning gives D for both values
    meaning = {a.name: a.meaning for a in report.arguments}["bidirectional"]
    assert meaning.startswith("D = 2 if bidirectional else 1") and report.symbols["D"] == 1
    assert shapes_of(report) == {
        "input": ([3, 28, 28], [3, 28, 28]),
        "h_0": ([2, 3, 128], [2, 3, 128]),
        "c_0": ([2, 3, 128], [2, 3, 128]),
        "output": ([3, 28, 128], [3, 28, 128]),
        "h_n": ([2, 3, 128], [2, 3, 128]),
        "c_n": ([2, 3, 128], [2, 3, 128]),
        "logits": ([3, 10], [3, 10]),
    }
    assert [t.formula for t in report.tensors] == [
        "(N, T, H_in)",
        "(D*L, N, H_out)",
        "(D*L, N, H_cell)",
        "(N, T, D*H_out)",
        "(D*L, N, H_out)",
        "(D*L, N, H_cell)",
        "(N, C)",
    ]
    names = [i.name for i in report.identities]
    assert names == [
        "last step is h_n",
        "batch_first only transposes",
        "no state is zeros",
        "the head reads the last step",
    ]
    assert all(i.holds for i in report.identities)
    assert report.identities[0].max_abs_diff == 0.0  # the very same numbers


def test_bidirectional_three_layers_cli(make_checkpoint: Callable[..., Path]) -> None:
    ckpt = make_checkpoint(hidden_size=16, num_layers=3, bidirectional=True)
    result = run("shapes", ckpt.parent, "--batch", 5, "--seq-len", 11)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "checkpoint; N=5 images of T=11 rows" in text
    assert "N=5, T=11, H_in=28, H_cell=16, H_out=16, L=3, D=2, C=10" in text
    for line in (
        "h_0     (D*L, N, H_out)   (6, 5, 16)",
        "output  (N, T, D*H_out)   (5, 11, 32)",
        "h_n     (D*L, N, H_out)   (6, 5, 16)",
    ):
        assert line in text, text
    assert "output[:, -1, :H_out] == h_n[4]" in text  # top layer, forward direction
    assert "output[:, 0, H_out:] == h_n[5]" in text  # top layer, backward direction
    assert text.count("holds") == 5 and "FAILS" not in text and "DIFFERS" not in text


@pytest.mark.parametrize("batch_first", [True, False])
def test_batch_first_both_ways(make_checkpoint: Callable[..., Path], batch_first: bool) -> None:
    """The layout changes the LSTM's input and output (transposed), never h or c."""
    from lstm_export.export.shapes import measure_shapes

    ckpt = make_checkpoint(hidden_size=6, num_layers=2, batch_first=batch_first)
    report = measure_shapes(ckpt, batch=4, seq_len=9)
    assert report.ok
    got = shapes_of(report)
    lead = [4, 9] if batch_first else [9, 4]
    assert got["input"] == ([*lead, 28], [*lead, 28])
    assert got["output"] == ([*lead, 6], [*lead, 6])
    assert got["h_n"] == ([2, 4, 6], [2, 4, 6]) and got["logits"] == ([4, 10], [4, 10])
    formula = "(N, T, H_in)" if batch_first else "(T, N, H_in)"
    assert report.tensors[0].formula == formula
    transposes = next(i for i in report.identities if i.name == "batch_first only transposes")
    assert transposes.holds and f"batch_first={not batch_first}" in transposes.statement


def test_batch_first_does_not_change_the_answer(make_checkpoint: Callable[..., Path]) -> None:
    """Same weights, other layout: the model gives the same logits (it transposes inside)."""
    import torch

    from lstm_export.checkpoint import load_model
    from lstm_export.config import ModelConfig
    from lstm_export.model import build_model

    model, _ = load_model(make_checkpoint(hidden_size=5, num_layers=2))
    other = build_model(ModelConfig(hidden_size=5, num_layers=2, batch_first=False)).eval()
    other.load_state_dict(model.state_dict())
    x = torch.rand(3, 13, 28)
    with torch.inference_mode():
        torch.testing.assert_close(other(x), model(x), atol=1e-6, rtol=0)


def test_proj_size_and_no_bias(make_checkpoint: Callable[..., Path]) -> None:
    from lstm_export.export.shapes import measure_shapes

    report = measure_shapes(make_checkpoint(hidden_size=8, proj_size=3, bias=False), 2, 5)
    assert report.ok and report.symbols["H_out"] == 3 and report.symbols["H_cell"] == 8
    got = shapes_of(report)
    assert got["h_n"] == ([2, 2, 3], [2, 2, 3]) and got["c_n"] == ([2, 2, 8], [2, 2, 8])
    assert got["output"] == ([2, 5, 3], [2, 5, 3])


def test_a_failed_identity_is_an_error(
    make_checkpoint: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A classifier that reads the bottom layer's state instead of the top one is caught."""
    from lstm_export.model import LSTMClassifier

    monkeypatch.setattr(LSTMClassifier, "_last_step", lambda self, out, h_n: h_n[0])
    result = run("shapes", make_checkpoint(hidden_size=8))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "FAILS" in result.stdout  # the table is printed, then the error
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    assert "identity the head reads the last step does not hold" in errors[0]


def test_json(make_checkpoint: Callable[..., Path]) -> None:
    result = run("shapes", make_checkpoint(hidden_size=4, num_layers=1), "--json", "-t", 3)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "checkpoint" and data["seq_len"] == 3 and data["ok"] is True
    assert data["config"]["hidden_size"] == 4 and data["problems"] == []
    assert [t["name"] for t in data["tensors"]] == [
        "input",
        "h_0",
        "c_0",
        "output",
        "h_n",
        "c_n",
        "logits",
    ]
    assert all(i["holds"] for i in data["identities"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    from lstm_export.checkpoint import make_checkpoint, save_checkpoint
    from lstm_export.config import ModelConfig
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.export.to_torchscript import export_torchscript
    from lstm_export.model import build_model

    folder = tmp_path_factory.mktemp("shapes_files")
    torch.manual_seed(0)
    ckpt = folder / "model.pt"
    save_checkpoint(make_checkpoint(build_model(ModelConfig(hidden_size=6)).eval()), ckpt)
    onnx = {"legacy": True, "opset": 17, "validate": False}
    return {
        "state.onnx": export_onnx(ckpt, folder / "state.onnx", with_state=True, **onnx).path,
        "fixed.onnx": export_onnx(ckpt, folder / "fixed.onnx", **onnx).path,
        "state.ts": export_torchscript(ckpt, folder / "s.ts", with_state=True, validate=False).path,
        "plain.ts": export_torchscript(ckpt, folder / "p.ts", validate=False).path,
    }


@pytest.mark.parametrize("name", ["state.onnx", "state.ts"])
def test_stateful_files(exported: dict[str, Path], name: str) -> None:
    from lstm_export.export.shapes import measure_shapes

    report = measure_shapes(exported[name], batch=2, seq_len=9)
    assert report.ok and report.config["hidden_size"] == 6
    got = shapes_of(report)
    assert got["input"] == ([2, 9, 28], [2, 9, 28]) and got["logits"] == ([2, 10], [2, 10])
    assert got["h_0"] == ([2, 2, 6], [2, 2, 6]) and got["c_n"] == ([2, 2, 6], [2, 2, 6])
    assert got["output"] == ([2, 9, 6], None)  # inside the graph
    assert [i.name for i in report.identities] == ["no state is zeros", "the state carries"]
    assert all(i.holds for i in report.identities)


def test_stateless_files(exported: dict[str, Path]) -> None:
    from lstm_export.export.shapes import measure_shapes

    for name in ("fixed.onnx", "plain.ts"):
        report = measure_shapes(exported[name])
        got = shapes_of(report)
        assert report.ok and got["logits"] == ([3, 10], [3, 10]) and got["h_n"][1] is None
        assert report.identities == []
    assert measure_shapes(exported["plain.ts"], seq_len=40).ok  # TorchScript: any length
    with pytest.raises(ConfigError, match="takes 28 rows only"):
        measure_shapes(exported["fixed.onnx"], seq_len=9)
    result = run("shapes", exported["fixed.onnx"], "--seq-len", 9)
    assert "exported with a fixed sequence length" in one_line_error(result)


def test_bad_arguments(tmp_path: Path) -> None:
    assert run("shapes", tmp_path / "nope.onnx").exit_code == 1
    assert "not found" in one_line_error(run("shapes", tmp_path / "nope.pt"))
    assert run("shapes", tmp_path / "nope.pt", "--batch", 0).exit_code != 0
