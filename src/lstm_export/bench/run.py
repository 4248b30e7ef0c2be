"""Run the benchmark: parity on the test set and latency per batch size, one backend at a time,
in rounds that interleave the backends; figures not yet stable are measured again (docs/bench-schema.md).
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
from lstm_export.bench.measure import CheckJob, MeasureJob, Measurement, check, in_child, measure
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
    #: ... and at most this many while a figure is unstable (None: rounds + 4)
    max_rounds: int | None = None
    threads: int | None = None  # intra-op threads for torch and ONNX Runtime; None: all cores
    parity_images: int = 0  # 0: the whole 10k test set
    reexport: bool = False
    data_dir: Path | None = None

    def check(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise BenchError(f"batch sizes must be >= 1, got {list(self.batch_sizes)}")
        for name in ("warmup", "parity_images"):
            if getattr(self, name) < 0:
                raise BenchError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("iterations", "rounds", "threads"):
            if (getattr(self, name) or 1) < 1:
                raise BenchError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seconds is not None and not self.seconds > 0:
            raise BenchError(f"seconds must be > 0, got {self.seconds}")
        if self.max_rounds is not None and self.max_rounds < self.rounds:
            raise BenchError(f"max rounds ({self.max_rounds}) must be >= rounds ({self.rounds})")

    @property
    def round_cap(self) -> int:
        """The most rounds a figure is measured in: ``max_rounds``, else ``rounds + 4``."""
        return self.max_rounds if self.max_rounds is not None else self.rounds + 4


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


#: timings[(variant, batch)][round] = (compute seconds, copy seconds) of each call
_Timings = dict[tuple[str, int], dict[int, tuple[np.ndarray, np.ndarray]]]
#: p50[(variant, batch)][round] = median compute ms of that round
_RoundP50 = dict[tuple[str, int], dict[int, float]]


def plan_bench(target: Path, settings: BenchSettings) -> BenchPlan:
    """Check the request (settings, checkpoint, backends, data); raise a typed error if bad."""
    from lstm_export.checkpoint import load_checkpoint, resolve_checkpoint
    from lstm_export.data.mnist import locate

    settings.check()
    if settings.device == BenchDevice.cuda:
        from lstm_export.devices import torch_cuda_problem

        if (problem := torch_cuda_problem()) is not None:
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
    on_line: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Benchmark every planned backend against eager PyTorch: prepare, measure, report (the JSON
    object of docs/bench-schema.md). ``on_progress`` follows the rounds; ``on_line`` gets each
    backend and batch size's line."""
    progress = on_progress or (lambda *_: None)
    say = on_line or (lambda _text: None)
    paths = _prepare(plan, progress)
    for name, reason in plan.skipped.items():
        say(f"skipped {name}: {reason}")
    result = _report(plan, *_measure(plan, paths, progress, say))
    progress("done", 1, 1)
    return result


def _prepare(plan: BenchPlan, progress: ProgressCallback) -> dict[Any, Path]:
    """Verify MNIST, export what is missing or stale, and load every backend once: a provider
    that cannot load (ONNX Runtime's CUDA, a missing package) fails the bench now, naming it."""
    from lstm_export.data.mnist import ensure_mnist

    plan.data_dir = ensure_mnist(plan.data_dir)
    paths = ensure_artifacts(
        plan.checkpoint,
        [v.artifact for v in plan.variants],
        data_dir=plan.data_dir,
        force=plan.settings.reexport,
        on_export=lambda artifact: progress(f"exporting {artifact.value}", 0, 0),
    )
    progress("checking that every backend loads", 0, 0)
    files = tuple(paths[v.artifact] for v in plan.variants)
    job = CheckJob(tuple(plan.variants), files, plan.settings.device.value, plan.threads)
    in_child(check, job, "check", lambda text: progress(text, 0, 0))
    return paths


