"""Latency and parity statistics: pure numpy, no timing here."""

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
        min_ms=float(t.min()),
        max_ms=float(t.max()),
        throughput=batch_size / (mean / 1e3) if mean > 0 else float("inf"),
    )


@dataclass(frozen=True)
class ParityStats:
    """How one backend's logits compare with eager PyTorch's on the same images."""

    images: int
    accuracy: float  # top-1 in [0, 1]
    agreement: float  # fraction of argmax equal to eager's, in [0, 1]
    max_abs_diff: float
    mean_abs_diff: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parity_stats(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> ParityStats:
    """``logits`` and ``reference`` (N, C) float, ``labels`` (N,) int -> parity with reference."""
    if logits.shape != reference.shape or logits.shape[0] != labels.shape[0]:
        raise BenchError(
            f"shape mismatch: logits {logits.shape}, reference {reference.shape}, "
            f"labels {labels.shape}"
        )
    diff = np.abs(logits.astype(np.float64) - reference.astype(np.float64))
    pred = logits.argmax(axis=1)
    return ParityStats(
        images=int(labels.shape[0]),
        accuracy=float((pred == labels).mean()),
        agreement=float((pred == reference.argmax(axis=1)).mean()),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
    )
