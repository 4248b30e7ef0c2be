"""TorchScript (``.ts``) loaded with plain ``torch.jit.load``."""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np

from lstm_export.errors import ModelLoadError
from lstm_export.infer.base import Runner, check_input
from lstm_export.infer.runners.torch_device import resolve_torch_device_noted


class TorchScriptRunner(Runner):
    """A scripted or traced module saved by ``lstm-export torchscript``."""

    name = "torchscript"
    suffixes = (".ts", ".torchscript")

    def _load(self) -> None:
        import torch

        self._torch = torch
        if self.options.get("threads"):
            torch.set_num_threads(int(self.options["threads"]))
        self.device, self.device_note = resolve_torch_device_noted(self.requested_device)
        extra = {"metadata.json": ""}
        try:
            with warnings.catch_warnings():
                # torch >= 2.9 calls torch.jit deprecated; loading still works and is the point here
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                self.module: Any = torch.jit.load(
                    str(self.path), map_location=self.device, _extra_files=extra
                )
        except Exception as exc:  # RuntimeError for foreign or truncated files
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(
                f"{self.path} is not a loadable TorchScript file: {first}"
            ) from exc
        self.module.eval()
        if extra["metadata.json"]:
            raw = extra["metadata.json"]
            text = raw.decode() if isinstance(raw, bytes) else raw
            try:
                recorded = json.loads(text)
            except ValueError:
                recorded = {}
            if isinstance(recorded, dict):
                self.metadata = {
                    k: v if isinstance(v, str) else json.dumps(v) for k, v in recorded.items()
                }

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return self.fetch(self.run_prepared(self.prepare(x)))

    def prepare(self, x: np.ndarray) -> Any:
        return self._torch.from_numpy(check_input(x)).to(self.device)

    def run_prepared(self, prepared: Any) -> Any:
        torch = self._torch
        with torch.inference_mode():
            out = self.module(prepared)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return out

    def fetch(self, result: Any) -> np.ndarray:
        return np.asarray(result.float().cpu().numpy(), dtype=np.float32)

    def _close(self) -> None:
        del self.module
