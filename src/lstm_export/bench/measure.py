"""Measure one backend in a spawned process of its own, so no other backend's threads run or spin.

The child posts progress, each batch size's figures and then its result on a queue. It never
outlives the bench: the parent kills it when it stops waiting, and on Linux the kernel kills it
when the parent dies (``PR_SET_PDEATHSIG``), even of SIGKILL.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import signal
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstm_export import errors
from lstm_export.bench.stats import latency_stats
from lstm_export.bench.timing import time_runner, warm_up
from lstm_export.bench.variants import Variant
from lstm_export.console import count
from lstm_export.errors import BenchError, first_line
from lstm_export.infer.base import Runner

#: prctl(2) option: the signal this process gets when its parent dies
PR_SET_PDEATHSIG = 1
#: the warm-up round runs each batch size for at least this long (besides ``warmup`` calls)
WARMUP_SECONDS = 0.2


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


def measure(job: MeasureJob, report: Any = None, measured: Any = None) -> Measurement:
    """Measure ``job`` in this process; ``report(text)`` is told what is being measured and
    ``measured(batch, stats_dict)`` gets each batch size's figures as they come."""
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
            say(f"parity on {count(n, 'image')}")
            result.logits = runner.infer_all(images)
        for batch in job.batch_sizes:  # a warm-up round: every batch size runs before any is timed
            say(f"warming up, batch {batch}")
            warm_up(runner, batch_of(images, batch), calls=job.warmup, seconds=WARMUP_SECONDS)
        for batch in job.batch_sizes:
            say(f"batch {batch}")
            x = batch_of(images, batch)
            timings = time_runner(
                runner, x, warmup=job.warmup, iterations=job.iterations, seconds=job.seconds
            )
            result.compute[batch], result.copies[batch] = timings.compute, timings.copies
            if measured is not None:
                measured(batch, latency_stats(timings.compute, batch).to_dict())
    return result


@dataclass(frozen=True)
class CheckJob:
    """Load every variant once before measuring: the first that cannot run fails the bench."""

    variants: tuple[Variant, ...]
    paths: tuple[Path, ...]
    device: str
    threads: int


def check(job: CheckJob, report: Any = None, measured: Any = None) -> None:
    """Load each runner of ``job`` and run one image through it; the first that fails raises its
    typed error (or BenchError) as one line naming the backend (``measured`` is not called)."""
    from lstm_export.infer.registry import make_runner

    say = report or (lambda _text: None)
    x = np.zeros((1, 28, 28), dtype=np.float32)
    for variant, path in zip(job.variants, job.paths, strict=True):
        say(f"checking {variant.name}")
        try:
            options = {"threads": job.threads, **variant.options}
            with make_runner(path, variant.backend, job.device, **options) as runner:
                runner.infer(x)
        except errors.LstmExportError as exc:
            raise type(exc)(f"backend {variant.name!r} cannot run: {exc}") from exc
        except Exception as exc:
            raise BenchError(f"backend {variant.name!r} cannot run: {first_line(exc)}") from exc


def in_child(work: Any, job: Any, name: str, report: Any = None, measured: Any = None) -> Any:
    """Run ``work(job, report, measured)`` (:func:`measure` or :func:`check`) in a spawned process
    named ``name`` in its errors; relay its messages; return its result."""
    ctx = mp.get_context("spawn")
    channel = ctx.Queue()
    child = ctx.Process(target=_child_main, args=(work, job, name, channel), daemon=True)
    child.start()
    try:
        while True:
            try:
                kind, payload = channel.get(timeout=1.0)
            except queue_module.Empty:
                if not child.is_alive():
                    raise BenchError(
                        f"{name}: the measuring process died (exit code {child.exitcode})"
                    ) from None
                continue
            if kind == "progress" and report is not None:
                report(payload)
            elif kind == "measured" and measured is not None:
                measured(*payload)
            elif kind == "result":
                child.join(timeout=10)
                return payload
            elif kind == "error":
                cls_name, message = payload
                raise getattr(errors, cls_name, BenchError)(message)
    finally:
        if child.is_alive():  # stopped waiting (an error, Ctrl-C, SIGTERM): the child goes too
            child.kill()
            child.join(timeout=10)


def _child_main(work: Any, job: Any, name: str, channel: Any) -> None:
    """The child: dies with the parent (Linux), runs ``work``, posts its messages, then its result
    or its error as one line (the detail in the last frame)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    parent = mp.parent_process()
    if parent is not None and not parent.is_alive():  # it died before the request
        os._exit(1)
    try:
        progress = lambda text: channel.put(("progress", text))  # noqa: E731
        measured = lambda batch, stats: channel.put(("measured", (batch, stats)))  # noqa: E731
        channel.put(("result", work(job, progress, measured)))
    except errors.LstmExportError as exc:
        channel.put(("error", (type(exc).__name__, str(exc))))
    except BaseException as exc:
        detail = traceback.format_exc(limit=3).strip().splitlines()[-1]
        channel.put(("error", ("BenchError", f"{name}: {detail or exc!r}")))


def batch_of(images: np.ndarray, batch: int) -> np.ndarray:
    """The first ``batch`` images (repeated if the test set is smaller), a C-contiguous copy."""
    return np.resize(images, (batch, *images.shape[1:]))


def _describe(job: MeasureJob, runner: Runner) -> dict[str, Any]:
    return {
        "backend": job.variant.name,
        "runner": job.variant.backend,
        "precision": job.variant.precision,
        "file": str(job.path),
        "options": {k: getattr(v, "value", v) for k, v in vars(runner.options).items()},
        "providers": getattr(runner, "providers", None),
        "device": runner.device,
        "description": runner.description,
        "notes": {
            k: getattr(runner, k)
            for k in ("precision_used", "streams_used", "threads_used", "bf16_note")
            if hasattr(runner, k)
        },
    }
