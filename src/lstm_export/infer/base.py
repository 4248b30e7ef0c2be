"""The Runner contract every backend implements (after Polygraphy's loader/runner split).

A runner is built cheaply, loads its model in :meth:`Runner.load` (or on ``with``), and maps
float32 pixels ``(N, T=28, F=28)`` in [0, 1] to float32 logits ``(N, 10)`` in :meth:`Runner.infer`.
Timing lives in the bench code, never here.
"""

from __future__ import annotations

import abc
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import numpy as np

from lstm_export.errors import InputError, LstmExportError, ModelLoadError


class Device(str, Enum):
    """Where to run. ``auto`` means CUDA when it really loads, else CPU."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Runner(abc.ABC):
    """Load a model once, then classify batches of digits."""

    #: registry name of the backend, e.g. ``"onnxruntime"``
    name: ClassVar[str]
    #: file suffixes this backend reads, e.g. ``(".onnx",)``
    suffixes: ClassVar[tuple[str, ...]]

    def __init__(self, path: Path, device: Device | str = Device.cpu, **options: Any) -> None:
        self.path = Path(path)
        self.requested_device = Device(device)
        self.options = options
        #: the device actually used once loaded: ``"cpu"`` or ``"cuda"``
        self.device: str | None = None
        #: with ``device=auto``: which device was chosen and why, e.g. ``"auto: no NVIDIA driver"``
        self.device_note: str = ""
        self.metadata: dict[str, str] = {}
        self._loaded = False

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
        """Release the model (idempotent)."""
        if self._loaded:
            self._close()
            self._loaded = False

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
        """``x`` float32 (N, 28, 28) in [0, 1] -> logits float32 (N, 10).

        A backend's own exception is raised as ModelLoadError naming the backend and the shape.
        """
        if not self._loaded:
            self.load()
        try:
            return self.fetch(self.run_prepared(self.prepare(x)))
        except LstmExportError:
            raise
        except Exception as exc:  # onnxruntime Fail/InvalidArgument, torch RuntimeError, ...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            shape = getattr(x, "shape", "?")
            raise ModelLoadError(
                f"{self.description} failed on input of shape {shape}: {first}"
            ) from exc

    # -- the three phases of infer(), for benchmarks that time device copies apart ----------------
    def prepare(self, x: np.ndarray) -> Any:
        """Validate ``x`` and place it where the model runs (a host-to-device copy on CUDA)."""
        return check_input(x)

    def run_prepared(self, prepared: Any) -> Any:
        """Run on a prepared input; returns when the result is ready (on the device)."""
        return self._infer(prepared)

    def fetch(self, result: Any) -> np.ndarray:
        """Bring a result of :meth:`run_prepared` back as float32 logits (N, 10) on the host."""
        return np.asarray(result, dtype=np.float32)

    @property
    def description(self) -> str:
        """Human-readable backend and device, e.g. ``onnxruntime (CPUExecutionProvider)``."""
        return f"{self.name} ({self.device or 'not loaded'})"

    # -- to implement ----------------------------------------------------------------------------
    @abc.abstractmethod
    def _load(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, x: np.ndarray) -> np.ndarray: ...

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Free resources; the default drops nothing."""


def check_input(x: np.ndarray) -> np.ndarray:
    """Validate and normalise a batch: float32, C-contiguous, shape (N, 28, 28), N >= 1."""
    if not isinstance(x, np.ndarray):
        raise InputError(f"expected a numpy array, got {type(x).__name__}")
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.shape[0] < 1:
        raise InputError(f"expected input of shape (N, 28, 28), got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)