def _measure(
    plan: BenchPlan, paths: dict[Any, Path], progress: ProgressCallback, say: Callable[[str], None]
) -> tuple[_Timings, dict[str, Measurement]]:
    """Measure the backends in turn, round after round; after ``rounds`` rounds only the figures
    that are not stable yet (and eager at their batch sizes), up to ``round_cap`` rounds. Returns
    the timings and each variant's first measurement (its description and parity logits)."""
    settings, variants = plan.settings, plan.variants
    timings: _Timings = {}
    first: dict[str, Measurement] = {}
    pending = {v.name: tuple(settings.batch_sizes) for v in variants}
    round_index, done, total = 0, 0, settings.rounds * len(variants)
    while pending and round_index < settings.round_cap:
        todo = [v for v in variants if v.name in pending]
        total = max(total, done + len(todo))
        for variant in todo:
            job = MeasureJob(
                variant=variant,
                path=paths[variant.artifact],
                device=settings.device.value,
                threads=plan.threads,
                data_dir=plan.data_dir,
                parity_images=settings.parity_images,
                parity=variant.name not in first,
                batch_sizes=pending[variant.name],
                warmup=settings.warmup,
                iterations=settings.iterations,
                seconds=settings.seconds,
            )
            where = f"round {round_index + 1}, {variant.name}"

            def report(text: str, where: str = where, done: int = done, total: int = total) -> None:
                progress(f"{where}: {text}", done, total)

            def measured(
                batch: int, stats: dict[str, Any], name: str = variant.name, r: int = round_index
            ) -> None:
                ref = _p50(timings).get((REFERENCE, batch), {}).get(r)
                say(_progress_line(r, name, batch, stats, ref))

            measurement = in_child(measure, job, variant.name, report, measured)
            first.setdefault(variant.name, measurement)
            for batch in job.batch_sizes:
                calls = (measurement.compute[batch], measurement.copies[batch])
                timings.setdefault((variant.name, batch), {})[round_index] = calls
            done += 1
        round_index += 1
        if round_index >= settings.rounds:
            pending = _unstable(_p50(timings), settings.batch_sizes, [v.name for v in variants])
    return timings, first


def _p50(timings: _Timings) -> _RoundP50:
    return {
        key: {r: float(np.median(calls[0]) * 1e3) for r, calls in rounds.items()}
        for key, rounds in timings.items()
    }


def _report(plan: BenchPlan, timings: _Timings, first: dict[str, Measurement]) -> dict[str, Any]:
    """The result: parity against eager's logits, and the median round of every figure."""
    from lstm_export.data.mnist import load_split
    from lstm_export.fileio import file_digest

    settings, device = plan.settings, plan.settings.device.value
    labels = load_split(plan.data_dir, "test").labels
    machine = machine_info(device)
    reference = first[REFERENCE].logits  # eager runs first: every backend is held to it
    parity = [
        _parity_row(v, device, first[v.name].logits, reference, labels) for v in plan.variants
    ]
    latency = []
    order = {v.name: i for i, v in enumerate(plan.variants)}
    p50 = _p50(timings)
    for name, batch in sorted(timings, key=lambda key: (order[key[0]], key[1])):
        compute, copies = median_round(list(timings[(name, batch)].values()))
        medians, figures = p50[(name, batch)], _figures(p50, name, batch)
        latency.append(
            {
                "backend": name,
                "device": device,
                "batch_size": batch,
                **latency_stats(compute, batch).to_dict(),
                "copy_ms": float(np.median(copies) * 1e3),
                "rounds": len(medians),
                "round_p50_ms": [medians[r] for r in sorted(medians)],
                "round_ratios": [] if name == REFERENCE else figures,
                "round_spread": round_spread(figures or list(medians.values())),
                "stable": is_stable(figures, min_rounds=2) if len(figures) >= 2 else None,
            }
        )
    machine["load_average_end"] = machine_info(device).get("load_average")
    add_ratios(latency)
    return {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {
            **{k: v for k, v in asdict(settings).items() if k not in ("data_dir", "device")},
            "device": device,
            "threads": plan.threads,
            "max_rounds": settings.round_cap,
            "batch_sizes": list(settings.batch_sizes),
            "isolation": "one process per backend",
            "statistic": "median (p50) of calls; the median round; throughput = batch / p50",
        },
        "model": {
            "checkpoint": str(plan.checkpoint),
            "sha256": file_digest(plan.checkpoint),
            "test_accuracy": plan.ckpt.get("metrics", {}).get("test_accuracy"),
            "model_config": plan.ckpt["model_config"],
        },
        "backends": [first[v.name].description for v in plan.variants],
        "latency": latency,
        "parity": parity,
        # variants of the default set left out on this machine, with the reason
        "skipped": [{"backend": k, "reason": v} for k, v in plan.skipped.items()],
        # per batch size: the fastest backend overall, of our exports and of the peers
        "best": best_per_batch(latency, parity, plan.variants),
    }


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
    return line + (" (noisy)" if stats["disturbed"] else "")


