"""ONNX Runtime on the CPU, CUDA or TensorRT execution provider (``.onnx``).

``onnxruntime-gpu`` lists CUDAExecutionProvider even where CUDA cannot load, so the providers a
session really got (``session.get_providers()``) decide, never ``get_available_providers()``.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

import numpy as np

from lstm_export.errors import DeviceError, ModelLoadError
from lstm_export.infer.base import Device, Runner, check_input

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"

_OPT_LEVELS = {"disable": 0, "basic": 1, "extended": 2, "all": 99}


class OnnxRuntimeRunner(Runner):
    """An ONNX file in an ``onnxruntime.InferenceSession``.

    Options: ``threads`` (intra-op, default ORT's choice), ``inter_op_threads``,
    ``optimization`` (``disable|basic|extended|all``, default ``all``), ``spinning`` (bool, default
    True; the bench turns it off), ``tensorrt`` (bool: TensorRT EP first), ``io_binding`` (bool,
    CUDA only, default True there), ``cuda_graph`` (bool, CUDA only; fixed input shape).
    """

    name = "onnxruntime"
    suffixes = (".onnx",)

    def _load(self) -> None:
        import onnxruntime as ort

        self._ort = ort
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # our own diagnosis replaces ORT's provider warnings
        level = str(self.options.get("optimization", "all"))
        if level not in _OPT_LEVELS:
            raise ModelLoadError(f"unknown graph optimisation level {level!r}")
        opts.graph_optimization_level = ort.GraphOptimizationLevel(_OPT_LEVELS[level])
        if self.options.get("threads"):
            opts.intra_op_num_threads = int(self.options["threads"])
        if self.options.get("inter_op_threads"):
            opts.inter_op_num_threads = int(self.options["inter_op_threads"])
        if not self.options.get("spinning", True):
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")

        want_gpu = self.requested_device == Device.cuda or (
            self.requested_device == Device.auto and _has_nvidia_driver()
        )
        providers: list[Any] = [CPU_EP]
        if want_gpu:
            _preload_cuda_libraries(ort)
            cuda_options: dict[str, str] = {}
            if self.options.get("cuda_graph"):
                cuda_options["enable_cuda_graph"] = "1"
            providers = [(CUDA_EP, cuda_options), CPU_EP]
            if self.options.get("tensorrt"):
                providers.insert(0, TRT_EP)
        if want_gpu:  # a provider that fails to load logs errors; cuda_diagnosis() says why
            ort.set_default_logger_severity(4)
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as exc:  # InvalidProtobuf, NoSuchFile, Fail...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(f"{self.path} cannot be loaded by ONNX Runtime: {first}") from exc
        finally:
            ort.set_default_logger_severity(3)
        got = self.session.get_providers()
        on_gpu = CUDA_EP in got or TRT_EP in got
        if self.requested_device == Device.cuda and not on_gpu:
            raise DeviceError(f"--device cuda asked, but {cuda_diagnosis()}")
        if self.options.get("tensorrt") and self.requested_device == Device.cpu:
            raise DeviceError("the TensorRT execution provider needs --device cuda (or auto)")
        if self.options.get("tensorrt") and TRT_EP not in got and self.requested_device != "auto":
            raise DeviceError("TensorRT execution provider asked, but it did not load")
        if self.requested_device == Device.auto:
            if on_gpu:
                self.device_note = f"auto: {got[0]}"
            elif not want_gpu:
                self.device_note = "auto: CPU, since no NVIDIA driver (libcuda.so.1 missing)"
            else:
                self.device_note = f"auto: CPU, since {cuda_diagnosis()}"
            log.info("device %s", self.device_note)
        self.device = "cuda" if on_gpu else "cpu"
        self.providers = got
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self._binding: Any = None
        self._bound_shape: tuple[int, ...] | None = None

    @property
    def description(self) -> str:
        providers = getattr(self, "providers", None)
        return f"{self.name} ({providers[0] if providers else 'not loaded'})"

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return self.fetch(self.run_prepared(self.prepare(x)))

    @property
    def _bound(self) -> bool:
        return self.device == "cuda" and bool(self.options.get("io_binding", True))

    def prepare(self, x: np.ndarray) -> Any:
        """On CUDA with IO binding: an OrtValue on the GPU; else the host array."""
        x = check_input(x)
        if not self._bound:
            return x
        ort = self._ort
        if not self.options.get("cuda_graph"):
            return ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        # CUDA graphs replay fixed device addresses: one input/output buffer pair per shape.
        if self._bound_shape != x.shape:
            self._gpu_in = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            self._gpu_out = ort.OrtValue.ortvalue_from_shape_and_type(
                (x.shape[0], 10), np.float32, "cuda", 0
            )
            self._binding = self.session.io_binding()
            self._binding.bind_ortvalue_input(self.input_name, self._gpu_in)
            self._binding.bind_ortvalue_output(self.output_name, self._gpu_out)
            self._bound_shape = x.shape
        else:
            self._gpu_in.update_inplace(x)
        return self._gpu_in

    def run_prepared(self, prepared: Any) -> Any:
        """Run; on CUDA the output stays on the GPU (an OrtValue) until :meth:`fetch`."""
        if not self._bound:
            return self.session.run([self.output_name], {self.input_name: prepared})[0]
        if self.options.get("cuda_graph"):
            self.session.run_with_iobinding(self._binding)
            return self._gpu_out
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, prepared)
        binding.bind_output(self.output_name, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0]

    def fetch(self, result: Any) -> np.ndarray:
        if isinstance(result, np.ndarray):
            return np.asarray(result, dtype=np.float32)
        return np.asarray(result.numpy(), dtype=np.float32)  # device -> host copy

    def _close(self) -> None:
        del self.session


def _preload_cuda_libraries(ort: Any) -> None:
    """Make the CUDA and cuDNN libraries from the nvidia-* pip wheels loadable (ORT >= 1.21)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # missing wheels: the session's providers will tell
        log.debug("onnxruntime.preload_dlls failed: %s", exc)


def _has_nvidia_driver() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def cuda_diagnosis() -> str:
    """One line naming why ONNX Runtime could not use CUDA here."""
    if not _has_nvidia_driver():
        return "the CUDA execution provider did not load: no NVIDIA driver (libcuda.so.1 missing)"
    for lib in ("libcudart.so.12", "libcudart.so.13"):
        try:
            ctypes.CDLL(lib)
            break
        except OSError:
            continue
    else:
        return "the CUDA execution provider did not load: no CUDA runtime (libcudart) found"
    try:
        import onnxruntime as ort

        if CUDA_EP not in ort.get_available_providers():
            return "the CUDA execution provider did not load: this onnxruntime has no CUDA build"
    except ImportError:
        pass
    return "the CUDA execution provider did not load (driver and runtime present; check cuDNN)"
