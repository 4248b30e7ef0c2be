"""Run the benchmark: parity on the test set and latency per batch size, one backend at a time.

Rounds interleave the backends (eager, A, B, ..., eager, A, B, ...) so that a machine that drifts
moves every backend alike. After the minimum number of rounds, only the figures that are not yet
stable (the interquartile range of their rounds above
:data:`~lstm_export.bench.stats.STABLE_SPREAD` of the median; a backend's rounds are its ratios
to eager in the same round) are measured again, together with eager at those batch sizes, up to
``max_rounds``; a figure still unstable then is reported as such.
"""

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
from lstm_export.bench.measure import CheckJob, MeasureJob, check_in_child, measure_in_child
from lstm_export.bench.stats import is_stable, latency_stats, round_spread
from lstm_export.bench.variants import (
    REDUCED_PRECISIONS,
    REFERENCE,
    BenchDevice,
    Variant,
    select_variants,
)
from lstm_export.errors import BenchError, DeviceError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
FP32_AGREEMENT_FLOOR = 0.9999  # fp32 backends below this argmax agreement with eager are flagged
MAX_ACCURACY_DROP = 0.003  # int8, bf16, fp16, tf32: at most 0.3 points below eager's accuracy
DEFAULT_BATCH_SIZES = (1, 8, 64, 256, 1024)

#: progress(description, done, total)
ProgressCallback = Callable[[str, int, int], None]
#: line(text): one backend and batch size's figures, as soon as they are measured
LineCallback = Callable[[str], None]


@dataclass
class BenchSettings:
    """Everything that decides what the bench measures."""

    device: BenchDevice = BenchDevice.cpu
    backends: list[str] | None = None  # None: every variant available on the device
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    warmup: int = 10
    iterations: int | None = None  # fixed count per batch size, or ...
    seconds: float | None = 1.0  # ... a time budget per batch size
    rounds: int = 3  # backends measured in turn at least this many times; medians reported
    max_rounds: int | None = None  # ... and at most this many while a figure is unstable
    #                                  (None: rounds + 4)
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
        if self.max_rounds is not None and self.max_rounds < self.rounds:
            raise BenchError(f"max rounds ({self.max_rounds}) must be >= rounds ({self.rounds})")

    @property
    def round_cap(self) -> int:
        """The most rounds a figure is measured in: ``max_rounds``, else ``rounds + 4``."""
        return self.max_rounds if self.max_rounds is not None else self.rounds + 4
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
    #: variants of the default set left out on this machine, with the reason
    skipped: list[dict[str, str]] = field(default_factory=list)
    #: per batch size: the fastest backend overall, of our exports and of the peers
    best: list[dict[str, Any]] = field(default_factory=list)

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
    #: variants of the default set that cannot run here: name -> reason
    skipped: dict[str, str] = field(default_factory=dict)


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
    selection = select_variants(settings.backends, settings.device)
    for name, reason in selection.skipped.items():
        log.info("skipping %s: %s", name, reason)
    return BenchPlan(
        settings=settings,
        checkpoint=checkpoint,
        ckpt=load_checkpoint(checkpoint),
        variants=selection.variants,
        threads=settings.threads or usable_cores(),
        data_dir=locate(settings.data_dir)[0],
        skipped=selection.skipped,
    )


