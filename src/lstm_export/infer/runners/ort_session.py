"""Opening ONNX Runtime sessions on a requested device: one place for every caller.

``onnxruntime-gpu`` lists CUDAExecutionProvider even where CUDA cannot load, so the providers a
session really got (``session.get_providers()``) decide, never ``get_available_providers()``.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lstm_export.errors import DeviceError, ModelLoadError

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"


def nvidia_driver_present() -> bool:
    """Whether the NVIDIA driver library loads (without it no CUDA provider can)."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def preload_cuda_libraries(ort: Any) -> None:
    """Make the CUDA and cuDNN libraries from the nvidia-* pip wheels loadable (ORT >= 1.21)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # missing wheels: the session's providers will tell
        log.debug("onnxruntime.preload_dlls failed: %s", exc)


def cuda_diagnosis() -> str:
    """One line naming why ONNX Runtime could not use CUDA here."""
    if not nvidia_driver_present():
        return "the CUDA execution provider did not load: no NVIDIA driver (libcuda.so.1 missing)"
    for lib in ("libcudart.so.12", "libcudart.so.13"):
        try:
            ctypes.CDLL(lib)
            break
        except OSError:
            continue
    else:
        return "the CUDA execution provider did not load: no CUDA runtime (libcudart) found"
    try:
        import onnxruntime as ort

        if CUDA_EP not in ort.get_available_providers():
            return "the CUDA execution provider did not load: this onnxruntime has no CUDA build"
    except ImportError:
        pass
    return "the CUDA execution provider did not load (driver and runtime present; check cuDNN)"


def wants_gpu(device: str) -> bool:
    """``cuda`` always tries the GPU; ``auto`` only where an NVIDIA driver is present."""
    return device == "cuda" or (device == "auto" and nvidia_driver_present())


def open_session(
    model: Path | bytes,
    device: str,
    options: Any = None,
    *,
    cuda_options: Mapping[str, str] | None = None,
    tensorrt: bool = False,
) -> Any:
    """An ``InferenceSession`` on ``device`` (``cpu``, ``cuda`` or ``auto``).

    ``cuda`` raises DeviceError naming why CUDA is unusable; ``auto`` falls back to the CPU.
    ``options`` is an ``onnxruntime.SessionOptions`` (default: ORT's, quiet logging).
    """
    import onnxruntime as ort

    if options is None:
        options = ort.SessionOptions()
    options.log_severity_level = 3  # cuda_diagnosis() replaces ORT's provider warnings
    if tensorrt and device == "cpu":
        raise DeviceError("the TensorRT execution provider needs --device cuda (or auto)")
    gpu = wants_gpu(device)
    if device == "cuda" and not nvidia_driver_present():
        raise DeviceError(f"--device cuda asked, but {cuda_diagnosis()}")
    providers: list[Any] = [CPU_EP]
    if gpu:
        preload_cuda_libraries(ort)
        providers = [(CUDA_EP, dict(cuda_options or {})), CPU_EP]
        if tensorrt:
            providers.insert(0, TRT_EP)
        ort.set_default_logger_severity(4)  # a provider that fails to load logs errors
    what = model if isinstance(model, bytes) else str(model)
    try:
        session = ort.InferenceSession(what, options, providers=providers)
    except Exception as exc:  # InvalidProtobuf, NoSuchFile, Fail...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        name = "the model" if isinstance(model, bytes) else str(model)
        raise ModelLoadError(f"{name} cannot be loaded by ONNX Runtime: {first}") from exc
    finally:
        if gpu:
            ort.set_default_logger_severity(3)
    got = session.get_providers()
    if device == "cuda" and CUDA_EP not in got and TRT_EP not in got:
        raise DeviceError(f"--device cuda asked, but {cuda_diagnosis()}")
    if tensorrt and device == "cuda" and TRT_EP not in got:
        raise DeviceError("TensorRT execution provider asked, but it did not load")
    return session
