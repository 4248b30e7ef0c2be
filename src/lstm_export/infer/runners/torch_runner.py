"""PyTorch runners: eager (an lstm-export checkpoint, ``.pt``) and TorchScript (``.ts``).

Both run a ``torch.nn.Module`` the same way; they differ only in how the module is loaded.
Eager PyTorch is the reference every other backend is held to.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_export.devices import resolve_torch_device
from lstm_export.errors import ConfigError, ModelLoadError
from lstm_export.infer.base import Runner, check_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TorchOptions:
    """``threads``: torch intra-op threads while loaded (restored on close); None keeps torch's.

    ``tf32`` (CUDA): allow TF32 in cuDNN and cuBLAS. Off by default, so that fp32 on CUDA is true
    fp32 (torch enables TF32 in cuDNN by default); the setting is restored on close.
    """

    threads: int | None = None
    tf32: bool = False
    #: ``"bf16"``: run under ``torch.autocast`` in bfloat16 (what a PyTorch user tries first)
    autocast: str | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.autocast not in (None, "bf16"):
            raise ConfigError(f"autocast must be None or 'bf16', got {self.autocast!r}")


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
        self._tf32_before: tuple[bool, bool] | None = None
        if self.device == "cuda":
            backends = torch.backends
            self._tf32_before = (backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32)
            backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = self.options.tf32
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
            if self.options.autocast == "bf16":
                with torch.autocast(self.device or "cpu", dtype=torch.bfloat16):
                    out = self.module(prepared)
            else:
                out = self.module(prepared)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return out

    def fetch(self, result: Any) -> np.ndarray:
        if isinstance(result, tuple):  # a file exported with --with-state: (logits, h_n, c_n)
            result = result[0]
        return np.asarray(result.float().cpu().numpy(), dtype=np.float32)

    def _step(self, x: np.ndarray, state: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        torch = self._torch
        h = c = None
        if state is not None:
            h = torch.from_numpy(state.h).to(self.device)
            c = torch.from_numpy(state.c).to(self.device)
        with torch.inference_mode():
            out = self._forward_state(torch.from_numpy(x).to(self.device), h, c)
        logits, h_n, c_n = (np.asarray(t.float().cpu().numpy(), dtype=np.float32) for t in out)
        return logits, h_n, c_n

    def _forward_state(self, x: Any, h_0: Any, c_0: Any) -> Any:
        """``(logits, h_n, c_n)`` from the module; None states are zeros."""
        return self.module(x, h_0, c_0)

    def _close(self) -> None:
        del self.module
        if self._threads_before is not None:
            self._torch.set_num_threads(self._threads_before)
        if self._tf32_before is not None:
            backends = self._torch.backends
            backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = self._tf32_before


class EagerRunner(TorchRunner):
    """``model.pt`` -> :class:`lstm_export.model.LSTMClassifier` in eval mode."""

    name = "eager"
    suffixes = (".pt", ".pth")

    @property
    def streams(self) -> bool:
        return True

    def _forward_state(self, x: Any, h_0: Any, c_0: Any) -> Any:
        return self.module.forward_with_state(x, h_0, c_0)

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

    @property
    def streams(self) -> bool:
        """Exported with ``--with-state``: ``module(x, h_0=None, c_0=None) -> (logits, h, c)``."""
        return "state_inputs" in self.metadata

    #: set on CUDA when cuDNN copies the LSTM weights into one chunk on every call
    weights_compacted_per_call = False

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
        if self.device == "cuda":
            self._warn_if_weights_are_compacted_per_call(module)
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

    def _warn_if_weights_are_compacted_per_call(self, module: Any) -> None:
        """cuDNN wants an LSTM's weights in one contiguous chunk, laid out its way; when a frozen
        module's weight constants are not (``export_torchscript`` packs them, a file from
        elsewhere may not), cuDNN warns and copies them on every call. Say so."""
        torch = self._torch
        with warnings.catch_warnings(record=True) as caught, torch.inference_mode():
            warnings.simplefilter("always")
            module(torch.zeros((1, 28, 28), device="cuda"))
        if any("contiguous chunk" in str(w.message) for w in caught):
            self.weights_compacted_per_call = True
            log.warning(
                "%s: cuDNN compacts the LSTM weights on every call (they are not one contiguous "
                "chunk), which costs time on CUDA; exporting it again packs them",
                self.path.name,
            )
