"""Which execution provider ONNX Runtime runs each node on, for a requested device.

ORT decides placement after its graph optimisations, so the answer comes from a real session:
one profiled run on a zero batch, whose trace names the provider of every executed kernel.
``onnxruntime-gpu`` lists CUDA even where it cannot load, so only ``session.get_providers()``
counts.
"""

from __future__ import annotations

import ctypes
import json
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lstm_export.errors import DeviceError, ModelLoadError

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"


@dataclass(frozen=True)
class NodePlacement:
    """One executed kernel: node name (after ORT's optimisations), op type, provider."""

    node: str
    op_type: str
    provider: str


@dataclass
class Placement:
    """The providers a session got and where each node ran."""

    device: str
    session_providers: list[str]
    nodes: list[NodePlacement]

    @property
    def by_provider(self) -> dict[str, int]:
        return dict(Counter(n.provider for n in self.nodes).most_common())


def cuda_driver_present() -> bool:
    """Whether the NVIDIA driver library loads (without it ORT's CUDA provider cannot)."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def providers_for(device: str) -> list[Any]:
    """The provider list to ask ORT for: ``cpu`` -> CPU; ``cuda``/``auto`` -> CUDA then CPU.

    ``auto`` on a machine without an NVIDIA driver asks for the CPU only, which keeps ORT from
    printing its provider-loading errors.
    """
    if device == "cpu" or (device == "auto" and not cuda_driver_present()):
        return [CPU_EP]
    return [CUDA_EP, CPU_EP]


def _preload_cuda(ort: Any) -> None:
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception as exc:  # the session's providers will tell
            log.debug("onnxruntime.preload_dlls failed: %s", exc)


def open_session(model: Path | bytes, device: str, *, profile_dir: Path | None = None) -> Any:
    """An InferenceSession for ``device`` (``cpu``, ``cuda`` or ``auto``).

    ``cuda`` raises DeviceError naming why CUDA is not usable; ``auto`` falls back to the CPU.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if profile_dir is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_dir / "ort-profile")
    if device == "cuda" and not cuda_driver_present():
        from lstm_export.infer.runners.ort import cuda_diagnosis

        raise DeviceError(f"--device cuda asked, but {cuda_diagnosis()}")
    providers = providers_for(device)
    if CUDA_EP in providers:
        _preload_cuda(ort)
    what = model if isinstance(model, bytes) else str(model)
    try:
        session = ort.InferenceSession(what, opts, providers=providers)
    except Exception as exc:
        from lstm_export.export.validate import ort_error_text

        raise ModelLoadError(f"ONNX Runtime cannot load the model: {ort_error_text(exc)}") from exc
    if device == "cuda" and CUDA_EP not in session.get_providers():
        from lstm_export.infer.runners.ort import cuda_diagnosis

        raise DeviceError(f"--device cuda asked, but {cuda_diagnosis()}")
    return session


def _zero_input(session: Any) -> dict[str, np.ndarray]:
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        dtype = np.float16 if "float16" in inp.type else np.float32
        feeds[inp.name] = np.zeros(shape, dtype=dtype)
    return feeds


def node_placement(model: Path | bytes, device: str = "cpu") -> Placement:
    """Run ``model`` once (batch 1 of zeros) with profiling and read each kernel's provider."""
    with tempfile.TemporaryDirectory(prefix="lstm-export-profile-") as work:
        session = open_session(model, device, profile_dir=Path(work))
        session.run(None, _zero_input(session))
        trace = Path(session.end_profiling())
        events = json.loads(trace.read_text())
    seen: dict[str, NodePlacement] = {}
    for event in events:
        args = event.get("args", {})
        name = str(event.get("name", ""))
        if (
            event.get("cat") != "Node"
            or "provider" not in args
            or not name.endswith("_kernel_time")
        ):
            continue
        node = name[: -len("_kernel_time")]
        seen.setdefault(node, NodePlacement(node, str(args.get("op_name", "?")), args["provider"]))
    return Placement(
        device=device, session_providers=list(session.get_providers()), nodes=list(seen.values())
    )
