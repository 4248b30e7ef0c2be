"""PyTorch runners: eager (an lstm-export checkpoint, ``.pt``, the reference every other backend
is held to) and TorchScript (``.ts``); they differ only in how the module is loaded."""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lstm_export.devices import resolve_torch_device
from lstm_export.errors import ConfigError, ModelLoadError, first_line
from lstm_export.infer.base import Runner, TrustOption, check_counts, check_input
from lstm_export.trust import refuse, torchscript_graph_problem, torchscript_load_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TorchOptions:
    """``threads``: torch intra-op threads while loaded (None keeps torch's); ``tf32`` (CUDA):
    allow TF32 in cuDNN and cuBLAS (off: true fp32, though torch allows it in cuDNN by default);
    both restored on close. ``autocast="bf16"``: run under ``torch.autocast`` in bfloat16."""

    threads: int | None = None
    tf32: bool = False
    autocast: str | None = None

    def __post_init__(self) -> None:
        check_counts(self, "threads")
        if self.autocast not in (None, "bf16"):
            raise ConfigError(f"autocast must be None or 'bf16', got {self.autocast!r}")


@dataclass(frozen=True)
class TorchScriptOptions(TorchOptions, TrustOption):
    """:class:`TorchOptions` and ``trusted``."""


class TorchRunner(Runner):
    """A ``torch.nn.Module`` in eval mode on the CPU or CUDA; subclasses say how to load it."""

    Options: ClassVar[type] = TorchOptions
    options: TorchOptions
    #: the module's method ``(x, h_0=None, c_0=None) -> (logits, h_n, c_n)``, None states zeros
    state_method: ClassVar[str] = "forward"

    def _load(self) -> None:
        import torch

        self._torch = torch
        self._threads_before: int | None = None
        self._tf32_before: tuple[bool, bool] | None = None
        self.device, self.device_note = resolve_torch_device(self.requested_device)
        self.description = f"{self.name} ({self.device})"
        self.module: Any = self._load_module()
        self._probe()
        if self.device == "cuda":
            backends = torch.backends
            self._tf32_before = (backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32)
            backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = self.options.tf32
        if self.options.threads:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(self.options.threads)

    def _probe(self) -> None:
        """Run the model once on a blank digit: its output must be float logits ``(1, C)``; on
        CUDA, warn when cuDNN compacts the LSTM weights on every call (not packed in one chunk)."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                out = self.run_prepared(self.prepare(np.zeros((1, 28, 28), np.float32)))
            except Exception as exc:
                raise ModelLoadError(
                    f"{self.path} fails on a blank digit: {first_line(exc)}"
                ) from exc
        if isinstance(out, tuple) and out:  # a file exported with --with-state: (logits, h, c)
            out = out[0]
        tensor = isinstance(out, self._torch.Tensor)
        self.check_outputs(tuple(out.shape) if tensor else (), tensor and out.is_floating_point())
        if self.device == "cuda" and any("contiguous chunk" in str(w.message) for w in caught):
            log.warning(
                "%s: cuDNN compacts the LSTM weights on every call (they are not one contiguous "
                "chunk), which costs time on CUDA; exporting it again packs them",
                self.path.name,
            )

    def _load_module(self) -> Any:
        """The module on :attr:`device`, with :attr:`metadata` filled in."""
        raise NotImplementedError

    def prepare(self, x: np.ndarray) -> Any:
        return self._torch.from_numpy(check_input(x)).to(self.device)

    def run_prepared(self, prepared: Any) -> Any:
        torch = self._torch
        cast: Any = contextlib.nullcontext()
        if self.options.autocast == "bf16":
            cast = torch.autocast(self.device or "cpu", dtype=torch.bfloat16)
        with torch.inference_mode(), cast:
            out = self.module(prepared)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return out

    def fetch(self, result: Any) -> np.ndarray:
        if isinstance(result, tuple):  # a file exported with --with-state: (logits, h_n, c_n)
            result = result[0]
        return np.asarray(result.float().cpu().numpy(), dtype=np.float32)

    def _step(self, x: np.ndarray, state: Any) -> tuple[Any, Any, Any]:
        arrays = (x,) if state is None else (x, state.h, state.c)
        with self._torch.inference_mode():
            forward = getattr(self.module, self.state_method)
            out = forward(*(self._torch.from_numpy(a).to(self.device) for a in arrays))
        logits, h_n, c_n = (t.float().cpu().numpy() for t in out)
        return logits, h_n, c_n

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
    streams = True
    state_method = "forward_with_state"

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
    Options = TorchScriptOptions
    options: TorchScriptOptions

    def _load_module(self) -> Any:
        trusted = self.options.trusted
        module, self.metadata = load_torchscript(self.path, self.device or "cpu", trusted=trusted)
        if not trusted and (problem := torchscript_graph_problem(module)):
            raise refuse(self.path, problem)  # it would run more than tensor math when called
        # exported with --with-state: module(x, h_0=None, c_0=None) -> (logits, h, c)
        self.streams = "state_inputs" in self.metadata
        return module.eval()


def load_torchscript(
    path: Path, device: str = "cpu", *, trusted: bool = False
) -> tuple[Any, dict[str, str]]:
    """``torch.jit.load`` of ``path`` on ``device``, and its ``metadata.json`` (values as
    strings). Unless ``trusted``, a file that would run code while it loads is refused first."""
    import torch

    if not trusted and (problem := torchscript_load_problem(path)):
        raise refuse(path, problem)
    extra = {"metadata.json": ""}
    try:
        with warnings.catch_warnings():  # torch >= 2.9 calls torch.jit deprecated; it still loads
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # RuntimeError for foreign or truncated files
        raise ModelLoadError(
            f"{path} is not a loadable TorchScript file: {first_line(exc)}"
        ) from exc
    raw, metadata = extra["metadata.json"], {}
    with contextlib.suppress(ValueError):
        recorded = json.loads(raw.decode(errors="replace") if isinstance(raw, bytes) else raw)
        if isinstance(recorded, dict):
            metadata = {
                str(k): v if isinstance(v, str) else json.dumps(v) for k, v in recorded.items()
            }
    return module, metadata
