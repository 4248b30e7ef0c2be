"""Resolve a requested device for the torch-based runners."""

from __future__ import annotations

import logging
import os
import sys

from lstm_export.errors import DeviceError
from lstm_export.infer.base import Device
from lstm_export.infer.runners.ort_session import nvidia_driver_present

log = logging.getLogger(__name__)


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


def resolve_torch_device(requested: Device) -> str:
    """``cpu`` / ``cuda`` / ``auto`` -> the torch device string actually usable here."""
    device, _ = resolve_torch_device_noted(requested)
    return device


def resolve_torch_device_noted(requested: Device) -> tuple[str, str]:
    """Like :func:`resolve_torch_device`, with a note saying what ``auto`` chose and why."""
    if requested == Device.cpu:
        return "cpu", ""
    problem = torch_cuda_problem()
    if requested == Device.cuda and problem is not None:
        raise DeviceError(f"--device cuda asked, but CUDA is not usable by torch: {problem}")
    device = "cuda" if problem is None else "cpu"
    note = ""
    if requested == Device.auto:
        note = "auto: CUDA" if problem is None else f"auto: CPU, since {problem}"
        log.info("device %s", note)
    return device, note
