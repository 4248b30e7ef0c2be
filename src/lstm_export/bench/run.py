"""Run the benchmark: parity on the test set and latency per batch size, one backend at a time."""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstm_export.bench.artifacts import ensure_artifacts
from lstm_export.bench.machine import machine_info, usable_cores
from lstm_export.bench.measure import MeasureJob, measure_in_child
from lstm_export.bench.stats import latency_stats
from lstm_export.bench.variants import REFERENCE, BenchDevice, Variant, select_variants
from lstm_export.errors import BenchError, DeviceError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FP32_AGREEMENT_FLOOR = 0.9999  # fp32 backends below this argmax agreement with eager are flagged
DEFAULT_BATCH_SIZES = (1, 8, 64, 256, 1024)

#: progress(description, done, total)
ProgressCallback = Callable[[str, int, int], None]


@dataclass
class BenchSettings:
    """Everything that decides what the bench measures."""

    device: BenchDevice = BenchDevice.cpu
    backends: list[str] | None = None  # None: every variant available on the device
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    warmup: int = 10
    iterations: int | None = None  # fixed count per batch size, or ...
    seconds: float | None = 1.0  # ... a time budget per batch size
    rounds: int = 3  # backends measured in turn this many times; the median round is reported
    threads: int | None = None  # intra-op threads for torch and ONNX Runtime; None: all cores
    parity_images: int = 0  # 0: the whole 10k test set
    reexport: bool = False
    data_dir: Path | None = None

    def check(self) -> None:
        if not self.batch_sizes:
            raise BenchError("give at least one batch size")
        bad = [b for b in self.batch_sizes if b < 1]
        if bad:
            raise BenchError(f"batch sizes must be >= 1, got {bad[0]}")
        if self.warmup < 0:
            raise BenchError(f"warmup must be >= 0, got {self.warmup}")
        if self.iterations is not None and self.iterations < 1:
            raise BenchError(f"iterations must be >= 1, got {self.iterations}")
        if self.seconds is not None and self.seconds <= 0:
            raise BenchError(f"seconds must be > 0, got {self.seconds}")
        if self.rounds < 1:
            raise BenchError(f"rounds must be >= 1, got {self.rounds}")
        if self.threads is not None and self.threads < 1:
            raise BenchError(f"threads must be >= 1, got {self.threads}")
        if self.parity_images < 0:
            raise BenchError(f"parity images must be >= 0, got {self.parity_images}")


