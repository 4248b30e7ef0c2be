"""OpenVINO runtime on the CPU: the exported ONNX file read directly (``.onnx``), or an OpenVINO
IR (``.xml`` + ``.bin``, written by :func:`save_ir`). ``openvino`` is an optional extra, imported
only when a runner loads."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lstm_export.devices import Device
from lstm_export.errors import ConfigError, DeviceError, ModelLoadError
from lstm_export.infer.base import Runner, TrustOption, check_counts, check_input
from lstm_export.trust import onnx_problem, openvino_ops_problem, refuse

log = logging.getLogger(__name__)

#: CPU flags that run bf16 dot products natively (AVX512-BF16, AMX); elsewhere bf16 is emulated
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: inference precisions of the CPU plugin, to their OpenVINO names (``INFERENCE_PRECISION_HINT``)
PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
#: OpenVINO's high-level ``PERFORMANCE_HINT`` values
HINTS = ("latency", "throughput")


@dataclass(frozen=True)
class OpenVinoOptions(TrustOption):
    """Options of :class:`OpenVinoRunner`: ``precision`` ``fp32`` or ``bf16``; ``hint``
    ``latency`` or ``throughput`` (with several streams a batch runs as one slice per infer
    request, in parallel); ``threads`` (None: OpenVINO's choice); ``static_shapes``: compile once
    per input shape, sparing the CPU plugin its shape inference on every call; ``trusted``: allow
    operations outside OpenVINO's operator sets and ONNX domains lstm-export does not write."""

    precision: str = "fp32"
    hint: str = "latency"
    threads: int | None = None
    static_shapes: bool = True

    def __post_init__(self) -> None:
        for name, choices in (("precision", tuple(PRECISIONS)), ("hint", HINTS)):
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"unknown {name} {getattr(self, name)!r} (choose {', '.join(choices)})"
                )
        check_counts(self, "threads")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def bf16_support() -> tuple[bool, str]:
    """Whether this CPU runs bf16 natively, and a phrase saying how it was told."""
    found = [f for f in BF16_FLAGS if f in cpu_flags()]
    if found:
        return True, f"native ({', '.join(found)})"
    return False, f"emulated (no {' or '.join(BF16_FLAGS)} in /proc/cpuinfo)"


def openvino_problem() -> str | None:
    """Why OpenVINO cannot be used here (one line), or None when it imports."""
    try:
        import_openvino()
    except ImportError as exc:
        return f"openvino is not installed ({exc}); pip install 'lstm-export[openvino]'"
    return None


def import_openvino() -> Any:
    """``import openvino`` without its usage telemetry: hidden for the import, its model converter
    uses a no-op stub instead of sending an event from a forked process (unsafe beside threads)."""
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    hidden = "openvino_telemetry" not in sys.modules
    if hidden:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
    try:
        import openvino
    finally:
        if hidden and sys.modules.get("openvino_telemetry", 0) is None:
            del sys.modules["openvino_telemetry"]
    return openvino


def _core() -> Any:
    """OpenVINO's runtime core; ModelLoadError naming what to install where it is missing."""
    if problem := openvino_problem():
        raise ModelLoadError(f"the openvino backend needs the openvino package: {problem}")
    return _shared_core()


@functools.lru_cache(maxsize=1)
def _shared_core() -> Any:
    return import_openvino().Core()


def save_ir(onnx_path: Path | str, xml_path: Path | str) -> Path:
    """Convert an exported ONNX file to OpenVINO IR (``.xml`` + ``.bin``), keeping its metadata."""
    model = _core().read_model(str(onnx_path))
    import_openvino().save_model(model, str(xml_path), compress_to_fp16=False)
    return Path(xml_path)


