"""Time two ONNX files of one model against each other: did a graph change make it faster?

Both files run through the bench's own runner and harness with the same options (a bench
variant's, ``onnxruntime-int8`` for example), alternating A and B in one process so that a drift
of the machine hits both, ``--repeats`` times per batch size; the median of the p50s is printed
with the ratio B / A. The two files must give the same answers: the logits of each batch are
compared first (max |difference| printed), and a file that disagrees is an error.

    .venv/bin/python benchmarks/graph_ab.py A.onnx B.onnx [--variant onnxruntime-int8]
        [--batch-sizes 1,8,256] [--threads N] [--seconds 0.5] [--repeats 5] [--atol 1e-5]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lstm_export.errors import LstmExportError


def variant_options(name: str) -> dict[str, Any]:
    """The runner options of the bench variant ``name`` (an ONNX Runtime one)."""
    from lstm_export.bench.variants import VARIANTS

    for variant in VARIANTS:
        if variant.name == name:
            if variant.backend != "onnxruntime":
                raise SystemExit(f"error: {name} does not run ONNX files on ONNX Runtime")
            return dict(variant.options)
    onnx_variants = ", ".join(v.name for v in VARIANTS if v.backend == "onnxruntime")
    raise SystemExit(f"error: unknown variant {name!r} (choose from {onnx_variants})")


def main(argv: list[str] | None = None) -> int:
    from lstm_export.bench.timing import time_runner
    from lstm_export.infer.registry import load_runner

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("a", type=Path, help="the first .onnx file (the ratio's denominator)")
    parser.add_argument("b", type=Path, help="the second .onnx file")
    parser.add_argument("--variant", default="onnxruntime", help="bench variant whose options")
    parser.add_argument("--batch-sizes", default="1,8,256")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seconds", type=float, default=0.5, help="time budget per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="A/B pairs per batch size")
    parser.add_argument("--atol", type=float, default=1e-5, help="largest |logit difference|")
    args = parser.parse_args(argv)
    for path in (args.a, args.b):
        if not path.is_file():
            parser.error(f"{path} not found")
    try:
        batches = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes must be whole numbers separated by commas: {args.batch_sizes}")
    if min(batches) < 1 or args.threads < 1 or args.repeats < 1 or args.seconds <= 0:
        parser.error("batch sizes, --threads and --repeats must be >= 1, --seconds > 0")
    options = {**variant_options(args.variant), "threads": args.threads}
    rng = np.random.default_rng(0)
    with (
        load_runner(args.a, "onnxruntime", "cpu", **options) as a,
        load_runner(args.b, "onnxruntime", "cpu", **options) as b,
    ):
        print(f"{'batch':>5} {'A p50 ms':>10} {'B p50 ms':>10} {'B / A':>6} {'max |diff|':>11}")
        for batch in batches:
            x = rng.random((batch, 28, 28), dtype=np.float32)
            diff = float(np.abs(a.infer(x) - b.infer(x)).max())
            if not diff <= args.atol:
                sys.exit(f"error: the files disagree at batch {batch}: max |diff| {diff:.2e}")
            times: dict[str, list[float]] = {"a": [], "b": []}
            for _ in range(args.repeats):
                for key, runner in (("a", a), ("b", b)):
                    timings = time_runner(runner, x, warmup=20, seconds=args.seconds)
                    times[key].append(float(np.median(timings.compute)) * 1e3)
            pa, pb = float(np.median(times["a"])), float(np.median(times["b"]))
            print(f"{batch:>5} {pa:>10.4f} {pb:>10.4f} {pb / pa:>6.3f} {diff:>11.1e}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LstmExportError as exc:  # one line, as the lstm-export commands print it
        sys.exit(f"error: {exc}")
