"""The OpenVINO runner: the exported ONNX file read as is, its options, bf16, IR, missing package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _infer_helpers import exported_models
from lstm_export.errors import ConfigError, DeviceError, ModelLoadError
from lstm_export.infer.registry import load_runner, make_runner
from lstm_export.infer.runners import openvino_runner
from lstm_export.infer.runners.openvino_runner import OpenVinoOptions, bf16_support

if openvino_runner.openvino_problem() is not None:
    pytest.skip("the openvino extra is not installed", allow_module_level=True)

N_IMAGES = 1000


@pytest.fixture(scope="module")
def onnx_file(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_models(trained_checkpoint, tmp_path_factory)["onnxruntime"]


@pytest.fixture(scope="module")
def reference(onnx_file: Path, mnist_test: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """ONNX Runtime's logits on the same file: what OpenVINO fp32 must give."""
    with load_runner(onnx_file, "onnxruntime", device="cpu") as runner:
        return runner.infer(mnist_test[0][:N_IMAGES])


def test_reads_the_exported_onnx_file_as_is(
    onnx_file: Path, mnist_test: tuple[np.ndarray, np.ndarray], reference: np.ndarray
) -> None:
    images, _ = mnist_test
    with load_runner(onnx_file, "openvino", device="cpu", threads=1) as runner:
        assert runner.name == "openvino" and runner.device == "cpu"
        logits = runner.infer(images[:N_IMAGES])
        assert logits.dtype == np.float32 and logits.shape == (N_IMAGES, 10)
        np.testing.assert_allclose(logits, reference, atol=1e-4)
        assert runner.metadata["class_names"] == ",".join(str(d) for d in range(10))
        assert runner.precision_used == "f32"  # type: ignore[attr-defined]
        assert "fp32" in runner.description


@pytest.mark.parametrize(
    "options",
    [
        {"hint": "throughput", "threads": 2},  # two streams: each request runs a slice
        {"hint": "throughput", "threads": 2, "static_shapes": False},
        {"hint": "latency", "static_shapes": False},
    ],
)
def test_tuning_options_keep_the_answers(
    options: dict[str, object],
    onnx_file: Path,
    mnist_test: tuple[np.ndarray, np.ndarray],
    reference: np.ndarray,
) -> None:
    """Streams, slices and dynamic shapes change speed, never the logits."""
    images, _ = mnist_test
    with load_runner(onnx_file, "openvino", device="cpu", **options) as runner:
        for rows in (slice(0, 1), slice(3, 10), slice(0, 9), slice(0, 64)):
            np.testing.assert_allclose(runner.infer(images[rows]), reference[rows], atol=1e-4)


def test_throughput_hint_runs_one_slice_per_stream(onnx_file: Path) -> None:
    with load_runner(onnx_file, "openvino", device="cpu", hint="throughput", threads=2) as runner:
        assert runner.streams_used == 2  # type: ignore[attr-defined]
        assert runner._requests >= 2  # type: ignore[attr-defined]
        x = np.random.default_rng(0).random((7, 28, 28), dtype=np.float32)
        whole = runner.infer(x)
        assert whole.shape == (7, 10)
        # the slices (4 and 3 rows) ran on models compiled for their own static shapes
        assert {(4, 28, 28), (3, 28, 28)} <= set(runner._compiled)  # type: ignore[attr-defined]


def test_bf16_is_close_and_says_whether_it_is_native(
    onnx_file: Path, mnist_test: tuple[np.ndarray, np.ndarray], reference: np.ndarray
) -> None:
    images, _ = mnist_test
    native, how = bf16_support()
    with load_runner(onnx_file, "openvino", device="cpu", precision="bf16") as runner:
        logits = runner.infer(images[:N_IMAGES])
        assert runner.bf16_note == how  # type: ignore[attr-defined]
        if native:
            assert runner.precision_used == "bf16"  # type: ignore[attr-defined]
    agreement = (logits.argmax(1) == reference.argmax(1)).mean()
    assert agreement >= 0.99 and np.abs(logits - reference).max() < 0.5


def test_bf16_support_reads_the_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openvino_runner, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert bf16_support() == (True, "native (avx512_bf16)")
    monkeypatch.setattr(openvino_runner, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert bf16_support()[0]
    monkeypatch.setattr(openvino_runner, "cpu_flags", lambda: {"avx2", "avx512f"})
    native, how = bf16_support()
    assert not native and how.startswith("emulated")


def test_ir_keeps_the_metadata(onnx_file: Path, tmp_path: Path, reference: np.ndarray) -> None:
    xml = openvino_runner.save_ir(onnx_file, tmp_path / "model.xml")
    assert xml.with_suffix(".bin").is_file()
    with load_runner(xml, device="cpu") as runner:  # .xml -> openvino by its suffix
        assert runner.name == "openvino"
        assert runner.metadata["class_names"] == ",".join(str(d) for d in range(10))


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"precision": "fp8"}, "unknown precision"),
        ({"hint": "fastest"}, "unknown hint"),
        ({"threads": 0}, "threads"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        OpenVinoOptions(**options)  # type: ignore[arg-type]


def test_cuda_is_a_device_error_and_auto_says_cpu(onnx_file: Path) -> None:
    with pytest.raises(DeviceError, match=r"^CUDA was asked for, but the openvino backend"):
        load_runner(onnx_file, "openvino", device="cuda")
    with load_runner(onnx_file, "openvino", device="auto") as runner:
        assert runner.device == "cpu" and runner.device_note.startswith("auto: CPU, since ")


def test_missing_package_is_one_line(onnx_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        openvino_runner, "openvino_problem", lambda: "openvino is not installed (test)"
    )
    runner = make_runner(onnx_file, "openvino", device="cpu")  # building needs no openvino
    with pytest.raises(ModelLoadError, match="needs the openvino package") as info:
        runner.load()
    assert "\n" not in str(info.value)


def test_garbage_files_are_model_load_errors(tmp_path: Path) -> None:
    for name in ("garbage.onnx", "garbage.xml"):
        path = tmp_path / name
        path.write_bytes(b"\x00not a model at all" * 10)
        with pytest.raises(ModelLoadError) as info:
            load_runner(path, "openvino", device="cpu")
        assert "\n" not in str(info.value)
