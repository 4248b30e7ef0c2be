"""Which execution provider ONNX Runtime runs each node on, for a requested device.

ORT decides placement after its graph optimisations, so the answer comes from a real session:
one profiled run on a zero batch, whose trace names the provider of every executed kernel.
``onnxruntime-gpu`` lists CUDA even where it cannot load, so only ``session.get_providers()``
counts.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lstm_export.infer.runners.ort_session import open_session

log = logging.getLogger(__name__)


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


def open_profiled_session(model: Path | bytes, device: str, profile_dir: Path) -> Any:
    """A session on ``device`` that writes an ORT profile trace into ``profile_dir``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(profile_dir / "ort-profile")
    return open_session(model, device, opts)


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
        session = open_profiled_session(model, device, Path(work))
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
