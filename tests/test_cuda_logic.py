"""The CUDA code paths' logic, checked on any machine with fakes; the real runs are ``cuda``-marked.

benchmarks/gpu_check.sh runs this file first, then the ``cuda``-marked tests on a GPU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _model_helpers import tiny_checkpoint
from lstm_export import ort_session
from lstm_export.infer.runners.ort import OnnxRuntimeRunner


# -- CUDA graphs: one captured graph (buffers, binding, graph id) per input shape -----------------
class _FakeOrtValue:
    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    @classmethod
    def ortvalue_from_numpy(cls, x: np.ndarray, device: str, index: int) -> _FakeOrtValue:
        return cls(np.array(x))

    @classmethod
    def ortvalue_from_shape_and_type(
        cls, shape: tuple[int, ...], dtype: Any, device: str, index: int
    ) -> _FakeOrtValue:
        return cls(np.zeros(shape, dtype))

    def update_inplace(self, x: np.ndarray) -> None:
        assert x.shape == self.array.shape, "a captured graph's buffer cannot change shape"
        self.array[...] = x

    def numpy(self) -> np.ndarray:
        return self.array


class _FakeRunOptions:
    def __init__(self) -> None:
        self.entries: dict[str, str] = {}

    def add_run_config_entry(self, key: str, value: str) -> None:
        self.entries[key] = value


class _FakeBinding:
    def bind_ortvalue_input(self, name: str, value: _FakeOrtValue) -> None:
        self.input = value

    def bind_ortvalue_output(self, name: str, value: _FakeOrtValue) -> None:
        self.output = value


class _FakeOutput:
    shape = ("batch", 10)


class _FakeSession:
    """Replays 'graphs' keyed by graph id; logits = sum of each row's pixels in column 0."""

    def __init__(self) -> None:
        self.replays: list[tuple[str, tuple[int, ...]]] = []

    def io_binding(self) -> _FakeBinding:
        return _FakeBinding()

    def get_outputs(self) -> list[_FakeOutput]:
        return [_FakeOutput()]

    def run_with_iobinding(self, binding: _FakeBinding, run_options: _FakeRunOptions) -> None:
        graph = run_options.entries["gpu_graph_id"]
        self.replays.append((graph, binding.input.array.shape))
        binding.output.array[:, 0] = binding.input.array.sum(axis=(1, 2))


class _FakeOrt:
    OrtValue = _FakeOrtValue
    RunOptions = _FakeRunOptions


def _fake_graph_runner(tmp_path: Path) -> tuple[OnnxRuntimeRunner, _FakeSession]:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"")
    runner = OnnxRuntimeRunner(path, "cuda", cuda_graph=True)
    session = _FakeSession()
    runner.session, runner._ort, runner.device = session, _FakeOrt, "cuda"
    runner.input_name, runner.output_name = "pixels", "logits"
    runner._graphs, runner._serial, runner._loaded, runner._bound = {}, None, True, True
    runner._state_inputs, runner._slices, runner._pool = [], [], None
    return runner, session


def test_cuda_graph_per_shape_keeps_buffers_and_ids(tmp_path: Path) -> None:
    """Shapes A, B, A: B gets a graph of its own, and A's graph replays A's own buffers."""
    runner, session = _fake_graph_runner(tmp_path)
    rng = np.random.default_rng(0)
    a1, b, a2 = (rng.random((n, 28, 28), dtype=np.float32) for n in (4, 9, 4))
    for x in (a1, b, a2):
        np.testing.assert_allclose(runner.infer(x)[:, 0], x.sum(axis=(1, 2)), rtol=1e-5)
    assert session.replays == [("1", (4, 28, 28)), ("2", (9, 28, 28)), ("1", (4, 28, 28))]
    assert len(runner._graphs) == 2


# -- stdout stays machine-readable while CUDA is probed -------------------------------------------
def test_prints_while_probing_cuda_go_to_the_log(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """onnxruntime.preload_dlls prints (never raises) and ORT prints an 'EP Error' block when a
    provider fails: neither may reach stdout, where CSV rows and JSON go."""
    import onnxruntime as ort

    from lstm_export.export.to_onnx import export_onnx

    onnx_path = export_onnx(tiny_checkpoint(tmp_path), validate=False).path
    real_session = ort.InferenceSession

    def printing_preload(*args: Any, **kwargs: Any) -> None:
        print("Failed to load libcudnn.so.9: not found")

    def printing_session(*args: Any, **kwargs: Any) -> Any:
        print("EP Error: CUDA failed. Falling back to ['CPUExecutionProvider'] and retrying.")
        return real_session(args[0], args[1], providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "preload_dlls", printing_preload)
    monkeypatch.setattr(ort, "InferenceSession", printing_session)
    monkeypatch.setattr(ort_session, "nvidia_driver_present", lambda: True)
    caplog.set_level(logging.DEBUG, logger="lstm_export.ort_session")
    session = ort_session.open_session(onnx_path, "auto")
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert capsys.readouterr().out == ""
    assert "libcudnn.so.9" in caplog.text and "EP Error" in caplog.text


# -- what is wrong with CUDA, most basic cause first -------------------------------------------------
def test_diagnosis_names_a_cpu_only_onnxruntime_before_the_driver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ort_session, "ort_has_cuda_build", lambda: False)
    monkeypatch.setattr(ort_session, "nvidia_driver_present", lambda: False)
    assert "has no CUDA build" in ort_session.cuda_diagnosis()


