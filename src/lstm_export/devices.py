"""Where a model runs: the ``Device`` choice, what CUDA torch can really use, the usable cores."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from enum import Enum

from lstm_export.errors import DeviceError

log = logging.getLogger(__name__)


class Device(str, Enum):
    """Where to run. ``auto`` means CUDA when it really loads, else CPU."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def library_loads(name: str) -> bool:
    """Whether the shared library ``name`` (``libcuda.so.1``...) loads here."""
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def nvidia_driver_present() -> bool:
    """Whether the NVIDIA driver library loads (without it no CUDA runtime can)."""
    return library_loads("libcuda.so.1")


def torch_cuda_problem() -> str | None:
    """Why torch cannot use CUDA here, or None when it can."""
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return "this torch build has no CUDA"
    if sys.platform.startswith("linux") and not nvidia_driver_present():
        return "no NVIDIA driver (libcuda.so.1 missing)"
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None:
        return f"no CUDA device is visible (CUDA_VISIBLE_DEVICES={hidden!r})"
    return "no CUDA device is visible"


def resolve_torch_device(requested: Device | str) -> tuple[str, str]:
    """``cpu`` / ``cuda`` / ``auto`` -> (torch device string usable here, note on ``auto``'s choice);
    DeviceError when CUDA is asked for and torch cannot use it."""
    requested = Device(requested)
    if requested == Device.cpu:
        return "cpu", ""
    problem = torch_cuda_problem()
    if requested == Device.cuda:
        if problem is not None:
            raise DeviceError(f"CUDA was asked for, but torch cannot use it: {problem}")
        return "cuda", ""
    note = "auto: CUDA" if problem is None else f"auto: CPU, since {problem}"
    log.info("device %s", note)
    return ("cpu" if problem else "cuda"), note
