"""Check the bench's ONNX Runtime figures against an independent timing of the same file.

Alternates, in one process, the bench's own harness (``time_runner`` on the ``OnnxRuntimeRunner``
with the bench's threads) and a plain ``session.run`` loop written from scratch, three times per
batch size, and prints both p50 latencies and their ratio. A ratio near 1.0 means the bench adds
nothing to what ONNX Runtime itself costs.

    .venv/bin/python benchmarks/independent_timing.py benchmarks/results/run/model.onnx
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def plain_p50(path: Path, x: np.ndarray, threads: int, seconds: float) -> float:
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
    from lstm_export.bench.timing import time_runner
    from lstm_export.infer.registry import load_runner

    with load_runner(path, "onnxruntime", "cpu", threads=threads) as runner:
        timings = time_runner(runner, x, warmup=20, seconds=seconds)
    return float(np.median(timings.compute) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--batch-sizes", default="1,8,64,256")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'batch':>5} {'bench p50 ms':>13} {'plain p50 ms':>13} {'ratio':>6}")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        x = rng.random((batch, 28, 28), dtype=np.float32)
        ours, plain = [], []
        for _ in range(3):
            ours.append(bench_p50(args.model, x, args.threads, args.seconds))
            plain.append(plain_p50(args.model, x, args.threads, args.seconds))
        a, b = float(np.median(ours)), float(np.median(plain))
        print(f"{batch:>5} {a:>13.3f} {b:>13.3f} {a / b:>6.2f}")


if __name__ == "__main__":
    main()
