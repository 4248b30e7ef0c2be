"""Streaming: files exported ``--with-state`` fed in chunks with the state carried, any length.

28 rows fed as 7 + 7 + 14, each chunk starting from the state the previous one returned, give
the logits, h_n and c_n of all 28 at once, for ONNX Runtime, TorchScript and eager PyTorch, at
batch 1 and larger; ``infer`` (and ``lstm-export infer``) still works on stateful files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from lstm_export.errors import InferenceError, InputError

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

CONFIG = {"hidden_size": 8, "num_layers": 2, "input_mean": 0.13, "input_std": 0.3}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One untrained 2-layer checkpoint and its stateful / stateless exports (not validated
    here: tests/test_export_matrix.py runs the exports' own validation)."""
    import torch

    from lstm_export.checkpoint import make_checkpoint, save_checkpoint
    from lstm_export.config import ModelConfig
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.export.to_torchscript import export_torchscript
    from lstm_export.model import build_model

    folder = tmp_path_factory.mktemp("stream")
    torch.manual_seed(0)
    ckpt = folder / "model.pt"
    save_checkpoint(make_checkpoint(build_model(ModelConfig(**CONFIG)).eval()), ckpt)
    return {
        "eager": ckpt,
        "onnxruntime": export_onnx(
            ckpt, folder / "state.onnx", legacy=True, opset=17, with_state=True, validate=False
        ).path,
        "torchscript": export_torchscript(
            ckpt, folder / "state.ts", with_state=True, validate=False
        ).path,
        "fixed": export_onnx(
            ckpt, folder / "fixed.onnx", legacy=True, opset=17, validate=False
        ).path,
    }


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript", "eager"])
def test_chunks_with_the_state_carried_equal_all_at_once(
    files: dict[str, Path], mnist_test: tuple[np.ndarray, np.ndarray], backend: str, batch: int
) -> None:
    from lstm_export.infer.registry import load_runner

    x = mnist_test[0][:batch]
    with load_runner(files["eager"], device="cpu") as eager:
        want_logits, want = eager.step(x)
    with load_runner(files[backend], device="cpu") as runner:
        assert runner.streams
        logits, state = runner.step(x)
        outs: list = []
        for chunk in (x[:, :7], x[:, 7:14], x[:, 14:]):
            outs.append(runner.step(chunk, outs[-1][1] if outs else None))
        stateless = runner.infer(x)
        prefix, _ = runner.step(x[:, :7])
    assert len(outs) == 3 and state.h.shape == (2, batch, 8) and state.c.shape == (2, batch, 8)
    end_logits, end = outs[-1]
    for got, ref in ((end_logits, logits), (end.h, state.h), (end.c, state.c)):
        np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)
    for got, ref in ((logits, want_logits), (state.h, want.h), (state.c, want.c)):
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(stateless, logits, atol=1e-6, rtol=0)  # zeros: stateless answer
    np.testing.assert_allclose(outs[0][0], prefix, atol=1e-6, rtol=0)  # logits of the prefix


def test_state_from_one_backend_continues_in_another(
    files: dict[str, Path], mnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    """The state is plain float32 arrays: ONNX Runtime can carry on where TorchScript stopped."""
    from lstm_export.infer.registry import load_runner

    x = mnist_test[0][10:14]
    with load_runner(files["torchscript"], device="cpu") as ts:
        _, mid = ts.step(x[:, :10])
    with load_runner(files["onnxruntime"], device="cpu") as ort:
        end, _ = ort.step(x[:, 10:], mid)
        whole, _ = ort.step(x)
    np.testing.assert_allclose(end, whole, atol=1e-5, rtol=0)


def test_any_length_and_taller_images(files: dict[str, Path]) -> None:
    from lstm_export.infer.registry import load_runner

    rng = np.random.default_rng(0)
    with load_runner(files["eager"], device="cpu") as eager:
        for name in ("onnxruntime", "torchscript"):
            with load_runner(files[name], device="cpu") as runner:
                for rows in (1, 3, 28, 57):
                    x = rng.random((2, rows, 28), dtype=np.float32)
                    np.testing.assert_allclose(runner.infer(x), eager.infer(x), atol=1e-5, rtol=0)


def test_fixed_length_file_refuses_other_lengths(files: dict[str, Path]) -> None:
    """Without --dynamic-seq the file takes 28 rows: another length is one clear error."""
    from lstm_export.infer.registry import load_runner

    with load_runner(files["fixed"], device="cpu") as runner:
        assert runner.infer(np.zeros((2, 28, 28), np.float32)).shape == (2, 10)
        assert not runner.streams
        with pytest.raises(InferenceError, match=r"input of shape \(2, 7, 28\)"):
            runner.infer(np.zeros((2, 7, 28), np.float32))
        with pytest.raises(
            InferenceError, match="needs a file exported with state inputs and outputs"
        ):
            runner.step(np.zeros((1, 28, 28), np.float32))


@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript", "eager"])
def test_a_state_that_does_not_fit_is_an_input_error(files: dict[str, Path], backend: str) -> None:
    from lstm_export.infer.base import LstmState
    from lstm_export.infer.registry import load_runner

    x = np.zeros((3, 5, 28), np.float32)
    with load_runner(files[backend], device="cpu") as runner:
        _, state = runner.step(x)
        with pytest.raises(InputError, match=r"an LSTM state for 2 image\(s\)"):
            runner.step(x[:2], state)
        with pytest.raises(InputError):
            runner.step(x, LstmState(state.h[0], state.c))
        with pytest.raises(InputError, match=r"\(N, T, 28\)"):
            runner.step(np.zeros((3, 0, 28), np.float32))


def test_stateful_torchscript_loads_with_plain_torch(files: dict[str, Path]) -> None:
    """``module(x)`` (zeros) and ``module(x, h, c)``, without lstm_export."""
    import torch

    module = torch.jit.load(str(files["torchscript"]))
    x = torch.rand(2, 28, 28)
    with torch.inference_mode():
        logits, h, c = module(x)
        first = module(x[:, :20])
        logits2, h2, c2 = module(x[:, 20:], first[1], first[2])
    torch.testing.assert_close(logits2, logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(h2, h, atol=1e-6, rtol=0)
    torch.testing.assert_close(c2, c, atol=1e-6, rtol=0)


def test_infer_command_on_stateful_files(
    files: dict[str, Path], mnist_test: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """``lstm-export infer`` feeds zeros for the state and reads the logits: same answers."""
    from PIL import Image

    from lstm_export.cli import app

    images = mnist_test[0][:6]
    folder = tmp_path / "digits"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray((image * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    rows: dict[str, Any] = {}
    for name in ("eager", "onnxruntime", "torchscript"):
        out = tmp_path / f"{name}.jsonl"
        result = CliRunner().invoke(
            app, ["infer", str(files[name]), str(folder), "-o", str(out), "--device", "cpu"]
        )
        assert result.exit_code == 0, result.output
        rows[name] = [json.loads(line) for line in out.read_text().splitlines()]
    predictions = {n: [(r["path"], r["prediction"]) for r in rows[n]] for n in rows}
    assert predictions["onnxruntime"] == predictions["eager"] == predictions["torchscript"]
    assert len(predictions["eager"]) == 6
