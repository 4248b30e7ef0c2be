"""What the bench measures: named backend variants over the exported artifacts, ours beside the
peers a user could ship instead (OpenVINO, PyTorch's bf16 autocast); one line each in :data:`VARIANTS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from lstm_export.artifacts import Artifact
from lstm_export.errors import BenchError


class BenchDevice(str, Enum):
    """Where the bench runs (no ``auto``: a benchmark must say what it measured)."""

    cpu = "cpu"
    cuda = "cuda"


#: precisions held to an accuracy delta (at most :data:`MAX_ACCURACY_DROP`), not to agreement
REDUCED_PRECISIONS = frozenset({"int8", "bf16", "fp16", "tf32"})


def _openvino_missing() -> str | None:
    from lstm_export.infer.runners.openvino_runner import openvino_problem

    return openvino_problem()


def _bf16_emulated() -> str | None:
    from lstm_export.infer.runners.openvino_runner import bf16_support

    native, how = bf16_support()
    return None if native else f"bf16 would be {how}, so its timing says nothing"


def _openvino_bf16_problem() -> str | None:  # a function, not a lambda: variants are pickled
    return _openvino_missing() or _bf16_emulated()


@dataclass(frozen=True)
class Variant:
    """One row group of the bench: a runner over an artifact with fixed options."""

    name: str
    artifact: Artifact
    backend: str  # registry name in lstm_export.infer.registry.RUNNERS
    devices: frozenset[BenchDevice]
    precision: str  # fp32 | int8 | fp16 | bf16 | tf32
    options: Mapping[str, Any] = field(default_factory=dict)
    #: ``reference`` (eager), ``export`` (one of ours) or ``peer`` (a runtime a user could pick
    #: instead of our exports)
    role: str = "export"
    #: why the variant cannot run here (a missing package, no native bf16), or None
    unavailable: Callable[[], str | None] | None = field(default=None, compare=False)


_CPU = frozenset({BenchDevice.cpu})
_CUDA = frozenset({BenchDevice.cuda})
_BOTH = _CPU | _CUDA
# ONNX Runtime CPU options that the README's measurements chose (the CUDA path ignores them):
# 64-row micro-batches keep the LSTM state in cache at large batches.
_CPU_TUNING: Mapping[str, Any] = {"micro_batch": 64}
# OpenVINO as its CPU guide says: the throughput hint (one stream per core, each running a slice
# of the batch) with static shapes; a batch of one runs as one request on one stream.
_OV_TUNING: Mapping[str, Any] = {"hint": "throughput", "static_shapes": True}

_INT8_TUNING: Mapping[str, Any] = {"micro_batch": 32, "serial_up_to": 1, "sliced": True}
_E, _O, _OV = Artifact.checkpoint, Artifact.onnx, "openvino"

# fmt: off
VARIANTS: tuple[Variant, ...] = (
    Variant("eager", _E, "eager", _BOTH, "fp32", role="reference"),
    Variant("torchscript", Artifact.torchscript, "torchscript", _BOTH, "fp32"),
    Variant("onnxruntime", _O, "onnxruntime", _BOTH, "fp32", _CPU_TUNING),
    # DynamicQuantizeLSTM is a CPU kernel in ONNX Runtime; 32-row micro-batches measured best
    # for it (docs/cpu-runtimes.md: 184 against 160 GOP/s per core with 64 rows at batch 256).
    Variant("onnxruntime-int8", Artifact.onnx_int8, "onnxruntime", _CPU, "int8", _INT8_TUNING),
    Variant("onnxruntime-cudagraph", _O, "onnxruntime", _CUDA, "fp32", {"cuda_graph": True}),
    Variant("onnxruntime-fp16", Artifact.onnx_fp16, "onnxruntime", _CUDA, "fp16"),
    # TF32 is off in every fp32 row (true fp32, as the reference); these rows show what it buys.
    # PyTorch allows it in cuDNN by default, so eager-tf32 is eager PyTorch as a user gets it.
    Variant("onnxruntime-tf32", _O, "onnxruntime", _CUDA, "tf32", {"tf32": True}),
    Variant("eager-tf32", _E, "eager", _CUDA, "tf32", {"tf32": True}, role="peer"),
    # Peers: what a user could ship instead of our exports, on the same files.
    Variant(_OV, _O, _OV, _CPU, "fp32", _OV_TUNING, "peer", _openvino_missing),
    Variant("openvino-bf16", _O, _OV, _CPU, "bf16", {**_OV_TUNING, "precision": "bf16"}, "peer",
            _openvino_bf16_problem),
    Variant("eager-bf16", _E, "eager", _CPU, "bf16", {"autocast": "bf16"}, "peer", _bf16_emulated),
)
# fmt: on
REFERENCE = "eager"


@dataclass(frozen=True)
class Selection:
    """The variants to measure, and those of the default set left out here, with the reason."""

    variants: list[Variant]
    skipped: dict[str, str] = field(default_factory=dict)


def select_variants(names: list[str] | None, device: BenchDevice) -> Selection:
    """The variants to run on ``device``, eager first: those named (one that cannot run here is an
    error), else all that can run here (the others skipped with their reason)."""
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
    problems = {v.name: v.unavailable() for v in chosen if v.unavailable is not None}
    skipped = {name: problem for name, problem in problems.items() if problem is not None}
    if names is not None and skipped:
        name, problem = next(iter(skipped.items()))
        raise BenchError(f"backend {name!r} cannot run here: {problem}")
    chosen = [v for v in chosen if v.name not in skipped]
    if REFERENCE not in [v.name for v in chosen]:
        chosen.insert(0, by_name[REFERENCE])  # every ratio is against eager in the same run
    chosen.sort(key=lambda v: v.name != REFERENCE)
    return Selection(chosen, skipped)