def run_bench(
    plan: BenchPlan,
    *,
    on_progress: ProgressCallback | None = None,
    on_line: LineCallback | None = None,
) -> BenchResult:
    """Benchmark every planned backend against eager PyTorch.

    ``on_progress`` follows the steps; ``on_line`` gets one line per backend and batch size as
    soon as it is measured (with its ratio to eager's figure of the same round).
    """
    from lstm_export.data.mnist import ensure_mnist, load_split
    from lstm_export.fileio import file_digest

    plan.data_dir = ensure_mnist(plan.data_dir)
    settings, checkpoint, ckpt = plan.settings, plan.checkpoint, plan.ckpt
    variants, threads = plan.variants, plan.threads
    progress = on_progress or (lambda *_: None)
    say = on_line or (lambda _text: None)

    def exporting(artifact: Any) -> None:
        progress(f"exporting {artifact.value}", 0, 0)

    paths = ensure_artifacts(
        checkpoint,
        [v.artifact for v in variants],
        data_dir=plan.data_dir,
        force=settings.reexport,
        on_export=exporting,
    )
    # Every backend loads and runs once before any is measured: a provider that cannot load
    # (ONNX Runtime's CUDA, a missing package) fails the bench now, in one line naming it.
    progress("checking that every backend loads", 0, 0)
    check_in_child(
        CheckJob(
            variants=tuple(variants),
            paths=tuple(paths[v.artifact] for v in variants),
            device=settings.device.value,
            threads=threads,
        ),
        lambda text: progress(text, 0, 0),
    )
    for name, reason in plan.skipped.items():
        say(f"skipped {name}: {reason}")
    test = load_split(plan.data_dir, "test")
    n = settings.parity_images or len(test.images)
    labels = test.labels[:n]
    result = BenchResult(
        machine=machine_info(settings.device.value),
        settings={
            **{k: v for k, v in asdict(settings).items() if k not in ("data_dir", "device")},
            "device": settings.device.value,
            "threads": threads,
            "max_rounds": settings.round_cap,
            "batch_sizes": list(settings.batch_sizes),
            "isolation": "one process per backend",
            "statistic": "median (p50) of calls; the median round; throughput = batch / p50",
        },
        model={
            "checkpoint": str(checkpoint),
            "sha256": file_digest(checkpoint),
            "test_accuracy": ckpt.get("metrics", {}).get("test_accuracy"),
            "model_config": ckpt["model_config"],
        },
        skipped=[{"backend": k, "reason": v} for k, v in plan.skipped.items()],
    )
    reference: np.ndarray | None = None
    # timings[(variant, batch)][round] = (compute, copies)
    timings: dict[tuple[str, int], dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    # round_p50[(variant, batch)][round] = median compute ms of that round
    round_p50: dict[tuple[str, int], dict[int, float]] = {}
    pending: dict[str, tuple[int, ...]] = {v.name: tuple(settings.batch_sizes) for v in variants}
    measured_once: set[str] = set()
    round_index, done = 0, 0
    while pending and round_index < settings.round_cap:
        todo = [v for v in variants if v.name in pending]
        steps = done + len(todo)
        for variant in todo:
            job = MeasureJob(
                variant=variant,
                path=paths[variant.artifact],
                device=settings.device.value,
                threads=threads,
                data_dir=plan.data_dir,
                parity_images=n,
                parity=variant.name not in measured_once,
                batch_sizes=pending[variant.name],
                warmup=settings.warmup,
                iterations=settings.iterations,
                seconds=None if settings.iterations else settings.seconds,
            )
            where = f"round {round_index + 1}, {variant.name}"

            def report(text: str, where: str = where, done: int = done, steps: int = steps) -> None:
                progress(f"{where}: {text}", done, steps)

            def measured(
                batch: int,
                stats: dict[str, Any],
                name: str = variant.name,
                r: int = round_index,
            ) -> None:
                round_p50.setdefault((name, batch), {})[r] = stats["p50_ms"]
                ref = round_p50.get((REFERENCE, batch), {}).get(r)
                say(_progress_line(r, name, batch, stats, ref))

            got = measure_in_child(job, report, measured)
            done += 1
            if variant.name not in measured_once:
                measured_once.add(variant.name)
                result.backends.append(got.description)
                if reference is None:
                    reference = got.logits  # eager runs first: every backend is held to it
                result.parity.append(_parity_row(variant, settings, got.logits, reference, labels))
            for batch in job.batch_sizes:
                timings.setdefault((variant.name, batch), {})[round_index] = (
                    got.compute[batch],
                    got.copies[batch],
                )
                round_p50.setdefault((variant.name, batch), {})[round_index] = float(
                    np.median(got.compute[batch]) * 1e3
                )
        round_index += 1
        if round_index >= settings.rounds:
            pending = _unstable(round_p50, settings.batch_sizes, [v.name for v in variants])
    for (name, batch), per_round in timings.items():
        compute, copies = median_round(list(per_round.values()))
        stats = latency_stats(compute, batch)
        medians = round_p50[(name, batch)]
        ratios = _round_ratios(round_p50, name, batch)
        result.latency.append(
            {
                "backend": name,
                "device": settings.device.value,
                "batch_size": batch,
                **stats.to_dict(),
                "copy_ms": float(np.median(copies) * 1e3),
                "rounds": len(per_round),
                "round_p50_ms": [medians[r] for r in sorted(medians)],
                "round_ratios": ratios,
                "round_spread": round_spread(
                    ratios if name != REFERENCE and ratios else list(medians.values())
                ),
                "stable": _stable(ratios if name != REFERENCE else list(medians.values())),
            }
        )
    order = {v.name: i for i, v in enumerate(variants)}
    result.latency.sort(key=lambda r: (order[r["backend"]], r["batch_size"]))
    progress("done", done, done)
    result.machine["load_average_end"] = machine_info(settings.device.value).get("load_average")
    add_ratios(result.latency)
    result.best = best_per_batch(result.latency, result.parity, variants)
    return result


def _progress_line(
    round_index: int, name: str, batch: int, stats: dict[str, Any], eager_p50: float | None
) -> str:
    """``round 1  onnxruntime-int8  batch  256: p50 7.692 ms  33,280 img/s  0.66x eager ...``"""
    line = (
        f"round {round_index + 1}  {name:<18} batch {batch:>5}: p50 {stats['p50_ms']:8.3f} ms "
        f"{stats['throughput']:>10,.0f} img/s"
    )
    if eager_p50 is not None and name != REFERENCE:
        line += f"  {stats['p50_ms'] / eager_p50:5.2f}x eager latency"
    line += f"  p90/p50 {stats['spread']:.2f}"
    if stats["disturbed"]:
        line += " (disturbed)"
    return line


def _stable(values: list[float]) -> bool | None:
    """Whether the rounds agree (None: a single round cannot tell)."""
    return is_stable(values, min_rounds=2) if len(values) >= 2 else None


def _round_ratios(
    round_p50: dict[tuple[str, int], dict[int, float]], name: str, batch: int
) -> list[float]:
    """Per-round p50 / eager's p50 of the same round (rounds where both were measured)."""
    if name == REFERENCE:
        return []
    mine, ref = round_p50.get((name, batch), {}), round_p50.get((REFERENCE, batch), {})
    return [mine[r] / ref[r] for r in sorted(mine) if r in ref and ref[r] > 0]


def _unstable(
    round_p50: dict[tuple[str, int], dict[int, float]],
    batch_sizes: tuple[int, ...],
    names: list[str],
) -> dict[str, tuple[int, ...]]:
    """What to measure again: each figure whose rounds disagree, with eager at its batch size.

    A backend's figure is its ratio to eager in the same round (drift cancels); eager's own is
    its p50.
    """
    again: dict[str, set[int]] = {}
    for name in names:
        for batch in batch_sizes:
            ratios = _round_ratios(round_p50, name, batch)
            values = ratios if name != REFERENCE else list(round_p50[(name, batch)].values())
            if not is_stable(values, min_rounds=1):
                again.setdefault(name, set()).add(batch)
                again.setdefault(REFERENCE, set()).add(batch)
    return {name: tuple(sorted(b)) for name, b in again.items()}


def median_round(
    per_round: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """The round whose median compute time is the median of all rounds (robust to a noisy one)."""
    order = sorted(range(len(per_round)), key=lambda i: float(np.median(per_round[i][0])))
    return per_round[order[(len(order) - 1) // 2]]


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Add ``latency_ratio`` (p50 / eager p50) and ``speedup`` (eager p50 / p50) in place.

    Both come from the median, as does ``throughput`` (batch / p50), so ``speedup`` is exactly
    ``throughput / eager throughput`` and ``1 / latency_ratio``.
    """
    eager = {(r["device"], r["batch_size"]): r for r in rows if r["backend"] == REFERENCE}
    for row in rows:
        ref = eager.get((row["device"], row["batch_size"]))
        ok = ref is not None and row["p50_ms"] > 0
        row["latency_ratio"] = row["p50_ms"] / ref["p50_ms"] if ok and ref else None
        row["speedup"] = ref["p50_ms"] / row["p50_ms"] if ok and ref else None


def best_per_batch(
    latency: list[dict[str, Any]], parity: list[dict[str, Any]], variants: list[Variant]
) -> list[dict[str, Any]]:
    """Per batch size: the fastest backend (by p50) overall, of our exports, and of the peers.

    A backend whose parity row is flagged (accuracy or agreement out of bounds) does not count.
    """
    role = {v.name: v.role for v in variants}
    ok = {p["backend"] for p in parity if not p["flagged"]}
    out = []
    for batch in sorted({r["batch_size"] for r in latency}):
        rows = [r for r in latency if r["batch_size"] == batch and r["backend"] in ok]

        def fastest(wanted: set[str], rows: list[dict[str, Any]] = rows) -> dict[str, Any] | None:
            mine = [r for r in rows if role.get(r["backend"]) in wanted]
            return min(mine, key=lambda r: r["p50_ms"]) if mine else None

        best, export, peer = (
            fastest({"export", "peer", "reference"}),
            fastest({"export"}),
            fastest({"peer", "reference"}),
        )
        out.append(
            {
                "batch_size": batch,
                "best": best["backend"] if best else None,
                "best_speedup": best["speedup"] if best else None,
                "best_export": export["backend"] if export else None,
                "best_export_speedup": export["speedup"] if export else None,
                "best_peer": peer["backend"] if peer else None,
                "best_peer_speedup": peer["speedup"] if peer else None,
                "export_ahead": (export["p50_ms"] <= peer["p50_ms"] if export and peer else None),
            }
        )
    return out


def _parity_row(
    variant: Variant,
    settings: BenchSettings,
    logits: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray,
) -> dict[str, Any]:
    """Parity with eager; fp32 is held to agreement, reduced precision to its accuracy drop."""
    from lstm_export import parity

    stats = parity.compare(logits, reference, labels)
    reduced = variant.precision in REDUCED_PRECISIONS
    found = parity.problems(
        stats,
        min_agreement=None if reduced else FP32_AGREEMENT_FLOOR,
        max_accuracy_drop=MAX_ACCURACY_DROP if reduced else None,
    )
    return {
        "backend": variant.name,
        "device": settings.device.value,
        "precision": variant.precision,
        "role": variant.role,
        "images": stats.images,
        "accuracy": stats.accuracy,
        "agreement": stats.agreement,
        "max_abs_diff": stats.max_abs_diff,
        "mean_abs_diff": stats.mean_abs_diff,
        "accuracy_delta": stats.accuracy_delta,
        "allowed_drop": MAX_ACCURACY_DROP if reduced else None,
        "flagged": bool(found),
        "problems": found,
    }
