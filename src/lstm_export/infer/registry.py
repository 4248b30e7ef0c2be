"""Backend registry: adding a backend is one runner file and one line here. Every piece of code
that runs a model builds its runner with :func:`make_runner`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

from lstm_export.devices import Device
from lstm_export.errors import ModelLoadError
from lstm_export.infer.base import Runner
from lstm_export.infer.runners.openvino_runner import OpenVinoRunner
from lstm_export.infer.runners.ort import OnnxRuntimeRunner
from lstm_export.infer.runners.torch_runner import EagerRunner, TorchScriptRunner

# OpenVINO after ONNX Runtime: a .onnx file goes to onnxruntime
RUNNERS: dict[str, type[Runner]] = {
    r.name: r for r in (EagerRunner, TorchScriptRunner, OnnxRuntimeRunner, OpenVinoRunner)
}


class Backend(str, Enum):
    """Backend choice on the command line; ``auto`` picks it from the file's suffix."""

    auto = "auto"
    eager = "eager"
    torchscript = "torchscript"
    onnxruntime = "onnxruntime"
    openvino = "openvino"


def backend_for(path: Path | str) -> str:
    """The backend that reads ``path``, from its suffix."""
    suffix = Path(path).suffix.lower()
    for name, cls in RUNNERS.items():
        if suffix in cls.suffixes:
            return name
    known = ", ".join(dict.fromkeys(s for cls in RUNNERS.values() for s in cls.suffixes))
    raise ModelLoadError(f"cannot tell the backend of {path}: suffix is not one of {known}")


def make_runner(
    path: Path | str,
    backend: Backend | str = Backend.auto,
    device: Device | str = Device.auto,
    **options: Any,
) -> Runner:
    """Build (not load) the runner for ``path``; ConfigError for an option it does not have."""
    name = backend_for(path) if Backend(backend) == Backend.auto else Backend(backend).value
    return RUNNERS[name](Path(path), Device(device), **options)


def load_runner(
    path: Path | str,
    backend: Backend | str = Backend.auto,
    device: Device | str = Device.auto,
    **options: Any,
) -> Runner:
    """Build and load the runner for ``path``; use it as a context manager to release it."""
    return make_runner(path, backend, device, **options).load()