def _figures(round_p50: _RoundP50, name: str, batch: int) -> list[float]:
    """What tells whether a figure is stable: eager's own p50s; another backend's per-round p50 /
    eager's p50 of the same round (drift cancels; rounds where both were measured)."""
    mine, ref = round_p50.get((name, batch), {}), round_p50.get((REFERENCE, batch), {})
    if name == REFERENCE:
        return list(mine.values())
    return [mine[r] / ref[r] for r in sorted(mine) if r in ref and ref[r] > 0]


def _unstable(
    round_p50: _RoundP50, batch_sizes: tuple[int, ...], names: list[str]
) -> dict[str, tuple[int, ...]]:
    """What to measure again: each figure whose rounds disagree, with eager at its batch size."""
    again: dict[str, set[int]] = {}
    for name in names:
        for batch in batch_sizes:
            if not is_stable(_figures(round_p50, name, batch), min_rounds=1):
                again.setdefault(name, set()).add(batch)
                again.setdefault(REFERENCE, set()).add(batch)
    return {name: tuple(sorted(b)) for name, b in again.items()}


def median_round(per_round: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The round whose median compute time is the median of all rounds (robust to a noisy one)."""
    order = sorted(range(len(per_round)), key=lambda i: float(np.median(per_round[i][0])))
    return per_round[order[(len(order) - 1) // 2]]


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Add ``latency_ratio`` (p50 / eager p50) and ``speedup`` (eager p50 / p50) in place."""
    eager = {(r["device"], r["batch_size"]): r for r in rows if r["backend"] == REFERENCE}
    for row in rows:
        ref = eager.get((row["device"], row["batch_size"]))
        ok = ref is not None and row["p50_ms"] > 0
        row["latency_ratio"] = row["p50_ms"] / ref["p50_ms"] if ok and ref else None
        row["speedup"] = ref["p50_ms"] / row["p50_ms"] if ok and ref else None


def best_per_batch(
    latency: list[dict[str, Any]], parity: list[dict[str, Any]], variants: list[Variant]
) -> list[dict[str, Any]]:
    """Per batch size: the fastest backend (by p50) overall, of our exports, and of the peers;
    a backend whose parity row is flagged does not count."""
    role = {v.name: v.role for v in variants}
    ok = {p["backend"] for p in parity if not p["flagged"]}
    picks = {"best": {"export", "peer", "reference"}, "best_export": {"export"}}
    picks["best_peer"] = {"peer", "reference"}
    out = []
    for batch in sorted({r["batch_size"] for r in latency}):
        row: dict[str, Any] = {"batch_size": batch}
        fastest: dict[str, Any] = {}
        for key, wanted in picks.items():
            mine = [r for r in latency if r["batch_size"] == batch and r["backend"] in ok]
            mine = [r for r in mine if role.get(r["backend"]) in wanted]
            pick = fastest[key] = min(mine, key=lambda r: r["p50_ms"]) if mine else None
            row[key] = pick["backend"] if pick else None
            row[f"{key}_speedup"] = pick["speedup"] if pick else None
        export, peer = fastest["best_export"], fastest["best_peer"]
        row["export_ahead"] = export["p50_ms"] <= peer["p50_ms"] if export and peer else None
        out.append(row)
    return out


def _parity_row(
    variant: Variant, device: str, logits: np.ndarray, reference: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """Parity with eager; fp32 is held to agreement, reduced precision to its accuracy drop."""
    from lstm_export import parity

    stats = parity.compare(logits, reference, labels[: len(logits)])
    reduced = variant.precision in REDUCED_PRECISIONS
    found = parity.problems(
        stats,
        min_agreement=None if reduced else FP32_AGREEMENT_FLOOR,
        max_accuracy_drop=MAX_ACCURACY_DROP if reduced else None,
    )
    return {
        "backend": variant.name,
        "device": device,
        "precision": variant.precision,
        "role": variant.role,
        **stats.to_dict(),
        "allowed_drop": MAX_ACCURACY_DROP if reduced else None,
        "flagged": bool(found),
        "problems": found,
    }
