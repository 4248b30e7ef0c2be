"""The Runner contract every backend implements (after Polygraphy's loader/runner split).

A runner is built cheaply with typed options, loads its model in :meth:`Runner.load` (or on
``with``), and maps float32 pixels ``(N, T=28, F=28)`` in [0, 1] to float32 logits ``(N, C)``.
:meth:`Runner.infer` is three phases, each a backend's own: :meth:`Runner.prepare` places the
input where the model runs, :meth:`Runner.run_prepared` runs it, :meth:`Runner.fetch` brings the
logits back to the host. The bench times the phases apart; timing never lives here.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import numpy as np

from lstm_export.devices import Device
from lstm_export.errors import (
    ConfigError,
    InferenceError,
    InputError,
    LstmExportError,
    ModelLoadError,
)

__all__ = ["Device", "NoOptions", "Runner", "check_input"]

#: progress(description, done, total)
Progress = Callable[[str, int, int], None]


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """A runner without options."""


class Runner(abc.ABC):
    """Load a model once, then classify batches of digits."""

    #: registry name of the backend, e.g. ``"onnxruntime"``
    name: ClassVar[str]
    #: file suffixes this backend reads, e.g. ``(".onnx",)``
    suffixes: ClassVar[tuple[str, ...]]
    #: the frozen dataclass of this backend's options; an unknown option is a ConfigError
    Options: ClassVar[type] = NoOptions

    def __init__(self, path: Path, device: Device | str = Device.cpu, **options: Any) -> None:
        self.path = Path(path)
        self.requested_device = Device(device)
        self.options: Any = self.parse_options(options)
        #: the device actually used once loaded: ``"cpu"`` or ``"cuda"``
        self.device: str | None = None
        #: with ``device=auto``: which device was chosen and why, e.g. ``"auto: no NVIDIA driver"``
        self.device_note: str = ""
        self.metadata: dict[str, str] = {}
        self._loaded = False

    @classmethod
    def parse_options(cls, options: Mapping[str, Any]) -> Any:
        """``options`` -> an instance of :attr:`Options`; ConfigError naming an unknown one."""
        known = {f.name for f in dataclasses.fields(cls.Options)}
        unknown = sorted(set(options) - known)
        if unknown:
            choices = ", ".join(sorted(known)) or "none"
            raise ConfigError(
                f"the {cls.name} backend has no option {unknown[0]!r} (its options: {choices})"
            )
        return cls.Options(**options)

    # -- lifecycle -------------------------------------------------------------------------------
    def load(self) -> Runner:
        """Load the model (idempotent). Raises ModelLoadError or DeviceError."""
        if not self._loaded:
            if not self.path.is_file():
                raise ModelLoadError(f"model file {self.path} not found")
            self._load()
            self._loaded = True
        return self

    def close(self) -> None:
        """Release the model and restore any process-wide setting it changed (idempotent)."""
        if self._loaded:
            self._close()
            self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def __enter__(self) -> Runner:
        return self.load()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- inference -------------------------------------------------------------------------------
    def infer(self, x: np.ndarray) -> np.ndarray:
        """``x`` float32 (N, 28, 28) in [0, 1] -> logits float32 (N, C).

        InputError for a badly shaped ``x``; a backend's own exception becomes InferenceError
        naming the backend and the shape.
        """
        self.load()
        try:
            return self.fetch(self.run_prepared(self.prepare(x)))
        except LstmExportError:
            raise
        except Exception as exc:  # onnxruntime Fail/InvalidArgument, torch RuntimeError, ...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            shape = getattr(x, "shape", "?")
            raise InferenceError(
                f"{self.description} failed on input of shape {shape}: {first}"
            ) from exc

    def infer_all(
        self,
        images: np.ndarray,
        *,
        batch_size: int = 1000,
        progress: Progress | None = None,
        description: str = "predicting",
    ) -> np.ndarray:
        """Logits ``(N, C)`` for all ``images`` ``(N, 28, 28)``, ``batch_size`` at a time."""
        n = len(images)
        if progress is not None:
            progress(description, 0, n)
        parts = []
        for start in range(0, n, batch_size):
            parts.append(self.infer(images[start : start + batch_size]))
            if progress is not None:
                progress(description, min(start + batch_size, n), n)
        return np.concatenate(parts)

    @property
    def description(self) -> str:
        """Human-readable backend and device, e.g. ``onnxruntime (CPUExecutionProvider)``."""
        return f"{self.name} ({self.device or 'not loaded'})"

    # -- to implement ----------------------------------------------------------------------------
    @abc.abstractmethod
    def _load(self) -> None:
        """Load the model; set :attr:`device`, :attr:`device_note` and :attr:`metadata`."""

    @abc.abstractmethod
    def prepare(self, x: np.ndarray) -> Any:
        """Check ``x`` (with :func:`check_input`) and place it where the model runs."""

    @abc.abstractmethod
    def run_prepared(self, prepared: Any) -> Any:
        """Run on a prepared input; return when the result is ready (still on the device)."""

    @abc.abstractmethod
    def fetch(self, result: Any) -> np.ndarray:
        """A result of :meth:`run_prepared` as float32 logits ``(N, C)`` on the host."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Free the model and undo process-wide settings made in :meth:`_load`."""


def check_input(x: np.ndarray) -> np.ndarray:
    """Validate and normalise a batch: float32, C-contiguous, shape (N, 28, 28), N >= 1."""
    if not isinstance(x, np.ndarray):
        raise InputError(f"expected a numpy array, got {type(x).__name__}")
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.shape[0] < 1:
        raise InputError(f"expected input of shape (N, 28, 28), got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)
