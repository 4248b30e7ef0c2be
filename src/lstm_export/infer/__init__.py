"""Infer stage: one Runner contract over eager PyTorch, TorchScript, ONNX Runtime and OpenVINO;
the public names load lazily, so importing the package costs nothing::

    from lstm_export.infer import classify_folder, load_runner, load_digits

    result = classify_folder("model.onnx", "digits/")  # rows + summary (accuracy when labelled)
    with load_runner("model.onnx") as runner:  # float32 (N, 28, 28) in [0, 1] -> logits (N, 10)
        logits = runner.infer(load_digits(["a.png", "b.jpg"]))
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    "base": ("Device", "Runner"),
    "classify": ("FolderResult", "FolderRun", "classify_folder"),
    "images": ("Invert", "load_digit", "load_digits"),
    "pipeline": ("plan_run",),
    "registry": ("RUNNERS", "Backend", "load_runner", "make_runner"),
    "rows": ("Prediction", "Summary"),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lstm_export.infer.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lstm_export.infer' has no attribute {name!r}")
