"""TorchScript export: round trips, dynamic batch, metadata, plain torch.jit.load, validation."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lstm_export.config import ModelConfig
from lstm_export.errors import ValidationError

# torch.jit.load / script are deprecated in favour of torch.export; the .ts format is the product.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def save_ckpt(folder: Path, *, seed: int = 0, **config: Any) -> Path:
    """An untrained (seeded) checkpoint of any architecture in ``folder/model.pt``."""
    import torch

    from lstm_export.checkpoint import make_checkpoint, save_checkpoint
    from lstm_export.model import build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig(**config)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.pt"
    save_checkpoint(make_checkpoint(model, metrics={"test_accuracy": 0.25}), path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> dict[str, Any]:
    from lstm_export.export.to_torchscript import export_torchscript

    out = {}
    configs = {
        "default": {},
        "bidirectional": {
            "hidden_size": 16,
            "bidirectional": True,
            "input_mean": 0.1,
            "input_std": 0.3,
        },
        "one_layer": {"hidden_size": 16, "num_layers": 1},
    }
    for name, config in configs.items():
        ckpt = save_ckpt(tmp_path_factory.mktemp(name), **config)
        out[name] = (ckpt, export_torchscript(ckpt, data_dir=mnist_dir))
    return out


@pytest.mark.parametrize("name", ["default", "bidirectional", "one_layer"])
def test_round_trip(exported: dict[str, Any], name: str) -> None:
    ckpt, report = exported[name]
    assert report.path == ckpt.with_suffix(".ts") and report.path.is_file()
    assert report.method.startswith("torch.jit.script + freeze")
    v = report.validation
    # every batch size at every length: a scripted LSTM takes any number of rows
    assert [(c.seq_len, c.batch) for c in v.checks] == [
        (t, n) for t in (1, 7, 28, 100) for n in ((1, 7, 512) if t == 28 else (1, 7, 64))
    ]
    assert all(c.max_abs_diff <= 1e-4 and c.agree == c.batch for c in v.checks)
    assert report.op_counts.get("aten::lstm") == 1
    assert not v.streams and not report.with_state


@pytest.mark.parametrize("name", ["default", "bidirectional"])
def test_dynamic_batch_and_portable_graph(exported: dict[str, Any], name: str) -> None:
    import torch

    from lstm_export.export.source import load_source

    ckpt, report = exported[name]
    module = torch.jit.load(str(report.path))
    model = load_source(ckpt).model
    graph = str(module.graph)
    assert "prim::device" in graph, "initial LSTM state must follow the input's device"
    assert "Device = prim::Constant" not in graph, "a device is hard-coded in the graph"
    rng = np.random.default_rng(0)
    for batch, rows in ((1, 28), (5, 28), (300, 28), (2, 1), (3, 45)):
        x = torch.from_numpy(rng.random((batch, rows, 28), dtype=np.float32))
        with torch.inference_mode():
            torch.testing.assert_close(module(x), model(x), atol=1e-4, rtol=0)


def test_metadata_through_the_runner(exported: dict[str, Any]) -> None:
    from lstm_export.fileio import file_digest
    from lstm_export.infer.registry import load_runner

    ckpt, report = exported["one_layer"]
    with load_runner(report.path, device="cpu") as runner:
        meta = runner.metadata
        assert runner.infer(np.zeros((2, 28, 28), np.float32)).shape == (2, 10)
    assert meta["class_names"] == "0,1,2,3,4,5,6,7,8,9"
    assert meta["source_checkpoint_sha256"] == file_digest(ckpt)
    assert float(meta["test_accuracy"]) == 0.25
    assert json.loads(meta["preprocessing"])["range"] == [0.0, 1.0]
    assert meta["lstm_export_version"] and meta["format"] == "torchscript"


def test_loads_without_lstm_export(exported: dict[str, Any], tmp_path: Path) -> None:
    """A fresh interpreter that never imports lstm_export loads and runs the file."""
    import torch

    _, report = exported["default"]
    x = np.random.default_rng(2).random((4, 28, 28), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    with torch.inference_mode():
        expected = torch.jit.load(str(report.path))(torch.from_numpy(x)).numpy()
    script = textwrap.dedent(
        f"""
        import sys, json, numpy as np, torch
        extra = {{"metadata.json": ""}}
        m = torch.jit.load({str(report.path)!r}, _extra_files=extra)
        y = m(torch.from_numpy(np.load({str(tmp_path / "x.npy")!r}))).detach().numpy()
        np.save({str(tmp_path / "y.npy")!r}, y)
        assert json.loads(extra["metadata.json"])["class_names"]
        assert not any(name.startswith("lstm_export") for name in sys.modules), "imported"
        """
    )
    subprocess.run([sys.executable, "-I", "-c", script], check=True, cwd=tmp_path, timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-6, rtol=0)


def test_perturbed_module_is_caught_and_nothing_written(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import copy

    import torch

    from lstm_export.export import to_torchscript

    real_build = to_torchscript.build_scripted

    def build_perturbed(model: Any) -> Any:
        drifted = copy.deepcopy(model)
        with torch.no_grad():
            drifted.lstm.weight_hh_l0.mul_(1.01)
        return real_build(drifted)

    monkeypatch.setattr(to_torchscript, "build_scripted", build_perturbed)
    ckpt = save_ckpt(tmp_path / "run", hidden_size=16, num_layers=1)
    with pytest.raises(ValidationError, match="TorchScript does not give eager PyTorch's answers"):
        to_torchscript.export_torchscript(ckpt, data_dir=mnist_dir)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.pt"]


@pytest.mark.cuda
def test_runs_on_cuda(exported: dict[str, Any]) -> None:
    """Nothing device-specific is baked in: the CPU-exported file runs on the GPU."""
    import torch

    from lstm_export.export.source import load_source

    ckpt, report = exported["default"]
    module = torch.jit.load(str(report.path), map_location="cuda")
    x = torch.from_numpy(np.random.default_rng(3).random((64, 28, 28), dtype=np.float32))
    with torch.inference_mode():
        got = module(x.cuda()).cpu()
        want = load_source(ckpt).model(x)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=0)
    assert torch.equal(got.argmax(1), want.argmax(1))