@dataclass
class BenchResult:
    """What one run measured; :meth:`to_dict` is the documented JSON schema."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    model: dict[str, Any]
    backends: list[dict[str, Any]] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    parity: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **asdict(self),
        }


@dataclass
class BenchPlan:
    """A checked benchmark request: everything resolved before anything is measured."""

    settings: BenchSettings
    checkpoint: Path
    ckpt: dict[str, Any]
    variants: list[Variant]
    threads: int
    #: where MNIST is read from; :func:`run_bench` verifies it (it never downloads)
    data_dir: Path


def plan_bench(target: Path, settings: BenchSettings) -> BenchPlan:
    """Check the request (settings, checkpoint, backends, data); raise a typed error if bad."""
    from lstm_export.checkpoint import load_checkpoint, resolve_checkpoint
    from lstm_export.data.mnist import locate

    settings.check()
    if settings.device == BenchDevice.cuda:
        from lstm_export.devices import torch_cuda_problem

        problem = torch_cuda_problem()
        if problem is not None:
            raise DeviceError(f"CUDA was asked for, but it is not usable: {problem}")
    checkpoint = resolve_checkpoint(target)
    return BenchPlan(
        settings=settings,
        checkpoint=checkpoint,
        ckpt=load_checkpoint(checkpoint),
        variants=select_variants(settings.backends, settings.device),
        threads=settings.threads or usable_cores(),
        data_dir=locate(settings.data_dir)[0],
    )


def run_bench(plan: BenchPlan, *, on_progress: ProgressCallback | None = None) -> BenchResult:
    """Benchmark every planned backend against eager PyTorch."""
    from lstm_export.data.mnist import ensure_mnist, load_split
    from lstm_export.fileio import file_digest

    plan.data_dir = ensure_mnist(plan.data_dir)
    settings, checkpoint, ckpt = plan.settings, plan.checkpoint, plan.ckpt
    variants, threads = plan.variants, plan.threads
    progress = on_progress or (lambda *_: None)

    def exporting(artifact: Any) -> None:
        progress(f"exporting {artifact.value}", 0, 0)

    paths = ensure_artifacts(
        checkpoint,
        [v.artifact for v in variants],
        data_dir=plan.data_dir,
        force=settings.reexport,
        on_export=exporting,
    )
    test = load_split(plan.data_dir, "test")
    n = settings.parity_images or len(test.images)
    labels = test.labels[:n]
    result = BenchResult(
        machine=machine_info(settings.device.value),
        settings={
            **{k: v for k, v in asdict(settings).items() if k not in ("data_dir", "device")},
            "device": settings.device.value,
            "threads": threads,
            "batch_sizes": list(settings.batch_sizes),
            "isolation": "one process per backend",
        },
        model={
            "checkpoint": str(checkpoint),
            "sha256": file_digest(checkpoint),
            "test_accuracy": ckpt.get("metrics", {}).get("test_accuracy"),
            "model_config": ckpt["model_config"],
        },
    )
    reference: np.ndarray | None = None
    # timings[(variant, batch)] = one (compute, copies) pair per round
    timings: dict[tuple[str, int], list[tuple[np.ndarray, np.ndarray]]] = {}
    steps, done = settings.rounds * len(variants), 0
    for round_index in range(settings.rounds):
        for variant in variants:
            job = MeasureJob(
                variant=variant,
                path=paths[variant.artifact],
                device=settings.device.value,
                threads=threads,
                data_dir=plan.data_dir,
                parity_images=n,
                parity=round_index == 0,
                batch_sizes=tuple(settings.batch_sizes),
                warmup=settings.warmup,
                iterations=settings.iterations,
                seconds=None if settings.iterations else settings.seconds,
            )
            where = f"round {round_index + 1}/{settings.rounds}, {variant.name}"

            def report(text: str, where: str = where, done: int = done) -> None:
                progress(f"{where}: {text}", done, steps)

            measured = measure_in_child(job, report)
            done += 1
            if round_index == 0:
                result.backends.append(measured.description)
                if reference is None:
                    reference = measured.logits  # eager runs first: every backend is held to it
                result.parity.append(
                    _parity_row(variant, settings, measured.logits, reference, labels)
                )
            for batch in settings.batch_sizes:
                timings.setdefault((variant.name, batch), []).append(
                    (measured.compute[batch], measured.copies[batch])
                )
    for (name, batch), per_round in timings.items():
        compute, copies = median_round(per_round)
        stats = latency_stats(compute, batch)
        result.latency.append(
            {
                "backend": name,
                "device": settings.device.value,
                "batch_size": batch,
                **stats.to_dict(),
                "copy_ms": float(np.mean(copies) * 1e3),
                "rounds": len(per_round),
            }
        )
    progress("done", len(variants), len(variants))
    add_ratios(result.latency)
    return result


def median_round(
    per_round: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """The round whose median compute time is the median of all rounds (robust to a noisy one)."""
    order = sorted(range(len(per_round)), key=lambda i: float(np.median(per_round[i][0])))
    return per_round[order[(len(order) - 1) // 2]]


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Add ``latency_ratio`` (p50 / eager p50) and ``speedup`` (throughput / eager's) in place."""
    eager = {(r["device"], r["batch_size"]): r for r in rows if r["backend"] == REFERENCE}
    for row in rows:
        ref = eager.get((row["device"], row["batch_size"]))
        row["latency_ratio"] = row["p50_ms"] / ref["p50_ms"] if ref else None
        row["speedup"] = row["throughput"] / ref["throughput"] if ref else None


def _parity_row(
    variant: Variant,
    settings: BenchSettings,
    logits: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray,
) -> dict[str, Any]:
    from lstm_export import parity

    stats = parity.compare(logits, reference, labels)
    flagged = bool(
        parity.problems(
            stats, min_agreement=FP32_AGREEMENT_FLOOR if variant.precision == "fp32" else None
        )
    )
    return {
        "backend": variant.name,
        "device": settings.device.value,
        "precision": variant.precision,
        "images": stats.images,
        "accuracy": stats.accuracy,
        "agreement": stats.agreement,
        "max_abs_diff": stats.max_abs_diff,
        "mean_abs_diff": stats.mean_abs_diff,
        "accuracy_delta": stats.accuracy_delta,
        "flagged": flagged,
    }