def test_diagnosis_names_a_cuda_major_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    monkeypatch.setattr(ort_session, "ort_has_cuda_build", lambda: True)
    monkeypatch.setattr(ort_session, "nvidia_driver_present", lambda: True)
    monkeypatch.setattr(ort, "cuda_version", "13.0", raising=False)
    monkeypatch.setattr(ort_session, "preload_cuda_libraries", lambda _ort: None)
    monkeypatch.setattr(ort_session, "library_loads", lambda name: name != "libcudart.so.13")
    text = ort_session.cuda_diagnosis()
    assert "built for CUDA 13" in text and "libcudart.so.13" in text and "torch" in text
    monkeypatch.setattr(ort_session, "library_loads", lambda name: True)
    assert ort_session.cuda_pairing_problem() is None


# -- true fp32 by default on CUDA (TF32 off), restored afterwards ---------------------------------
def test_ort_runner_asks_cuda_for_true_fp32_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lstm_export.infer.runners import ort as ort_runner

    seen: list[dict[str, str]] = []

    def capture(*args: Any, cuda_options: dict[str, str], **kwargs: Any) -> Any:
        seen.append(dict(cuda_options))
        raise RuntimeError("stop here")

    monkeypatch.setattr(ort_runner, "open_session", capture)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"")
    for options in ({}, {"tf32": True}, {"cuda_graph": True}):
        with pytest.raises(RuntimeError, match="stop here"):
            OnnxRuntimeRunner(path, "cuda", **options).load()
    assert seen == [
        {"use_tf32": "0"},
        {"use_tf32": "1"},
        {"use_tf32": "0", "enable_cuda_graph": "1"},
    ]


@pytest.mark.parametrize("tf32", [False, True])
def test_torch_runner_sets_tf32_on_cuda_and_restores_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tf32: bool
) -> None:
    import torch

    from lstm_export.infer.runners import torch_runner

    monkeypatch.setattr(torch_runner, "resolve_torch_device", lambda device: ("cuda", ""))
    monkeypatch.setattr(torch_runner.EagerRunner, "_load_module", lambda self: object())
    monkeypatch.setattr(torch_runner.EagerRunner, "_probe", lambda self: None)  # no GPU to run on
    backends = torch.backends
    saved = (backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32)
    backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = True
    path = tmp_path / "m.pt"
    path.write_bytes(b"")
    try:
        with torch_runner.EagerRunner(path, "cuda", tf32=tf32):
            assert backends.cudnn.allow_tf32 is tf32
            assert backends.cuda.matmul.allow_tf32 is tf32
        assert backends.cudnn.allow_tf32 is True and backends.cuda.matmul.allow_tf32 is True
    finally:
        backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = saved


# -- the real thing, on a GPU -----------------------------------------------------------------------
@pytest.mark.cuda
def test_cuda_graph_runner_matches_plain_cuda_across_shapes(tmp_path: Path) -> None:
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.infer.registry import load_runner

    onnx_path = export_onnx(tiny_checkpoint(tmp_path), validate=False).path
    rng = np.random.default_rng(1)
    shapes = [rng.random((n, 28, 28), dtype=np.float32) for n in (8, 33, 8, 1, 33)]
    with (
        load_runner(onnx_path, device="cuda") as plain,
        load_runner(onnx_path, device="cuda", cuda_graph=True) as graphs,
    ):
        for x in shapes:
            np.testing.assert_allclose(graphs.infer(x), plain.infer(x), rtol=0, atol=1e-5)


@pytest.mark.cuda
def test_torchscript_on_cuda_does_not_compact_weights_per_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """cuDNN warns (and copies the weights each call) when an LSTM's weights are not one chunk."""
    from lstm_export.export.to_torchscript import export_torchscript
    from lstm_export.infer.registry import load_runner

    ts_path = export_torchscript(tiny_checkpoint(tmp_path), validate=False).path
    with caplog.at_level(logging.WARNING), load_runner(ts_path, device="cuda"):
        assert "compacts the LSTM weights" not in caplog.text


@pytest.mark.cuda
def test_stdout_stays_machine_readable_on_cuda(tmp_path: Path) -> None:
    """What ONNX Runtime prints while it loads the CUDA provider (preload_dlls, "EP Error") must not
    reach stdout: ``inspect --json`` parses as JSON and ``infer`` without ``-o`` is pure CSV."""
    import csv
    import io
    import json
    import os
    import subprocess
    import sys

    from PIL import Image

    from lstm_export.export.to_onnx import export_onnx

    onnx_path = export_onnx(tiny_checkpoint(tmp_path), validate=False).path
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(3):
        Image.new("L", (28, 28), color=i * 60).save(folder / f"{i}.png")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), *sys.path])}

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "lstm_export", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    info = json.loads(cli("inspect", str(onnx_path), "--device", "cuda", "--json"))
    assert info
    rows = list(
        csv.DictReader(io.StringIO(cli("infer", str(onnx_path), str(folder), "--device", "cuda")))
    )
    assert sorted(r["path"] for r in rows) == ["0.png", "1.png", "2.png"]
    assert all(r["error"] == "" and r["prediction"].isdigit() for r in rows)


def test_gpu_check_script_is_valid_bash() -> None:
    import subprocess

    script = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
