"""Latency statistics: pure numpy, no timing here (parity lives in :mod:`lstm_export.parity`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lstm_export.errors import BenchError


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency of one backend at one batch size, in milliseconds."""

    iterations: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    throughput: float  # images per second = batch_size / mean latency

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def latency_stats(seconds: Sequence[float] | np.ndarray, batch_size: int) -> LatencyStats:
    """Summarise per-call durations (seconds) of calls on ``batch_size`` images each.

    Percentiles use numpy's linear interpolation between closest ranks.
    """
    t = np.asarray(seconds, dtype=np.float64) * 1e3
    if t.size == 0:
        raise BenchError("no timings to summarise")
    if batch_size < 1:
        raise BenchError(f"batch size must be >= 1, got {batch_size}")
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    mean = float(t.mean())
    return LatencyStats(
        iterations=int(t.size),
        mean_ms=mean,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        min_ms=float(np.min(t)),
        max_ms=float(np.max(t)),
        throughput=batch_size / (mean / 1e3) if mean > 0 else float("inf"),
    )
