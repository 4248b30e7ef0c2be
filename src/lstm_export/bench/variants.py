"""What the bench measures: named backend variants over the exported artifacts.

Adding a variant is one line in :data:`VARIANTS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from lstm_export.artifacts import Artifact
from lstm_export.errors import BenchError


class BenchDevice(str, Enum):
    """Where the bench runs (no ``auto``: a benchmark must say what it measured)."""

    cpu = "cpu"
    cuda = "cuda"


@dataclass(frozen=True)
class Variant:
    """One row group of the bench: a runner over an artifact with fixed options."""

    name: str
    artifact: Artifact
    backend: str  # registry name in lstm_export.infer.registry.RUNNERS
    devices: frozenset[BenchDevice]
    precision: str  # fp32 | int8 | fp16
    options: Mapping[str, Any] = field(default_factory=dict)


_CPU = frozenset({BenchDevice.cpu})
_CUDA = frozenset({BenchDevice.cuda})
_BOTH = _CPU | _CUDA
# ONNX Runtime CPU options that the README's measurements chose (the CUDA path ignores them):
# 64-row micro-batches keep the LSTM state in cache at large batches.
_CPU_TUNING: Mapping[str, Any] = {"micro_batch": 64}

VARIANTS: tuple[Variant, ...] = (
    Variant("eager", Artifact.checkpoint, "eager", _BOTH, "fp32"),
    Variant("torchscript", Artifact.torchscript, "torchscript", _BOTH, "fp32"),
    Variant("onnxruntime", Artifact.onnx, "onnxruntime", _BOTH, "fp32", _CPU_TUNING),
    # DynamicQuantizeLSTM is a CPU kernel in ONNX Runtime.
    Variant(
        "onnxruntime-int8",
        Artifact.onnx_int8,
        "onnxruntime",
        _CPU,
        "int8",
        {**_CPU_TUNING, "serial_up_to": 1},
    ),
    Variant(
        "onnxruntime-cudagraph", Artifact.onnx, "onnxruntime", _CUDA, "fp32", {"cuda_graph": True}
    ),
    Variant("onnxruntime-fp16", Artifact.onnx_fp16, "onnxruntime", _CUDA, "fp16"),
)
REFERENCE = "eager"


def select_variants(names: list[str] | None, device: BenchDevice) -> list[Variant]:
    """The variants to run on ``device``: all available by default, else those named (eager first)."""
    by_name = {v.name: v for v in VARIANTS}
    if names is None:
        chosen = [v for v in VARIANTS if device in v.devices]
    else:
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise BenchError(f"unknown backend {unknown[0]!r}; choose from {', '.join(by_name)}")
        chosen = [by_name[n] for n in dict.fromkeys(names)]
        wrong = [v.name for v in chosen if device not in v.devices]
        if wrong:
            raise BenchError(f"backend {wrong[0]!r} does not run on {device.value}")
    if REFERENCE not in [v.name for v in chosen]:
        chosen.insert(0, by_name[REFERENCE])  # every ratio is against eager in the same run
    chosen.sort(key=lambda v: v.name != REFERENCE)
    return chosen
