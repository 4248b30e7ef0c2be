"""The Runner contract every backend implements (after Polygraphy's loader/runner split).

Float32 pixels ``(N, T, F=28)`` in [0, 1] -> float32 logits ``(N, C)``, in three phases the bench
times apart: :meth:`Runner.prepare`, :meth:`Runner.run_prepared`, :meth:`Runner.fetch`. ``T`` is
28 for a digit; a file exported with a fixed time axis takes no other. A model that takes its LSTM
state can be fed a sequence in chunks (:meth:`Runner.step`)."""

from __future__ import annotations

import abc
import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from lstm_export.devices import Device
from lstm_export.errors import (
    ConfigError,
    InferenceError,
    InputError,
    LstmExportError,
    ModelLoadError,
    first_line,
)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class TrustOption:
    """``trusted``: lift the checks that keep a file from running code (:mod:`lstm_export.trust`)."""

    trusted: bool = False


def check_counts(options: Any, *names: str) -> None:
    """ConfigError unless each of the ``names`` options is None or a whole number >= 1."""
    for name in names:
        value = getattr(options, name)
        if value is not None and (type(value) is not int or value < 1):
            raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class LstmState:
    """An LSTM's state between two chunks of a sequence, float32 on the host: ``h``
    (D * num_layers, N, H_out) and ``c`` (D * num_layers, N, H); image ``i`` is ``[:, i]``."""

    h: np.ndarray
    c: np.ndarray


