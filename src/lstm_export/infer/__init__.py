"""Infer stage: one Runner contract over eager PyTorch, TorchScript and ONNX Runtime.

The public names load lazily (``from lstm_export.infer import classify_folder``), so importing
the package, as the CLI does, costs nothing::

    from lstm_export.infer import classify_folder, load_runner, load_digits

    result = classify_folder("model.onnx", "digits/")  # rows + summary (accuracy when labelled)
    with load_runner("model.onnx") as runner:  # float32 (N, 28, 28) in [0, 1] -> logits (N, 10)
        logits = runner.infer(load_digits(["a.png", "b.jpg"]))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lstm_export.devices import Device
    from lstm_export.infer.base import Runner
    from lstm_export.infer.classify import FolderResult, FolderRun, classify_folder
    from lstm_export.infer.images import Invert, load_digit, load_digits
    from lstm_export.infer.pipeline import plan_run
    from lstm_export.infer.registry import RUNNERS, Backend, load_runner, make_runner
    from lstm_export.infer.rows import Prediction, Summary

_EXPORTS = {
    "Device": "base",
    "FolderRun": "classify",
    "Runner": "base",
    "FolderResult": "classify",
    "Prediction": "rows",
    "Summary": "rows",
    "classify_folder": "classify",
    "plan_run": "pipeline",
    "Invert": "images",
    "load_digit": "images",
    "load_digits": "images",
    "RUNNERS": "registry",
    "Backend": "registry",
    "load_runner": "registry",
    "make_runner": "registry",
}

__all__ = [
    "RUNNERS",
    "Backend",
    "Device",
    "FolderResult",
    "FolderRun",
    "Invert",
    "Prediction",
    "Runner",
    "Summary",
    "classify_folder",
    "load_digit",
    "load_digits",
    "load_runner",
    "make_runner",
    "plan_run",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"lstm_export.infer.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'lstm_export.infer' has no attribute {name!r}")
