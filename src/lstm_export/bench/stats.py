"""Latency statistics, pure numpy: every figure the bench compares comes from the median (the
mean is kept for reference only: one stalled call moves it tenfold)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lstm_export.errors import BenchError

#: a round whose p90 is more than this multiple of its p50 was disturbed (another process ran)
DISTURBED_SPREAD = 1.5
#: a figure is stable when the interquartile range of its rounds is within this share of the median
STABLE_SPREAD = 0.10


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
    iqr_ms: float
    throughput: float  # images per second = batch_size / median latency

    @property
    def spread(self) -> float:
        """p90 / p50: 1.0 for perfectly steady calls."""
        return self.p90_ms / self.p50_ms if self.p50_ms > 0 else float("inf")

    @property
    def disturbed(self) -> bool:
        return self.spread > DISTURBED_SPREAD

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "spread": self.spread, "disturbed": self.disturbed}


def latency_stats(seconds: Sequence[float] | np.ndarray, batch_size: int) -> LatencyStats:
    """Summarise per-call durations (seconds) of calls on ``batch_size`` images each."""
    t = np.asarray(seconds, dtype=np.float64) * 1e3
    if t.size == 0:
        raise BenchError("no timings to summarise")
    if batch_size < 1:
        raise BenchError(f"batch size must be >= 1, got {batch_size}")
    p25, p50, p75, p90, p99 = np.percentile(t, [25, 50, 75, 90, 99])
    return LatencyStats(
        iterations=int(t.size),
        mean_ms=float(t.mean()),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        min_ms=float(np.min(t)),
        max_ms=float(np.max(t)),
        iqr_ms=float(p75 - p25),
        throughput=batch_size / (p50 / 1e3) if p50 > 0 else float("inf"),
    )


def round_spread(values: Sequence[float]) -> float:
    """Interquartile range / median of per-round figures: 0 when every round agrees (one disturbed
    round among several moves the quartiles little)."""
    m = np.asarray(values, dtype=np.float64)
    if m.size == 0:
        raise BenchError("no rounds to compare")
    p25, mid, p75 = np.percentile(m, [25, 50, 75])
    return float((p75 - p25) / mid) if mid > 0 else float("inf")


def is_stable(medians: Sequence[float], *, min_rounds: int = 3) -> bool:
    """Whether enough rounds agree closely enough (:data:`STABLE_SPREAD`) to report."""
    return len(medians) >= min_rounds and round_spread(medians) <= STABLE_SPREAD