class Runner(abc.ABC):
    """Load a model once, then classify batches of digits."""

    #: registry name of the backend, e.g. ``"onnxruntime"``
    name: ClassVar[str]
    #: file suffixes this backend reads, e.g. ``(".onnx",)``
    suffixes: ClassVar[tuple[str, ...]]
    #: the frozen dataclass of this backend's options; an unknown option is a ConfigError
    Options: ClassVar[type]
    #: whether the loaded model takes and returns its LSTM state (see :meth:`step`)
    streams: bool = False
    #: options beside ``threads`` for a run that shares the cores with image decoding
    planned: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, path: Path, device: Device | str = Device.cpu, **options: Any) -> None:
        self.path = Path(path)
        self.requested_device = Device(device)
        self.options: Any = self.parse_options(options)
        #: the device actually used once loaded: ``"cpu"`` or ``"cuda"``
        self.device: str | None = None
        #: with ``device=auto``: which device was chosen and why, e.g. ``"auto: no NVIDIA driver"``
        self.device_note: str = ""
        #: backend and device for messages, e.g. ``onnxruntime (CPUExecutionProvider)``
        self.description = f"{self.name} (not loaded)"
        self.metadata: dict[str, str] = {}
        #: the names of the logits' columns, from the metadata (empty: not named)
        self.class_names: list[str] = []
        #: C, the logits' width, where the model declares it (None: known after a run)
        self.classes: int | None = None
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

    @classmethod
    def planned_options(cls, threads: int, *, trusted: bool = False) -> dict[str, Any]:
        """Options for a run that gives the model ``threads`` cores beside image decoding, and
        ``trusted`` where the backend checks what a file may do (a checkpoint is only weights)."""
        trust = {"trusted": True} if trusted and issubclass(cls.Options, TrustOption) else {}
        return {"threads": threads, **cls.planned, **trust}

    def load(self) -> Runner:
        """Load the model (idempotent). Raises ModelLoadError or DeviceError."""
        if not self._loaded:
            if not self.path.is_file():
                raise ModelLoadError(f"model file {self.path} not found")
            self._load()
            self._loaded = True
            try:
                self.class_names = class_names(self.metadata.get("class_names", ""))
            except ModelLoadError as exc:
                self.close()
                raise ModelLoadError(f"{self.path}: {exc}") from None
        return self

    def check_outputs(self, shape: Sequence[Any], floating: bool) -> None:
        """ModelLoadError unless the model's first output is float logits ``(N, C)``, C >= 1
        (``shape``: its dims, ints where known); sets :attr:`classes`."""
        classes = shape[-1] if len(shape) else None
        if len(shape) != 2 or not floating or (isinstance(classes, int) and classes < 1):
            raise ModelLoadError(
                f"{self.path} does not score classes: its output is "
                f"{'float' if floating else 'non-float'} of shape {list(shape)}, where logits "
                "(N, C) with C >= 1 are expected"
            )
        self.classes = classes if isinstance(classes, int) else None

    def close(self) -> None:
        """Release the model and restore any process-wide setting it changed (idempotent)."""
        if self._loaded:
            self._close()
            self._loaded = False

    def __enter__(self) -> Runner:
        return self.load()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def infer(self, x: np.ndarray) -> np.ndarray:
        """``x`` float32 (N, T, 28) in [0, 1] -> logits float32 (N, C).

        InputError for a badly shaped ``x``; a backend's own exception, or an output that is not
        one row of logits per image, is InferenceError naming the backend and the shape.
        """
        self.load()
        out = self._guarded(lambda: self.fetch(self.run_prepared(self.prepare(x))), x)
        if out.ndim != 2 or out.shape[0] != len(x) or out.shape[1] < 1:
            raise InferenceError(
                f"{self.description} gave an output of shape {out.shape} for {len(x)} "
                "image(s), where logits (N, C) with C >= 1 are expected"
            )
        return out

    def _guarded(self, call: Callable[[], T], x: Any) -> T:
        """``call()``; a backend's own exception becomes InferenceError naming the input shape."""
        try:
            return call()
        except LstmExportError:
            raise
        except Exception as exc:  # onnxruntime Fail/InvalidArgument, torch RuntimeError, ...
            shape = getattr(x, "shape", "?")
            raise InferenceError(
                f"{self.description} failed on input of shape {shape}: {first_line(exc)}"
            ) from exc

    def infer_all(self, images: np.ndarray, *, batch_size: int = 1000) -> np.ndarray:
        """Logits ``(N, C)`` for all ``images`` ``(N, T, 28)``, ``batch_size`` at a time."""
        batches = range(0, len(images), batch_size)
        return np.concatenate([self.infer(images[i : i + batch_size]) for i in batches])

    def step(self, x: np.ndarray, state: LstmState | None = None) -> tuple[np.ndarray, LstmState]:
        """Feed the rows ``x`` (N, T, 28) from ``state`` (None: zeros, the start of a sequence):
        the logits (N, C) after the last row and the state after it, to pass with the next rows.

        InferenceError when the model takes no state, InputError for a state that does not fit.
        """
        self.load()
        x = check_input(x)
        if not self.streams:
            raise InferenceError(
                f"{self.path.name} does not take an LSTM state: feeding a sequence in chunks "
                "needs a file exported with state inputs and outputs"
            )
        if state is not None:
            h, c, n = np.asarray(state.h), np.asarray(state.c), x.shape[0]
            if h.ndim != 3 or c.ndim != 3 or h.shape[1] != n or c.shape[1] != n:
                raise InputError(
                    f"an LSTM state for {n} image(s) must be h (layers, {n}, H_out) and "
                    f"c (layers, {n}, H), got h {h.shape} and c {c.shape}"
                )
            state = LstmState(*(np.ascontiguousarray(a, dtype=np.float32) for a in (h, c)))
        logits, h, c = (
            np.asarray(a, np.float32) for a in self._guarded(lambda: self._step(x, state), x)
        )
        return logits, LstmState(h, c)

    def _step(self, x: np.ndarray, state: LstmState | None) -> tuple[Any, Any, Any]:
        """``(logits, h_n, c_n)`` for a checked ``x`` from ``state`` (None: zeros), on the host."""
        raise InferenceError(f"the {self.name} backend cannot feed an LSTM state")

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


def class_names(raw: str) -> list[str]:
    """Class names from a model's metadata (comma-separated, or a JSON list); ModelLoadError for
    a name given twice (whose scores would be merged)."""
    names: list[str] = [n.strip() for n in raw.split(",")] if raw else []
    if raw.startswith("["):
        try:
            names = [str(n) for n in json.loads(raw)]
        except (ValueError, TypeError):
            names = []
    twice = [name for name, count in Counter(names).items() if count > 1]
    if twice:
        raise ModelLoadError(f"its metadata names the class {twice[0]!r} more than once")
    return names


def check_input(x: np.ndarray) -> np.ndarray:
    """Validate and normalise a batch: float32, C-contiguous, shape (N, T, 28), N >= 1, T >= 1."""
    if not isinstance(x, np.ndarray):
        raise InputError(f"expected a numpy array, got {type(x).__name__}")
    if x.ndim != 3 or x.shape[2] != 28 or x.shape[0] < 1 or x.shape[1] < 1:
        raise InputError(f"expected input of shape (N, T, 28) with N, T >= 1, got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)
