"""The Runner contract, checked the same way for every backend in the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _infer_helpers import exported_models
from lstm_export.devices import Device
from lstm_export.errors import (
    ConfigError,
    DeviceError,
    InferenceError,
    InputError,
    ModelLoadError,
)
from lstm_export.infer.base import Runner
from lstm_export.infer.registry import RUNNERS, Backend, backend_for, load_runner, make_runner

N_IMAGES = 2000


@pytest.fixture(scope="session")
def model_files(
    trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    return exported_models(trained_checkpoint, tmp_path_factory)


@pytest.fixture(scope="session")
def reference(
    model_files: dict[str, Path], mnist_test: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Eager PyTorch logits (N, 10) on the first test images: what every backend must give."""
    images, _ = mnist_test
    with load_runner(model_files["eager"], device="cpu") as runner:
        return runner.infer(images[:N_IMAGES])


def test_every_backend_has_a_model_file(model_files: dict[str, Path]) -> None:
    assert set(RUNNERS) == set(model_files), "a new backend needs a model file in the contract test"
    assert {b.value for b in Backend} - {"auto"} == set(RUNNERS)


@pytest.mark.parametrize("backend", sorted(RUNNERS))
def test_runner_contract(
    backend: str,
    model_files: dict[str, Path],
    mnist_test: tuple[np.ndarray, np.ndarray],
    reference: np.ndarray,
) -> None:
    """Same predictions as eager PyTorch on real MNIST digits, through the whole contract."""
    images, labels = mnist_test
    path = model_files[backend]
    assert backend_for(path) == backend
    runner = make_runner(path, device="cpu", threads=1)
    assert isinstance(runner, RUNNERS[backend]) and runner.name == backend
    assert runner.device is None and "not loaded" in runner.description
    with runner as loaded:
        assert loaded is runner and runner.device == "cpu"
        assert runner.load() is runner  # idempotent
        logits = runner.infer(images[:N_IMAGES])
        assert logits.dtype == np.float32 and logits.shape == (N_IMAGES, 10)
        np.testing.assert_allclose(logits, reference, atol=1e-3)
        assert (logits.argmax(1) == reference.argmax(1)).all()
        accuracy = float((logits.argmax(1) == labels[:N_IMAGES]).mean())
        assert accuracy > 0.3  # far above chance: the quick fixture model is trained, if briefly
        # Batch size does not change answers, and one image works alone.
        np.testing.assert_allclose(runner.infer(images[:1]), reference[:1], atol=1e-3)
        odd = runner.infer(images[3:10])
        np.testing.assert_allclose(odd, reference[3:10], atol=1e-3)
        # float64 or non-contiguous input is normalised, not rejected.
        strided = np.asfortranarray(images[:5].astype(np.float64))
        np.testing.assert_allclose(runner.infer(strided), reference[:5], atol=1e-3)
        assert runner.metadata.get("class_names") == ",".join(str(d) for d in range(10))
        assert backend in runner.description
    runner.close()  # idempotent after the with block


@pytest.mark.parametrize("backend", sorted(RUNNERS))
@pytest.mark.parametrize(
    "bad", [np.zeros((4, 28)), np.zeros((0, 28, 28)), np.zeros((2, 28, 27)), [[0.0] * 28] * 28]
)
def test_runner_rejects_bad_input(backend: str, bad: object, model_files: dict[str, Path]) -> None:
    with load_runner(model_files[backend], device="cpu") as runner, pytest.raises(InputError):
        runner.infer(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", sorted(RUNNERS))
def test_missing_and_foreign_files_raise_model_load_errors(backend: str, tmp_path: Path) -> None:
    suffix = RUNNERS[backend].suffixes[0]
    with pytest.raises(ModelLoadError, match="not found"):
        load_runner(tmp_path / f"missing{suffix}", device="cpu")
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"\x00not a model at all" * 10)
    with pytest.raises(Exception) as info:
        load_runner(garbage, device="cpu")
    from lstm_export.errors import LstmExportError

    assert isinstance(info.value, LstmExportError), f"raw {type(info.value).__name__} escaped"
    assert "\n" not in str(info.value)


def test_unknown_suffix_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"\.onnx"):
        backend_for(tmp_path / "model.h5")


def _cuda_usable() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda_usable(), reason="this machine has CUDA; the error path cannot be seen")
@pytest.mark.parametrize("backend", sorted(RUNNERS))
def test_device_cuda_without_cuda_is_one_clear_line(
    backend: str, model_files: dict[str, Path]
) -> None:
    with pytest.raises(DeviceError) as info:
        load_runner(model_files[backend], device="cuda")
    message = str(info.value)
    assert message.startswith("CUDA was asked for, but")
    assert "\n" not in message
    assert any(w in message for w in ("driver", "CUDA", "cuDNN")), message


@pytest.mark.skipif(_cuda_usable(), reason="this machine has CUDA")
@pytest.mark.parametrize("backend", sorted(RUNNERS))
def test_device_auto_says_it_fell_back_to_cpu(backend: str, model_files: dict[str, Path]) -> None:
    with load_runner(model_files[backend], device=Device.auto) as runner:
        assert runner.device == "cpu"
        assert runner.device_note.startswith("auto: CPU, since ")


