"""ONNX Runtime on the CPU, CUDA or TensorRT execution provider (``.onnx``)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from lstm_export.errors import ModelLoadError
from lstm_export.infer.base import Device, Runner, check_input
from lstm_export.infer.runners.ort_session import (
    CUDA_EP,
    TRT_EP,
    cuda_diagnosis,
    open_session,
    wants_gpu,
)

log = logging.getLogger(__name__)


_OPT_LEVELS = {"disable": 0, "basic": 1, "extended": 2, "all": 99}


class OnnxRuntimeRunner(Runner):
    """An ONNX file in an ``onnxruntime.InferenceSession``.

    Options: ``threads`` (intra-op, default ORT's choice), ``inter_op_threads``,
    ``optimization`` (``disable|basic|extended|all``, default ``all``), ``spinning`` (bool, default
    True), ``tensorrt`` (bool: TensorRT EP first), ``io_binding`` (bool, CUDA only, default True
    there), ``cuda_graph`` (bool, CUDA only; fixed input shape).

    CPU tuning (measured in ``benchmarks/``): ``micro_batch`` (int) splits larger inputs into runs
    of at most that many rows, which keeps the LSTM's per-step state in cache; ``serial_up_to``
    (int) runs inputs of at most that many rows on a second, single-threaded session, since
    waking a thread pool costs more than it saves on a batch of one (torch does the same through
    its per-op grain size).
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

        cuda_options = {"enable_cuda_graph": "1"} if self.options.get("cuda_graph") else {}
        device = self.requested_device.value
        self.session = open_session(
            self.path,
            device,
            opts,
            cuda_options=cuda_options,
            tensorrt=bool(self.options.get("tensorrt")),
        )
        got = self.session.get_providers()
        on_gpu = CUDA_EP in got or TRT_EP in got
        if self.requested_device == Device.auto:
            if on_gpu:
                self.device_note = f"auto: {got[0]}"
            elif not wants_gpu(device):
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
        self._serial: Any = None
        serial_up_to = int(self.options.get("serial_up_to") or 0)
        if serial_up_to and self.device == "cpu" and opts.intra_op_num_threads != 1:
            opts.intra_op_num_threads = 1
            self._serial = open_session(self.path, "cpu", opts)

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
            return self._run_host(prepared)
        if self.options.get("cuda_graph"):
            self.session.run_with_iobinding(self._binding)
            return self._gpu_out
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, prepared)
        binding.bind_output(self.output_name, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0]

    def _run_host(self, x: np.ndarray) -> np.ndarray:
        """CPU path: micro-batches of at most ``micro_batch`` rows; small ones run serially."""
        step = int(self.options.get("micro_batch") or 0)
        if step and x.shape[0] > step:
            return np.concatenate([self._run_host(x[i : i + step]) for i in range(0, len(x), step)])
        serial = self._serial is not None and x.shape[0] <= int(self.options["serial_up_to"])
        session = self._serial if serial else self.session
        return session.run([self.output_name], {self.input_name: x})[0]

    def fetch(self, result: Any) -> np.ndarray:
        if isinstance(result, np.ndarray):
            return np.asarray(result, dtype=np.float32)
        return np.asarray(result.numpy(), dtype=np.float32)  # device -> host copy

    def _close(self) -> None:
        del self.session
        self._serial = None
