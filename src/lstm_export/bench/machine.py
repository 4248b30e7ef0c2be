"""Describe the machine a benchmark ran on (recorded in the JSON)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

from lstm_export.devices import usable_cores


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict[str, Any]:
    """CPU, cores, library versions, ONNX Runtime providers and GPU (if any)."""
    import onnxruntime as ort
    import torch

    from lstm_export import __version__

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "lstm_export": __version__,
        "torch": str(torch.__version__),
        "onnxruntime": ort.__version__,
        "ort_available_providers": ort.get_available_providers(),
        "device": device,
        "gpu": None,
    }
    try:
        info["openvino"] = importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        info["openvino"] = None
    try:
        info["load_average"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        info["load_average"] = None
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info
