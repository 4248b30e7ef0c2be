"""Time one runner: warm-up excluded, ``time.perf_counter``, device copies measured apart."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_export.errors import BenchError
from lstm_export.infer.base import Runner

MAX_ITERATIONS = 100_000


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
) -> Timings:
    """Call ``runner`` on ``x`` (N, 28, 28) ``iterations`` times, else for ``seconds`` (at most
    :data:`MAX_ITERATIONS` calls). Compute time is :meth:`Runner.run_prepared` on an input placed
    once (the runners synchronise before returning); copies are timed apart."""
    if (iterations is None and seconds is None) or (iterations is not None and iterations < 1):
        raise BenchError(f"give iterations >= 1 or seconds, got {iterations} and {seconds}")
    prepared = warm_up(runner, x, calls=warmup)
    compute: list[float] = []
    copies: list[float] = []
    clock = time.perf_counter
    start = clock()
    while True:
        t0 = clock()
        result = runner.run_prepared(prepared)
        t1 = clock()
        runner.fetch(result)
        runner.prepare(x)
        compute.append(t1 - t0)
        copies.append(clock() - t1)
        n = len(compute)
        budget_spent = n >= min_iterations and clock() - start >= (seconds or 0)
        if n >= (iterations or MAX_ITERATIONS) or (iterations is None and budget_spent):
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
