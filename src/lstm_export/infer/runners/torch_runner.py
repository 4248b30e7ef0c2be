"""PyTorch runners: eager (an lstm-export checkpoint, ``.pt``) and TorchScript (``.ts``).

Both run a ``torch.nn.Module`` the same way; they differ only in how the module is loaded.
Eager PyTorch is the reference every other backend is held to.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_export.devices import resolve_torch_device
from lstm_export.errors import ConfigError, ModelLoadError
from lstm_export.infer.base import Runner, check_input


@dataclass(frozen=True)
class TorchOptions:
    """``threads``: torch intra-op threads while loaded (restored on close); None keeps torch's."""

    threads: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")


class TorchRunner(Runner):
    """A ``torch.nn.Module`` in eval mode on the CPU or CUDA; subclasses say how to load it."""

    Options = TorchOptions
    options: TorchOptions

    def _load(self) -> None:
        import torch

        self._torch = torch
        self._threads_before: int | None = None
        self.device, self.device_note = resolve_torch_device(self.requested_device)
        self.module: Any = self._load_module()
        if self.options.threads:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(self.options.threads)

    def _load_module(self) -> Any:
        """The module on :attr:`device`, with :attr:`metadata` filled in."""
        raise NotImplementedError

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
        if self._threads_before is not None:
            self._torch.set_num_threads(self._threads_before)


class EagerRunner(TorchRunner):
    """``model.pt`` -> :class:`lstm_export.model.LSTMClassifier` in eval mode."""

    name = "eager"
    suffixes = (".pt", ".pth")

    def _load_module(self) -> Any:
        from lstm_export.checkpoint import load_model

        model, ckpt = load_model(self.path)
        self.metadata = {
            "class_names": ",".join(ckpt["class_names"]),
            "preprocessing": json.dumps(ckpt["preprocessing"]),
        }
        return model.to(self.device)


class TorchScriptRunner(TorchRunner):
    """A scripted module saved by ``export_torchscript``, loaded with plain ``torch.jit.load``."""

    name = "torchscript"
    suffixes = (".ts", ".torchscript")

    def _load_module(self) -> Any:
        torch = self._torch
        extra = {"metadata.json": ""}
        try:
            with warnings.catch_warnings():
                # torch >= 2.9 calls torch.jit deprecated; loading still works and is the point
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(
                    str(self.path), map_location=self.device, _extra_files=extra
                )
        except Exception as exc:  # RuntimeError for foreign or truncated files
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(
                f"{self.path} is not a loadable TorchScript file: {first}"
            ) from exc
        module.eval()
        raw = extra["metadata.json"]
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            recorded = json.loads(text) if text else {}
        except ValueError:
            recorded = {}
        if isinstance(recorded, dict):
            self.metadata = {
                k: v if isinstance(v, str) else json.dumps(v) for k, v in recorded.items()
            }
        return module
