"""Time one runner: warm-up excluded, ``time.perf_counter``, device copies measured apart."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_export.errors import BenchError
from lstm_export.infer.base import Runner


@dataclass(frozen=True)
class Timings:
    """Raw per-call durations in seconds."""

    compute: np.ndarray  # run_prepared: input already where the model runs
    copies: np.ndarray  # prepare + fetch: host->device and device->host (≈0 on CPU)


def time_runner(
    runner: Runner,
    x: np.ndarray,
    *,
    warmup: int = 10,
    iterations: int | None = None,
    seconds: float | None = 1.0,
    min_iterations: int = 10,
    max_iterations: int = 100_000,
) -> Timings:
    """Call ``runner`` on ``x`` (N, 28, 28) repeatedly; either a fixed count or a time budget.

    Compute time is :meth:`Runner.run_prepared` on an input placed once (device-resident on
    CUDA; the runners synchronise before returning). Copy time is timed separately on each
    iteration so that it can be reported apart.
    """
    if iterations is None and seconds is None:
        raise BenchError("give iterations or seconds")
    if iterations is not None and iterations < 1:
        raise BenchError(f"iterations must be >= 1, got {iterations}")
    prepared = warm_up(runner, x, calls=warmup)
    compute: list[float] = []
    copies: list[float] = []
    clock = time.perf_counter
    start = clock()
    while True:
        t0 = clock()
        result = runner.run_prepared(prepared)
        t1 = clock()
        compute.append(t1 - t0)
        t2 = clock()
        runner.fetch(result)
        runner.prepare(x)
        copies.append(clock() - t2)
        n = len(compute)
        if iterations is not None:
            if n >= iterations:
                break
        elif (n >= min_iterations and clock() - start >= (seconds or 0)) or n >= max_iterations:
            break
    return Timings(compute=np.asarray(compute), copies=np.asarray(copies))


def warm_up(runner: Runner, x: np.ndarray, *, calls: int, seconds: float = 0.0) -> Any:
    """Run ``runner`` on ``x`` (N, 28, 28), untimed, ``calls`` times and for at least ``seconds``
    (lazy initialisation, caches, thread pools and clocks settle); return the prepared input."""
    prepared = runner.prepare(x)
    end = time.perf_counter() + seconds
    done = 0
    while done < calls or time.perf_counter() < end:
        runner.fetch(runner.run_prepared(prepared))
        done += 1
    return prepared