def test_onnxruntime_session_options_are_applied(model_files: dict[str, Path]) -> None:
    with load_runner(model_files["onnxruntime"], device="cpu", threads=1, spinning=False) as runner:
        assert isinstance(runner, Runner)
        assert runner.providers == ["CPUExecutionProvider"]  # type: ignore[attr-defined]
        assert runner.planned_options(2) == {"threads": 2, "spinning": False}


@pytest.mark.cuda
@pytest.mark.parametrize("backend", sorted(set(RUNNERS) - {"openvino"}))  # OpenVINO: CPU only
def test_runner_on_cuda_matches_eager_cpu(
    backend: str,
    model_files: dict[str, Path],
    mnist_test: tuple[np.ndarray, np.ndarray],
    reference: np.ndarray,
) -> None:
    images, _ = mnist_test
    with load_runner(model_files[backend], device="cuda") as runner:
        assert runner.device == "cuda"
        logits = runner.infer(images[:N_IMAGES])
    np.testing.assert_allclose(logits, reference, atol=1e-3)
    assert (logits.argmax(1) == reference.argmax(1)).mean() > 0.999


def test_onnxruntime_cpu_tuning_keeps_the_answers(model_files: dict[str, Path]) -> None:
    """Micro-batching and the serial small-batch session change speed, never the logits."""
    rng = np.random.default_rng(0)
    x = rng.random((9, 28, 28), dtype=np.float32)
    with load_runner(model_files["onnxruntime"], device="cpu", threads=2) as plain:
        expected = plain.infer(x)
        expected_one = plain.infer(x[:1])
    options = {"threads": 2, "micro_batch": 4, "serial_up_to": 1}
    with load_runner(model_files["onnxruntime"], device="cpu", **options) as tuned:
        assert tuned._serial is not None  # type: ignore[attr-defined]
        np.testing.assert_allclose(tuned.infer(x), expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(tuned.infer(x[:1]), expected_one, rtol=0, atol=1e-6)
        assert tuned.infer(x).shape == (9, 10)


@pytest.mark.parametrize("backend", sorted(RUNNERS))
def test_unknown_option_is_an_error_not_ignored(backend: str, model_files: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"has no option 'thread'.*threads"):
        make_runner(model_files[backend], device="cpu", thread=2)


@pytest.mark.parametrize("backend", sorted(RUNNERS))
def test_bad_option_value_is_an_error(backend: str, model_files: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="threads"):
        make_runner(model_files[backend], device="cpu", threads=0)


@pytest.mark.parametrize("backend", ["eager", "torchscript"])
def test_torch_threads_are_restored_on_close(backend: str, model_files: dict[str, Path]) -> None:
    import torch

    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    with load_runner(model_files[backend], device="cpu", threads=wanted):
        assert torch.get_num_threads() == wanted
    assert torch.get_num_threads() == before


def test_failure_while_running_is_an_inference_error(
    model_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend's own exception at run time is InferenceError, not a load error."""
    with load_runner(model_files["onnxruntime"], device="cpu") as runner:

        def broken(prepared: object) -> object:
            raise RuntimeError("kernel exploded\nsecond line")

        monkeypatch.setattr(runner, "run_prepared", broken)
        with pytest.raises(
            InferenceError, match=r"failed on input of shape \(2, 28, 28\): kernel exploded$"
        ):
            runner.infer(np.zeros((2, 28, 28), np.float32))


def test_runner_phases_are_the_abstract_contract() -> None:
    """A backend implements load, prepare, run_prepared, fetch and close; nothing else."""
    assert Runner.__abstractmethods__ == {"_load", "prepare", "run_prepared", "fetch", "_close"}


def test_infer_all_batches(model_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(1).random((25, 28, 28), dtype=np.float32)
    sizes: list[int] = []
    with load_runner(model_files["onnxruntime"], device="cpu") as runner:
        whole, infer = runner.infer(x), runner.infer
        monkeypatch.setattr(runner, "infer", lambda batch: sizes.append(len(batch)) or infer(batch))
        parts = runner.infer_all(x, batch_size=10)
    np.testing.assert_allclose(parts, whole, atol=1e-6)
    assert sizes == [10, 10, 5]


def test_onnxruntime_sliced_batches_keep_the_answers(model_files: dict[str, Path]) -> None:
    """A batch split across single-threaded sessions gives the one-session logits, in order."""
    x = np.random.default_rng(2).random((37, 28, 28), dtype=np.float32)
    with load_runner(model_files["onnxruntime"], device="cpu", threads=2) as plain:
        expected = plain.infer(x)
    with load_runner(model_files["onnxruntime"], device="cpu", threads=2, sliced=True) as sliced:
        assert len(sliced._slices) == 2  # type: ignore[attr-defined]
        np.testing.assert_allclose(sliced.infer(x), expected, rtol=0, atol=1e-5)
        np.testing.assert_allclose(sliced.infer(x[:5]), expected[:5], rtol=0, atol=1e-5)
    assert sliced._pool is None  # type: ignore[attr-defined]
