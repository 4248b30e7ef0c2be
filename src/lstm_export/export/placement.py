"""Which execution provider ONNX Runtime runs each node on, for a requested device: one profiled
run of a real session (placement is decided after ORT's graph optimisations), whose trace names
the provider of every executed kernel.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np


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


def node_placement(model: Path, device: str = "cpu") -> Placement:
    """Run ``model`` once (batch 1 of zeros) through the ONNX Runtime runner with profiling on
    and read which execution provider ran each kernel."""
    from lstm_export.infer.registry import make_runner

    with tempfile.TemporaryDirectory(prefix="lstm-export-profile-") as work:
        prefix = str(Path(work) / "ort-profile")
        with make_runner(model, "onnxruntime", device, profile_prefix=prefix) as runner:
            runner.infer(np.zeros((1, 28, 28), np.float32))
            providers = list(getattr(runner, "providers", []))
            trace = Path(runner.session.end_profiling())  # type: ignore[attr-defined]
            events = json.loads(trace.read_text())
    seen: dict[str, NodePlacement] = {}
    for event in events:
        args, name = event.get("args", {}), str(event.get("name", ""))
        if event.get("cat") == "Node" and "provider" in args and name.endswith("_kernel_time"):
            node = name.removesuffix("_kernel_time")
            seen.setdefault(
                node, NodePlacement(node, str(args.get("op_name", "?")), args["provider"])
            )
    return Placement(device=device, session_providers=providers, nodes=list(seen.values()))
