"""Run the benchmark: parity on the test set and latency per batch size, one backend at a time."""

from __future__ import annotations

import datetime as _dt
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstm_export.bench.artifacts import ensure_artifacts
from lstm_export.bench.machine import machine_info, usable_cores
from lstm_export.bench.stats import latency_stats, parity_stats
from lstm_export.bench.timing import time_runner
from lstm_export.bench.variants import REFERENCE, BenchDevice, Variant, select_variants
from lstm_export.errors import BenchError
from lstm_export.infer.base import Runner

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
    data_dir: Path


def plan_bench(target: Path, settings: BenchSettings) -> BenchPlan:
    """Check the request (settings, checkpoint, backends, data); raise a typed error if bad."""
    from lstm_export.checkpoint import load_checkpoint
    from lstm_export.data.mnist import ensure_mnist
    from lstm_export.train.run_dir import resolve_checkpoint

    settings.check()
    checkpoint = resolve_checkpoint(target)
    return BenchPlan(
        settings=settings,
        checkpoint=checkpoint,
        ckpt=load_checkpoint(checkpoint),
        variants=select_variants(settings.backends, settings.device),
        threads=settings.threads or usable_cores(),
        data_dir=ensure_mnist(settings.data_dir),
    )


def run_bench(plan: BenchPlan, *, on_progress: ProgressCallback | None = None) -> BenchResult:
    """Benchmark every planned backend against eager PyTorch."""
    from lstm_export.data.mnist import load_split
    from lstm_export.data.preprocess import to_model_input
    from lstm_export.fileio import file_digest

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
    images = to_model_input(test.images[:n])  # (N, 28, 28) float32 in [0, 1]
    labels = test.labels[:n]

    _set_torch_threads(threads)
    result = BenchResult(
        machine=machine_info(settings.device.value),
        settings={
            **{k: v for k, v in asdict(settings).items() if k not in ("data_dir", "device")},
            "device": settings.device.value,
            "threads": threads,
            "batch_sizes": list(settings.batch_sizes),
        },
        model={
            "checkpoint": str(checkpoint),
            "sha256": file_digest(checkpoint),
            "test_accuracy": ckpt.get("metrics", {}).get("test_accuracy"),
            "model_config": ckpt["model_config"],
        },
    )
    total = len(variants) * (1 + len(settings.batch_sizes))
    done = 0
    reference: np.ndarray | None = None
    for variant in variants:
        runner = _make(variant, paths, settings.device, threads)
        progress(f"{variant.name}: loading", done, total)
        with runner:
            result.backends.append(_describe(variant, runner, paths, threads))
            progress(f"{variant.name}: parity on {n} images", done, total)
            logits = infer_all(runner, images)
            if reference is None:
                reference = logits  # eager runs first: every backend is held to it
            result.parity.append(_parity_row(variant, settings, logits, reference, labels))
            done += 1
            for batch in settings.batch_sizes:
                progress(f"{variant.name}: batch {batch}", done, total)
                x = _batch_of(images, batch)
                timings = time_runner(
                    runner,
                    x,
                    warmup=settings.warmup,
                    iterations=settings.iterations,
                    seconds=None if settings.iterations else settings.seconds,
                )
                stats = latency_stats(timings.compute, batch)
                row = {
                    "backend": variant.name,
                    "device": settings.device.value,
                    "batch_size": batch,
                    **stats.to_dict(),
                    "copy_ms": float(np.mean(timings.copies) * 1e3),
                }
                result.latency.append(row)
                done += 1
        del runner
        gc.collect()
        time.sleep(0.2)  # let the previous backend's spinning worker threads go idle
    progress("done", total, total)
    add_ratios(result.latency)
    return result


def infer_all(runner: Runner, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Logits (N, 10) for all images, in batches."""
    parts = [runner.infer(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(parts)


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
    stats = parity_stats(logits, reference, labels)
    ref_accuracy = float((reference.argmax(1) == labels).mean())
    flagged = variant.precision == "fp32" and stats.agreement < FP32_AGREEMENT_FLOOR
    return {
        "backend": variant.name,
        "device": settings.device.value,
        "precision": variant.precision,
        **stats.to_dict(),
        "accuracy_delta": stats.accuracy - ref_accuracy,
        "flagged": flagged,
    }


def _make(variant: Variant, paths: dict[Any, Path], device: BenchDevice, threads: int) -> Runner:
    from lstm_export.infer.registry import make_runner

    options = {"threads": threads, **variant.options}
    return make_runner(paths[variant.artifact], variant.backend, device.value, **options)


def _describe(
    variant: Variant, runner: Runner, paths: dict[Any, Path], threads: int
) -> dict[str, Any]:
    return {
        "backend": variant.name,
        "runner": variant.backend,
        "precision": variant.precision,
        "file": str(paths[variant.artifact]),
        "options": {"threads": threads, **variant.options},
        "providers": getattr(runner, "providers", None),
        "device": runner.device,
    }


def _batch_of(images: np.ndarray, batch: int) -> np.ndarray:
    """The first ``batch`` images (tiled if the test set is smaller), C-contiguous."""
    if batch <= len(images):
        return np.ascontiguousarray(images[:batch])
    reps = -(-batch // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:batch])


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
