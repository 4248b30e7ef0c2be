"""Eager PyTorch from an lstm-export checkpoint (``.pt``): the reference every backend is held to."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from lstm_export.infer.base import Runner, check_input
from lstm_export.infer.runners.torch_device import resolve_torch_device_noted


class EagerRunner(Runner):
    """``model.pt`` -> :class:`lstm_export.model.LSTMClassifier` in eval mode."""

    name = "eager"
    suffixes = (".pt", ".pth")

    def _load(self) -> None:
        import torch

        from lstm_export.checkpoint import load_model

        self._torch = torch
        if self.options.get("threads"):
            torch.set_num_threads(int(self.options["threads"]))
        self.device, self.device_note = resolve_torch_device_noted(self.requested_device)
        model, ckpt = load_model(self.path)
        self.model: Any = model.to(self.device)
        self.metadata = {
            "class_names": ",".join(ckpt["class_names"]),
            "preprocessing": json.dumps(ckpt["preprocessing"]),
        }

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return self.fetch(self.run_prepared(self.prepare(x)))

    def prepare(self, x: np.ndarray) -> Any:
        return self._torch.from_numpy(check_input(x)).to(self.device)

    def run_prepared(self, prepared: Any) -> Any:
        torch = self._torch
        with torch.inference_mode():
            out = self.model(prepared)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return out

    def fetch(self, result: Any) -> np.ndarray:
        return np.asarray(result.float().cpu().numpy(), dtype=np.float32)

    def _close(self) -> None:
        del self.model
