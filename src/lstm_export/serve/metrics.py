"""Per-model statistics in Triton's shape (``GET /v2/models/{m}/stats``) and as Prometheus text.

Counts and durations follow Triton's statistics extension: ``inference_count`` counts images
(rows of the batch), ``execution_count`` model runs (a dynamic batch is one run), and each
request that ran is counted once in ``queue`` (waiting for its run), ``compute_input`` (its
body decoded into the input tensor), ``compute_infer`` (the run it was part of) and
``compute_output`` (its answer encoded), all four at once when it is answered, so that their
counts agree at any moment (perf_analyzer requires it). The Prometheus names are Triton's
(``nv_inference_*``), so dashboards built for Triton read this server too. Updated from the
server's event loop only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Duration:
    """How many, and their nanoseconds in all."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += max(0, ns)

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    """What one model version has done since the server started."""

    name: str
    version: str
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    #: requests accepted and not yet answered
    pending: int = 0
    #: batch size -> model runs of that size
    batches: dict[int, Duration] = field(default_factory=dict)

    def execution(self, rows: int, ns: int) -> None:
        """One model run over ``rows`` images that took ``ns`` nanoseconds."""
        self.execution_count += 1
        self.inference_count += rows
        self.batches.setdefault(rows, Duration()).add(ns)
        self.last_inference_ms = int(time.time() * 1000)

    def computed(self, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One request that ran: its time in the queue, decoding, its run and encoding."""
        self.queue.add(queue_ns)
        self.compute_input.add(input_ns)
        self.compute_infer.add(infer_ns)
        self.compute_output.add(output_ns)

    def request(self, ok: bool, ns: int) -> None:
        """One request answered (``ok``) or refused, after ``ns`` nanoseconds."""
        (self.success if ok else self.fail).add(ns)

    def to_triton(self) -> dict[str, Any]:
        """One entry of Triton's ``model_stats`` list."""
        zero = Duration().to_dict()
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_dict(),
                "fail": self.fail.to_dict(),
                "queue": self.queue.to_dict(),
                "compute_input": self.compute_input.to_dict(),
                "compute_infer": self.compute_infer.to_dict(),
                "compute_output": self.compute_output.to_dict(),
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {"batch_size": size, "compute_infer": runs.to_dict()}
                for size, runs in sorted(self.batches.items())
            ],
        }


#: Prometheus metric (Triton's name) -> (help, value of a ModelStats); counters but the last
_METRICS: dict[str, tuple[str, Any]] = {
    "nv_inference_request_success": ("Successful requests", lambda s: s.success.count),
    "nv_inference_request_failure": ("Failed requests", lambda s: s.fail.count),
    "nv_inference_count": ("Inferences (images) performed", lambda s: s.inference_count),
    "nv_inference_exec_count": ("Model executions performed", lambda s: s.execution_count),
    "nv_inference_request_duration_us": (
        "Cumulative request duration (us)",
        lambda s: (s.success.ns + s.fail.ns) // 1000,
    ),
    "nv_inference_queue_duration_us": (
        "Cumulative queue duration (us)",
        lambda s: s.queue.ns // 1000,
    ),
    "nv_inference_compute_input_duration_us": (
        "Cumulative compute input duration (us)",
        lambda s: s.compute_input.ns // 1000,
    ),
    "nv_inference_compute_infer_duration_us": (
        "Cumulative compute inference duration (us)",
        lambda s: s.compute_infer.ns // 1000,
    ),
    "nv_inference_compute_output_duration_us": (
        "Cumulative compute output duration (us)",
        lambda s: s.compute_output.ns // 1000,
    ),
    "nv_inference_pending_request_count": ("Requests pending", lambda s: s.pending),
}


def prometheus_text(stats: list[ModelStats]) -> str:
    """Prometheus text exposition (format 0.0.4) of every model's counters."""
    lines = []
    for metric, (help_text, value) in _METRICS.items():
        kind = "gauge" if "pending" in metric else "counter"
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
        lines += [
            f'{metric}{{model="{s.name}",version="{s.version}"}} {value(s)}'  # names: [\w.-]
            for s in stats
        ]
    return "\n".join(lines) + "\n"
