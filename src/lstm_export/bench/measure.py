"""Measure one backend in a process of its own, so no other backend's threads run or spin.

The parent sends a :class:`MeasureJob`; the child loads the runner, computes logits on the parity
images and times every batch size, posting progress and then the raw result on a queue.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_module
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstm_export import errors
from lstm_export.bench.timing import time_runner
from lstm_export.bench.variants import Variant
from lstm_export.errors import BenchError
from lstm_export.infer.base import Runner


@dataclass(frozen=True)
class MeasureJob:
    """Everything a child needs to measure one variant."""

    variant: Variant
    path: Path
    device: str
    threads: int
    data_dir: Path
    parity_images: int
    parity: bool  # compute logits on the parity images (the first round only)
    batch_sizes: tuple[int, ...]
    warmup: int
    iterations: int | None
    seconds: float | None


@dataclass
class Measurement:
    """Raw results of one variant: runner facts, logits (N, 10), timings per batch size."""

    description: dict[str, Any]
    logits: np.ndarray
    compute: dict[int, np.ndarray] = field(default_factory=dict)
    copies: dict[int, np.ndarray] = field(default_factory=dict)


def measure(job: MeasureJob, report: Any = None) -> Measurement:
    """Measure ``job`` in this process; ``report(text)`` is told what is being measured."""
    import torch

    from lstm_export.data.mnist import load_split
    from lstm_export.data.preprocess import to_model_input
    from lstm_export.infer.registry import make_runner

    say = report or (lambda _text: None)
    torch.set_num_threads(job.threads)
    test = load_split(job.data_dir, "test")
    n = job.parity_images or len(test.images)
    images = to_model_input(test.images[:n])  # (N, 28, 28) float32 in [0, 1]
    options = {"threads": job.threads, **job.variant.options}
    runner = make_runner(job.path, job.variant.backend, job.device, **options)
    say("loading")
    with runner:
        result = Measurement(description=_describe(job, runner), logits=np.empty(0))
        if job.parity:
            say(f"parity on {n} images")
            result.logits = runner.infer_all(images)
        for batch in job.batch_sizes:
            say(f"batch {batch}")
            timings = time_runner(
                runner,
                batch_of(images, batch),
                warmup=job.warmup,
                iterations=job.iterations,
                seconds=None if job.iterations else job.seconds,
            )
            result.compute[batch], result.copies[batch] = timings.compute, timings.copies
    return result


def measure_in_child(job: MeasureJob, report: Any = None) -> Measurement:
    """Run :func:`measure` in a fresh spawned process and return its result."""
    ctx = mp.get_context("spawn")
    channel = ctx.Queue()
    child = ctx.Process(target=_child_main, args=(job, channel), daemon=True)
    child.start()
    try:
        while True:
            try:
                kind, payload = channel.get(timeout=1.0)
            except queue_module.Empty:
                if not child.is_alive():
                    raise BenchError(
                        f"{job.variant.name}: the measuring process died (exit code "
                        f"{child.exitcode})"
                    ) from None
                continue
            if kind == "progress" and report is not None:
                report(payload)
            elif kind == "result":
                return payload
            elif kind == "error":
                name, message = payload
                cls = getattr(errors, name, BenchError)
                raise cls(message)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()


def _child_main(job: MeasureJob, channel: Any) -> None:
    try:
        result = measure(job, lambda text: channel.put(("progress", text)))
        channel.put(("result", result))
    except errors.LstmExportError as exc:
        channel.put(("error", (type(exc).__name__, str(exc))))
    except BaseException as exc:  # report anything else as one line, with the detail logged
        detail = traceback.format_exc(limit=3).strip().splitlines()[-1]
        channel.put(("error", ("BenchError", f"{job.variant.name}: {detail or exc!r}")))


def batch_of(images: np.ndarray, batch: int) -> np.ndarray:
    """The first ``batch`` images (tiled if the test set is smaller), C-contiguous."""
    if batch <= len(images):
        return np.ascontiguousarray(images[:batch])
    reps = -(-batch // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:batch])


def _describe(job: MeasureJob, runner: Runner) -> dict[str, Any]:
    return {
        "backend": job.variant.name,
        "runner": job.variant.backend,
        "precision": job.variant.precision,
        "file": str(job.path),
        "options": {k: getattr(v, "value", v) for k, v in vars(runner.options).items()},
        "providers": getattr(runner, "providers", None),
        "device": runner.device,
    }
