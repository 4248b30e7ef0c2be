"""Check the bench's ONNX Runtime figures against an independent timing of the same file.

Alternates, in one process, the bench's own harness (``time_runner`` on the ``OnnxRuntimeRunner``
built by the runner registry, with the bench's threads) and a plain ``session.run`` loop written
from scratch, three times per batch size, and prints both p50 latencies and their ratio. A ratio
near 1.0 means the bench adds nothing to what ONNX Runtime itself costs.

The plain loop opens its own ``onnxruntime.InferenceSession`` on purpose, bypassing the runner
registry and ``lstm_export.ort_session``: it is a measuring instrument that must share no code
with the harness it checks, not a code path of the product that runs a model. Its inputs are
random pixels; only the time is of interest.

    .venv/bin/python benchmarks/independent_timing.py benchmarks/results/run/model.onnx
        [--batch-sizes 1,8,64,256] [--threads N] [--seconds 0.5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from lstm_export.errors import LstmExportError


def plain_p50(path: Path, x: np.ndarray, threads: int, seconds: float) -> float:
    """p50 milliseconds of ``session.run`` on ``x``: the independent instrument (see above)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(20):
        session.run(None, {name: x})
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def bench_p50(path: Path, x: np.ndarray, threads: int, seconds: float) -> float:
    """p50 milliseconds of compute as the bench measures it (its runner, its harness)."""
    from lstm_export.bench.timing import time_runner
    from lstm_export.infer.registry import load_runner

    with load_runner(path, "onnxruntime", "cpu", threads=threads) as runner:
        timings = time_runner(runner, x, warmup=20, seconds=seconds)
    return float(np.median(timings.compute) * 1e3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("model", type=Path, help="an .onnx file")
    parser.add_argument("--batch-sizes", default="1,8,64,256")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seconds", type=float, default=0.5, help="time budget per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each, median kept")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"{args.model} not found")
    try:
        batches = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes must be whole numbers separated by commas: {args.batch_sizes}")
    if min(batches) < 1 or args.threads < 1 or args.repeats < 1 or args.seconds <= 0:
        parser.error("batch sizes, --threads and --repeats must be >= 1, --seconds > 0")
    rng = np.random.default_rng(0)
    print(f"{'batch':>5} {'bench p50 ms':>13} {'plain p50 ms':>13} {'ratio':>6}")
    for batch in batches:
        x = rng.random((batch, 28, 28), dtype=np.float32)
        ours, plain = [], []
        for _ in range(args.repeats):
            ours.append(bench_p50(args.model, x, args.threads, args.seconds))
            plain.append(plain_p50(args.model, x, args.threads, args.seconds))
        a, b = float(np.median(ours)), float(np.median(plain))
        print(f"{batch:>5} {a:>13.3f} {b:>13.3f} {a / b:>6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LstmExportError as exc:  # one line, as the lstm-export commands print it
        sys.exit(f"error: {exc}")
