"""Opening ONNX Runtime sessions on a requested device, one place for every caller: what ONNX
Runtime prints while probing CUDA is logged, so that standard output stays machine-readable."""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from lstm_export.devices import Device, library_loads, nvidia_driver_present
from lstm_export.errors import DeviceError, ModelLoadError

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"

T = TypeVar("T")


def quietly(what: str, call: Callable[[], T]) -> T:
    """Run ``call()`` with what Python code prints inside it (stdout, stderr) logged at debug
    level instead of printed."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            return call()
    finally:
        for line in out.getvalue().splitlines():
            if line.strip():
                log.debug("%s: %s", what, line.strip())


def preload_cuda_libraries(ort: Any) -> None:
    """Make the CUDA and cuDNN libraries of the nvidia-* pip wheels loadable; what
    ``preload_dlls`` prints about missing ones is logged."""
    try:
        quietly("onnxruntime.preload_dlls", ort.preload_dlls)
    except Exception as exc:  # missing wheels: the session's providers will tell
        log.debug("onnxruntime.preload_dlls failed: %s", exc)


def ort_has_cuda_build() -> bool:
    """Whether the installed onnxruntime was built with the CUDA execution provider."""
    import onnxruntime as ort

    return CUDA_EP in ort.get_available_providers()


def ort_cuda_major() -> int | None:
    """The CUDA major version the installed onnxruntime was built for (None: unknown/CPU)."""
    import onnxruntime as ort

    major = str(getattr(ort, "cuda_version", "") or "").split(".")[0]
    return int(major) if major.isdigit() else None


def cuda_pairing_problem() -> str | None:
    """Why onnxruntime's CUDA build and this machine's CUDA runtime do not pair, or None: it needs
    the ``libcudart.so.<major>`` it was built for, which torch's CUDA wheels bring."""
    major = ort_cuda_major()
    if major is None:
        return None
    import onnxruntime as ort
    import torch

    preload_cuda_libraries(ort)
    if library_loads(f"libcudart.so.{major}"):
        return None
    have = f"brings CUDA {torch.version.cuda}" if torch.version.cuda else "has no CUDA"
    return (
        f"onnxruntime-gpu {ort.__version__} is built for CUDA {major}, but libcudart.so.{major} "
        f"does not load; torch {have}: install a torch (or nvidia-cuda-runtime) of CUDA {major}"
    )


def cuda_diagnosis() -> str:
    """One line naming why ONNX Runtime could not use CUDA here (most basic cause first)."""
    lead = "the CUDA execution provider did not load"
    if not ort_has_cuda_build():
        return f"{lead}: the installed onnxruntime has no CUDA build (install onnxruntime-gpu)"
    if not nvidia_driver_present():
        return f"{lead}: no NVIDIA driver (libcuda.so.1 missing)"
    pairing = cuda_pairing_problem()
    if pairing is not None:
        return f"{lead}: {pairing}"
    if not (library_loads("libcudnn.so.9") or library_loads("libcudnn.so")):
        return f"{lead}: cuDNN 9 (libcudnn.so.9) does not load (install nvidia-cudnn-cu<major>)"
    return f"{lead} (driver, CUDA runtime and cuDNN present; ONNX Runtime's log is at debug level)"


def error_text(exc: BaseException) -> str:
    """ONNX Runtime's message without its error code, temp-file path and C++ signature."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"Load model from \S+ failed: ?", "", text)
    text = re.sub(r"\S+\.(?:h|cc|cpp):\d+ [^()]*\(.*?\) (?=[A-Z])", "", text)
    return text[:400]


def open_session(
    path: Path | str,
    device: Device | str,
    options: Any = None,
    *,
    cuda_options: Mapping[str, str] | None = None,
) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``device`` (``options``: its SessionOptions).

    ``cuda`` raises DeviceError naming why CUDA is unusable; ``auto`` falls back to the CPU (the
    providers the session really got tell, never ``get_available_providers()``)."""
    import onnxruntime as ort

    device = Device(device)
    options = options or ort.SessionOptions()
    options.log_severity_level = 3  # cuda_diagnosis() replaces ORT's provider warnings
    if device == Device.cuda and not (ort_has_cuda_build() and nvidia_driver_present()):
        raise DeviceError(f"CUDA was asked for, but {cuda_diagnosis()}")
    gpu = device == Device.cuda or (device == Device.auto and nvidia_driver_present())
    providers: list[Any] = [CPU_EP]
    if gpu:
        preload_cuda_libraries(ort)
        providers = [(CUDA_EP, dict(cuda_options or {})), CPU_EP]
        ort.set_default_logger_severity(4)  # a provider that fails to load logs errors
    try:
        session = quietly(
            "onnxruntime.InferenceSession",
            lambda: ort.InferenceSession(str(path), options, providers=providers),
        )
    except Exception as exc:  # InvalidProtobuf, NoSuchFile, Fail...
        raise ModelLoadError(f"{path} cannot be loaded by ONNX Runtime: {error_text(exc)}") from exc
    finally:
        if gpu:
            ort.set_default_logger_severity(3)
    if device == Device.cuda and CUDA_EP not in session.get_providers():
        raise DeviceError(f"CUDA was asked for, but {cuda_diagnosis()}")
    return session