class OpenVinoRunner(Runner):
    """An exported ONNX file (or IR) compiled by OpenVINO for the CPU."""

    name = "openvino"
    suffixes = (".xml", ".onnx")  # .onnx files go to onnxruntime unless --backend openvino
    Options = OpenVinoOptions
    options: OpenVinoOptions

    def _load(self) -> None:
        _core()
        if self.requested_device == Device.cuda:
            raise DeviceError(
                "CUDA was asked for, but the openvino backend runs on the CPU only "
                "(onnxruntime runs ONNX files on CUDA)"
            )
        if self.requested_device == Device.auto:
            self.device_note = "auto: CPU, since the openvino backend runs on the CPU only"
        self._check_file()
        try:
            self.model = _core().read_model(str(self.path))
        except Exception as exc:  # RuntimeError from the ONNX or IR frontend
            raise ModelLoadError(
                f"{self.path} is not a model OpenVINO can read: {_last_line(exc)}"
            ) from exc
        if not self.options.trusted and (problem := openvino_ops_problem(self.model)):
            raise refuse(self.path, problem)
        output, shape = self.model.outputs[0], self.model.outputs[0].get_partial_shape()
        if shape.rank.is_static:
            dims = [d.get_length() if d.is_static else "?" for d in shape]
            self.check_outputs(dims, output.get_element_type().is_real())
        # where OpenVINO keeps an ONNX file's metadata_props (class names...), in an IR too
        model, key = self.model, "framework"
        keys = model.get_rt_info()[key].keys() if model.has_rt_info([key]) else ()
        self.metadata = {str(k): model.get_rt_info([key, k]).astype(str) for k in keys}
        self.device = "cpu"
        o = self.options
        self.description = f"{self.name} (CPU, {o.precision}, {o.hint})"
        native, self.bf16_note = bf16_support()
        if o.precision == "bf16" and not native:
            log.warning(
                "openvino bf16 on this CPU is %s: expect it slower than fp32", self.bf16_note
            )
        self.config: dict[str, Any] = {
            "PERFORMANCE_HINT": o.hint.upper(),
            "INFERENCE_PRECISION_HINT": PRECISIONS[o.precision],
            **({"INFERENCE_NUM_THREADS": o.threads} if o.threads else {}),
        }
        self._compiled: dict[tuple[int, ...] | None, _Compiled] = {}
        compiled = self._compile(None).compiled  # dynamic batch: it compiles before any input
        self.precision_used = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.streams_used = int(compiled.get_property("NUM_STREAMS"))
        self.threads_used = int(compiled.get_property("INFERENCE_NUM_THREADS"))
        self._requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    def _check_file(self) -> None:
        """ModelLoadError for a file that is not ONNX or IR, before OpenVINO tries every frontend
        on it (its TensorFlow frontend prints parse errors to stderr)."""
        if self.path.suffix.lower() == ".onnx":
            if problem := onnx_problem(self.path, self.options.trusted):
                raise refuse(self.path, problem)
        else:
            with open(self.path, "rb") as f:
                head = f.read(256).lstrip()
            if not head.startswith((b"<?xml", b"<net")):
                raise ModelLoadError(f"{self.path} is not an OpenVINO IR file (no <net> XML)")

    def _compile(self, shape: tuple[int, ...] | None) -> _Compiled:
        """The model compiled for inputs of ``shape`` (None or not ``static_shapes``: any batch)."""
        shape = shape if self.options.static_shapes else None
        if shape not in self._compiled:
            model = self.model
            if shape is not None:
                model = self.model.clone()
                model.reshape({0: list(shape)})
            try:
                compiled = _core().compile_model(model, "CPU", self.config)
            except Exception as exc:
                raise ModelLoadError(
                    f"OpenVINO could not compile {self.path}: {_last_line(exc)}"
                ) from exc
            self._compiled[shape] = _Compiled(compiled)
        return self._compiled[shape]

    def prepare(self, x: np.ndarray) -> np.ndarray:
        return check_input(x)

    def run_prepared(self, x: np.ndarray) -> np.ndarray:
        """One input; with several infer requests, one slice per request on parallel streams."""
        n = min(self._requests, x.shape[0])
        if n <= 1:
            request = self._compile(x.shape).request
            return np.asarray(request.infer({0: x}, share_inputs=True, share_outputs=False)[0])
        parts = np.array_split(x, n)  # slices differ by <= 1 row
        outputs: list[np.ndarray] = [np.empty(0, np.float32)] * n
        for i, part in enumerate(parts):
            self._compile(part.shape).start(part, outputs, i)
        for shape in {part.shape for part in parts}:
            self._compile(shape).queue.wait_all()
        return np.concatenate(outputs)

    def fetch(self, result: np.ndarray) -> np.ndarray:
        return np.asarray(result, dtype=np.float32)

    def _close(self) -> None:
        self._compiled.clear()
        del self.model


class _Compiled:
    """One compiled model: a reused infer request, and a queue of them for sliced batches."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.queue: Any = None

    def start(self, part: np.ndarray, outputs: list[np.ndarray], index: int) -> None:
        """Start ``part`` on a free infer request; its logits land in ``outputs[index]``."""
        if self.queue is None:
            self.queue = import_openvino().AsyncInferQueue(self.compiled)
            self.queue.set_callback(_store_output)
        self.queue.start_async({0: part}, (outputs, index))


def _last_line(exc: BaseException) -> str:
    """The telling line of an OpenVINO error: its last non-empty one (the first names a file)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def _store_output(request: Any, userdata: tuple[list[np.ndarray], int]) -> None:
    outputs, index = userdata
    outputs[index] = np.array(request.get_output_tensor(0).data)  # a copy: the buffer is reused
