"""ONNX Runtime on the CPU or CUDA execution provider (``.onnx``)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lstm_export.devices import Device, nvidia_driver_present, usable_cores
from lstm_export.infer.base import Runner, TrustOption, check_counts, check_input
from lstm_export.ort_session import CUDA_EP, cuda_diagnosis, open_session
from lstm_export.trust import onnx_problem, refuse

log = logging.getLogger(__name__)

#: ONNX Runtime's names of the output types that are logits
_FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)")


@dataclass(frozen=True)
class OrtOptions(TrustOption):
    """Options of :class:`OnnxRuntimeRunner`: ``threads`` (None: ONNX Runtime's choice);
    ``spinning`` idle pool threads; on CUDA ``cuda_graph`` (one per input shape) and ``tf32`` (off:
    true fp32); ``profile_prefix`` of a profile trace; ``trusted``. CPU tuning: ``micro_batch``
    rows at most per run; inputs of at most ``serial_up_to`` rows on a single-threaded session;
    ``sliced``: a batch of 8+ rows per thread as ``threads`` single-threaded slices at once."""

    threads: int | None = None
    spinning: bool = True
    cuda_graph: bool = False
    tf32: bool = False
    micro_batch: int | None = None
    serial_up_to: int | None = None
    sliced: bool = False
    profile_prefix: str | None = None

    def __post_init__(self) -> None:
        check_counts(self, "threads", "micro_batch", "serial_up_to")


#: the fewest rows a parallel slice gets; smaller batches run whole
MIN_SLICE_ROWS = 8


@dataclass
class _GraphSlot:
    """One captured CUDA graph: fixed device buffers, their binding and its graph id."""

    binding: Any
    gpu_in: Any
    gpu_out: Any
    run_options: Any


class OnnxRuntimeRunner(Runner):
    """An ONNX file in an ``onnxruntime.InferenceSession``."""

    name = "onnxruntime"
    suffixes = (".onnx",)
    Options = OrtOptions
    options: OrtOptions
    #: no spinning: idle pool threads would steal the decoder's core
    planned: ClassVar[dict[str, Any]] = {"spinning": False}

    def _load(self) -> None:
        import onnxruntime as ort

        self._ort = ort
        o = self.options
        if problem := onnx_problem(self.path, o.trusted):
            raise refuse(self.path, problem)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = o.threads or 0  # 0: ONNX Runtime's choice
        if not o.spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if o.profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = o.profile_prefix
        cuda_opts = {"use_tf32": "1" if o.tf32 else "0"}
        if o.cuda_graph:
            cuda_opts["enable_cuda_graph"] = "1"
        self.session = open_session(self.path, self.requested_device, opts, cuda_options=cuda_opts)
        self.providers = got = self.session.get_providers()
        self.device = "cuda" if CUDA_EP in got else "cpu"
        self.description = f"{self.name} ({got[0]})"
        if self.requested_device == Device.auto:
            no_driver = "no NVIDIA driver (libcuda.so.1 missing)"
            why = cuda_diagnosis() if nvidia_driver_present() else no_driver
            self.device_note = (
                f"auto: {got[0]}" if self.device == "cuda" else f"auto: CPU, since {why}"
            )
            log.info("device %s", self.device_note)
        first, *rest = self.session.get_inputs()
        self.input_name = first.name
        output = self.session.get_outputs()[0]
        self.output_name = output.name
        self.check_outputs(output.shape or (), output.type in _FLOAT_TYPES)
        # --with-state: (name, layers, width) of h_0 and c_0, fed zeros by infer
        self._state_inputs = [(i.name, i.shape[0], i.shape[2]) for i in rest if len(i.shape) == 3]
        self.streams = len(self._state_inputs) == 2
        # inputs and outputs stay on the GPU (stateful files run through host feeds)
        self._bound = self.device == "cuda" and not self._state_inputs
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self._graphs: dict[tuple[int, ...], _GraphSlot] = {}
        self._serial: Any = None
        self._slices: list[Any] = []
        self._pool: Any = None
        slices = (o.threads or usable_cores()) if o.sliced else 0
        if self.device == "cpu" and (o.serial_up_to or slices > 1):
            opts.intra_op_num_threads = 1
            opts.enable_profiling = False
            if o.serial_up_to and o.threads != 1:
                self._serial = open_session(self.path, Device.cpu, opts)
            if slices > 1:
                self._slices = [open_session(self.path, Device.cpu, opts) for _ in range(slices)]
                self._pool = ThreadPoolExecutor(slices, "ort-slice")

    def _zero_state(self, batch: int) -> dict[str, np.ndarray]:
        """Zeros for each state input at ``batch`` images: the stateless start."""
        return {
            name: np.zeros((layers, batch, width), np.float32)
            for name, layers, width in self._state_inputs
        }

    def _step(self, x: np.ndarray, state: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        feeds = {self.input_name: x, **self._zero_state(x.shape[0])}
        if state is not None:
            (h_name, *_), (c_name, *_) = self._state_inputs
            feeds.update({h_name: state.h, c_name: state.c})
        logits, h_n, c_n = self.session.run(None, feeds)[:3]
        return logits, h_n, c_n

    def prepare(self, x: np.ndarray) -> Any:
        """On CUDA: an OrtValue on the GPU (or a captured graph's slot); else the host array."""
        x = check_input(x)
        if not self._bound:
            return x
        if not self.options.cuda_graph:
            return self._ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        slot = self._graph_slot(x)
        slot.gpu_in.update_inplace(x)
        return slot

    def _graph_slot(self, x: np.ndarray) -> _GraphSlot:
        """The captured graph for ``x``'s shape: a CUDA graph replays fixed device addresses, so
        each shape keeps its buffers and binding for the runner's life, under its own graph id."""
        if x.shape not in self._graphs:
            ort = self._ort
            gpu_in = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            gpu_out = ort.OrtValue.ortvalue_from_shape_and_type(
                (x.shape[0], self.classes or 10), np.float32, "cuda", 0
            )
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.input_name, gpu_in)
            binding.bind_ortvalue_output(self.output_name, gpu_out)
            run_options = ort.RunOptions()
            run_options.add_run_config_entry("gpu_graph_id", str(len(self._graphs) + 1))
            self._graphs[x.shape] = _GraphSlot(binding, gpu_in, gpu_out, run_options)
        return self._graphs[x.shape]

    def run_prepared(self, prepared: Any) -> Any:
        """Run; on CUDA the output stays on the GPU (an OrtValue) until :meth:`fetch`."""
        if not self._bound:
            return self._run_host(prepared)
        if isinstance(prepared, _GraphSlot):
            self.session.run_with_iobinding(prepared.binding, prepared.run_options)
            return prepared.gpu_out
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, prepared)
        binding.bind_output(self.output_name, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0]

    def _run_host(self, x: np.ndarray, session: Any = None) -> np.ndarray:
        """CPU path: a large batch in parallel slices, each in micro-batches of at most
        ``micro_batch`` rows; small ones run serially."""
        n = len(self._slices)
        if session is None and n and x.shape[0] >= n * MIN_SLICE_ROWS:
            parts = self._pool.map(self._run_host, np.array_split(x, n), self._slices)
            return np.concatenate(list(parts))
        step = self.options.micro_batch or 0
        if step and x.shape[0] > step:
            return np.concatenate(
                [self._run_host(x[i : i + step], session) for i in range(0, len(x), step)]
            )
        if session is None:
            serial = self._serial is not None and x.shape[0] <= (self.options.serial_up_to or 0)
            session = self._serial if serial else self.session
        feeds = {self.input_name: x, **self._zero_state(x.shape[0])}
        return session.run([self.output_name], feeds)[0]

    def fetch(self, result: Any) -> np.ndarray:
        host = result if isinstance(result, np.ndarray) else result.numpy()  # device -> host
        return np.asarray(host, dtype=np.float32)

    def _close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self._graphs, self._serial, self._slices, self._pool = {}, None, [], None
        del self.session
