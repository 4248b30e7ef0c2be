"""Resolve a requested device for the torch-based runners."""

from __future__ import annotations

import logging

from lstm_export.errors import DeviceError
from lstm_export.infer.base import Device

log = logging.getLogger(__name__)


def resolve_torch_device(requested: Device) -> str:
    """``cpu`` / ``cuda`` / ``auto`` -> the torch device string actually usable here."""
    import torch

    if requested == Device.cpu:
        return "cpu"
    available = torch.cuda.is_available()
    if requested == Device.cuda and not available:
        built = torch.version.cuda
        why = "this torch build has no CUDA" if built is None else "no CUDA device is visible"
        raise DeviceError(f"--device cuda asked, but CUDA is not usable by torch: {why}")
    device = "cuda" if available else "cpu"
    if requested == Device.auto:
        log.info("device auto: using %s", device)
    return device
