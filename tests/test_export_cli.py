"""The ``onnx``, ``torchscript`` and ``inspect`` commands through typer's CliRunner; bad input."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from _cli_helpers import one_line_error
from lstm_export.cli import app
from lstm_export.config import ModelConfig

runner = CliRunner()


def save_ckpt(folder: Path, *, seed: int = 0, **config: Any) -> Path:
    """An untrained (seeded) checkpoint of any architecture in ``folder/model.pt``."""
    import torch

    from lstm_export.checkpoint import make_checkpoint, save_checkpoint
    from lstm_export.model import build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig(**config)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.pt"
    save_checkpoint(make_checkpoint(model, metrics={"test_accuracy": 0.5}), path)
    return path


def run(*args: str) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result: Any, match: str) -> None:
    line = one_line_error(result)
    assert match in line, line


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_ckpt(tmp_path_factory.mktemp("cli_run"), hidden_size=16, num_layers=1).parent


@pytest.fixture(scope="module")
def onnx_json(small_run: Path, mnist_dir: Path) -> dict[str, Any]:
    result = run("onnx", small_run, "--data-dir", mnist_dir, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_onnx_json_report(onnx_json: dict[str, Any], small_run: Path) -> None:
    report = onnx_json["onnx"]
    assert report["path"] == str(small_run / "model.onnx") and Path(report["path"]).is_file()
    assert report["audit"]["op_counts"]["LSTM"] == 1
    assert report["audit"]["inputs"] == [
        {"name": "pixels", "dtype": "float32", "dims": ["batch", 28, 28]}
    ]
    checks = report["validation"]["checks"]
    assert [c["batch"] for c in checks] == [1, 7, 512] and all(
        c["agree"] == c["batch"] for c in checks
    )
    assert report["metadata"]["source_checkpoint_sha256"]


def test_onnx_human_output_and_fp16(tmp_path: Path, small_run: Path, mnist_dir: Path) -> None:
    out = tmp_path / "sub" / "digits.onnx"
    result = run("onnx", small_run / "model.pt", "-o", out, "--fp16", "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert f"wrote {out}" in text and "pixels: float32 [batch, 28, 28]" in text
    assert "1 native node: LSTM forward hidden 16" in text
    assert "batch 512" in text and "argmax agreement 512/512" in text
    assert (tmp_path / "sub" / "digits.fp16.onnx").is_file()


def test_torchscript_command(tmp_path: Path, small_run: Path, mnist_dir: Path) -> None:
    out = tmp_path / "m.ts"
    result = run("torchscript", small_run, "-o", out, "--data-dir", mnist_dir, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["path"] == str(out) and out.is_file()
    checks = report["validation"]["checks"]
    assert [(c["seq_len"], c["batch"]) for c in checks] == [
        (t, n) for t in (1, 7, 28, 100) for n in ((1, 7, 512) if t == 28 else (1, 7, 64))
    ]


def test_inspect_commands(onnx_json: dict[str, Any], small_run: Path) -> None:
    onnx_path = onnx_json["onnx"]["path"]
    info = json.loads(run("inspect", onnx_path, "--json").stdout)
    assert info["format"] == "onnx" and info["opset"] == 20 and info["ops"]["LSTM"] == 1
    assert info["metadata"]["class_names"] == "0,1,2,3,4,5,6,7,8,9"
    placement = info["placement"]
    assert placement["session_providers"] == ["CPUExecutionProvider"]
    assert any(n["op_type"] == "LSTM" for n in placement["nodes"])
    assert set(placement["by_provider"]) == {"CPUExecutionProvider"}
    text = run("inspect", onnx_path).stdout
    assert "placement (--device cpu" in text and "source_checkpoint_sha256" in text

    pt = json.loads(run("inspect", small_run / "model.pt", "--json").stdout)
    assert pt["format"] == "checkpoint" and pt["ops"] == {"LSTM": 1, "Linear": 1}
    assert pt["parameters"] > 0 and pt["outputs"][0]["dims"] == ["batch", 10]


def test_inspect_torchscript(tmp_path: Path, small_run: Path) -> None:
    out = tmp_path / "m.ts"
    assert run("torchscript", small_run, "-o", out, "--no-validate").exit_code == 0
    info = json.loads(run("inspect", out, "--json").stdout)
    assert info["format"] == "torchscript" and info["ops"]["aten::lstm"] == 1
    assert info["metadata"]["format"] == "torchscript" and info["details"]["frozen"] is True


def test_with_state_export_and_inspect(tmp_path: Path, small_run: Path, mnist_dir: Path) -> None:
    """--with-state: state inputs/outputs, a symbolic time axis into the LSTM, validated at
    every length and in chunks; inspect shows all of it."""
    out = tmp_path / "stream.onnx"
    result = run(
        "onnx", small_run, "-o", out, "--with-state", "--legacy", "--opset", "17",
        "--data-dir", mnist_dir,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = result.stdout
    for line in (
        "input     pixels: float32 [batch, time, 28]",
        "input     h_0: float32 [1, batch, 16]",
        "output    c_n: float32 [1, batch, 16]",
        "LSTM forward hidden 16, time axis time",
        "batch 64 x 100",
        "stream    1 digit in chunks 7+7+14 with the state carried vs all at once",
        "stream    64 digits in chunks 7+7+14",
    ):
        assert line in text, text
    shown = run("inspect", out).stdout
    for line in (
        "input     pixels: float32 [batch, time, 28]",
        "input     c_0: float32 [1, batch, 16]",
        "output    h_n: float32 [1, batch, 16]",
        "1 native node: LSTM forward hidden 16, time axis time",
        "seq_len: any",
        "state_inputs: h_0: float32 [1, batch, 16], c_0: float32 [1, batch, 16]",
    ):
        assert line in shown, shown
    ts = tmp_path / "stream.ts"
    result = run("torchscript", small_run, "-o", ts, "--with-state", "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.output
    assert "forward   (x, h_0=None, c_0=None) -> (logits, h_n, c_n)" in result.stdout
    info = json.loads(run("inspect", ts, "--json").stdout)
    assert [(t["name"], t["dims"]) for t in info["inputs"]] == [
        ("x", ["batch", "time", 28]),
        ("h_0", [1, "batch", 16]),
        ("c_0", [1, "batch", 16]),
    ]
    assert [t["name"] for t in info["outputs"]] == ["logits", "h_n", "c_n"]


def test_dynamic_flags_refusals(tmp_path: Path) -> None:
    bi = save_ckpt(tmp_path / "bi", hidden_size=4, bidirectional=True)
    assert_one_line_error(
        run("onnx", bi, "--with-state", "--no-validate"), "bidirectional LSTM cannot do"
    )
    proj = save_ckpt(tmp_path / "proj", hidden_size=4, proj_size=2)
    assert_one_line_error(
        run("onnx", proj, "--dynamic-seq", "--no-validate"), "ONNX LSTM operator has no projection"
    )
    assert sorted(p.name for p in proj.parent.iterdir()) == ["model.pt"]


@pytest.mark.skipif("__import__('torch').cuda.is_available()")
def test_inspect_cuda_without_cuda_is_one_line(onnx_json: dict[str, Any]) -> None:
    result = run("inspect", onnx_json["onnx"]["path"], "--device", "cuda")
    assert_one_line_error(result, "CUDA was asked for, but")


# -- bad input -------------------------------------------------------------------------------------
def _truncated(folder: Path) -> Path:
    good = save_ckpt(folder / "good", hidden_size=8, num_layers=1)
    path = folder / "model.pt"
    path.write_bytes(good.read_bytes()[:2000])
    return path


def _random_pickle(folder: Path) -> Path:
    path = folder / "model.pt"
    path.write_bytes(pickle.dumps({"weights": ModelConfig()}, protocol=2))
    return path


def _arbitrary_bytes(folder: Path) -> Path:
    path = folder / "model.pt"
    path.write_bytes(bytes(range(256)) * 8)
    return path


def _plain_state_dict(folder: Path) -> Path:
    import torch

    from lstm_export.model import build_model

    path = folder / "model.pt"
    torch.save(build_model(ModelConfig(hidden_size=8)).state_dict(), path)
    return path


def _other_architecture(folder: Path) -> Path:
    """Our format, but the weights belong to another architecture than the recorded config."""
    import torch

    path = save_ckpt(folder, hidden_size=8, num_layers=1)
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_config"]["hidden_size"] = 32
    torch.save(ckpt, path)
    return path


BAD_CHECKPOINTS = {
    "missing": (lambda folder: folder / "nope.pt", "not found"),
    "truncated": (_truncated, "is not a readable checkpoint"),
    "random pickle": (_random_pickle, "holds code"),
    "arbitrary bytes": (_arbitrary_bytes, "is not a readable checkpoint"),
    "plain state_dict": (_plain_state_dict, "is not an lstm-export checkpoint"),
    "other architecture": (_other_architecture, "checkpoint weights do not fit its model config"),
    "run folder without model.pt": (lambda folder: folder, "has no model.pt"),
}


@pytest.mark.parametrize("command", ["onnx", "torchscript"])
@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_one_line_and_writes_nothing(
    tmp_path: Path, case: str, command: str
) -> None:
    make, match = BAD_CHECKPOINTS[case]
    folder = tmp_path / "bad"
    folder.mkdir()
    path = make(folder)
    before = sorted(p.name for p in folder.rglob("*"))
    result = run(command, path, "--no-validate")
    assert_one_line_error(result, match)
    assert sorted(p.name for p in folder.rglob("*")) == before


@pytest.mark.parametrize(
    ("out", "match"),
    [
        ("file/model.onnx", "cannot create output folder"),  # parent is a regular file
        ("folder", "is a folder, expected a file"),
    ],
)
def test_unwritable_output(tmp_path: Path, small_run: Path, out: str, match: str) -> None:
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "folder").mkdir()
    result = run("onnx", small_run, "-o", tmp_path / out, "--no-validate")
    assert_one_line_error(result, match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_output_on_a_pseudo_file_system(small_run: Path) -> None:
    """Permission bits say nothing for root; /proc refuses new files: probed before exporting."""
    assert_one_line_error(
        run("onnx", small_run, "-o", "/proc/model.onnx", "--no-validate"), "/proc is not writable"
    )


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--opset", "5"], "opset 5 is not available with the dynamo exporter"),
        (["--legacy", "--opset", "21"], "opset 21 is not available with the legacy exporter"),
        (["--tolerance", "0"], "--tolerance must be > 0"),
    ],
)
def test_bad_flags(tmp_path: Path, args: list[str], match: str) -> None:
    ckpt = save_ckpt(tmp_path / "run", hidden_size=8, num_layers=1)
    assert_one_line_error(run("onnx", ckpt, *args), match)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.pt"]


def test_int8_without_mnist_fails_before_exporting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LSTM_EXPORT_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    from lstm_export.data import fetch
    from lstm_export.errors import DataError

    def offline(directory: Path) -> None:
        raise DataError("no network")

    monkeypatch.setattr(fetch, "fetch_into", offline)
    ckpt = save_ckpt(tmp_path / "run", hidden_size=8, num_layers=1)
    result = run("onnx", ckpt, "--int8", "--no-validate")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert lines[0].startswith("MNIST not found locally; fetching into ")  # the CLI says so
    assert lines[-1].startswith("error: ") and "no network" in lines[-1]
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.pt"]


def test_inspect_bad_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 not a protobuf" * 10)
    assert_one_line_error(run("inspect", garbage), "garbage.onnx")
    (tmp_path / "m.ts").write_bytes(b"junk")
    assert_one_line_error(run("inspect", tmp_path / "m.ts"), "is not a loadable TorchScript file")
    (tmp_path / "m.txt").write_text("hello")
    assert_one_line_error(run("inspect", tmp_path / "m.txt"), "suffix is not one of")
    assert_one_line_error(run("inspect", tmp_path / "missing.onnx"), "not found")


def test_export_cli_module_imports_nothing_heavy() -> None:
    """``lstm-export --help`` stays instant: the export CLI module imports no torch/onnx/ORT."""
    code = (
        "import sys, lstm_export.export.cli as c; "
        "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'onnxscript', 'numpy') if m in sys.modules]; "
        "print(', '.join(heavy)); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"imported at CLI import time: {done.stdout.strip()}"
