"""Throughput of ``lstm-export infer`` on a folder of 28x28 PNGs, and what bounds it.

Measures, on the same warm files:

1. decode only: one worker turning files into uint8 digits (read, PNG decode, polarity, size);
2. inference only: ONNX Runtime fp32 on the already decoded digits, at its best (1 thread or
   all cores, batch 64, 128 or 256: the fastest is kept);
3. end to end: :func:`classify_folder` with the automatic plan (walk, decode in parallel with
   inference, rows written to CSV), as ``lstm-export infer`` runs it;
4. naive loop: open each file with PIL and run the eager model on it alone.

Targets (issue 4): end to end >= 70 % of the slower of (1) and (2), and >= 5x (4).

    python benchmarks/infer_throughput.py --checkpoint runs/latest/model.pt
        [--folder DIR] [--onnx model.onnx] [--int8] [--repeat 3] [--naive 1000] [--json out.json]

Without --folder, 10,000 test digits (``--count``) are written as PNGs in a temporary folder
(MNIST from --data-dir, $LSTM_EXPORT_DATA_DIR or the cache, fetched into the cache when missing);
without --onnx, the checkpoint is exported first. Every model runs through the runner registry.
Exits 1 when a target is missed, unless --no-targets (tiny runs, where the ratios mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lstm_export.bench.machine import cpu_model
from lstm_export.errors import LstmExportError
from make_folders import mnist_folder  # a sibling script: benchmarks/ is sys.path[0]

#: batch sizes tried for "inference only"
BATCHES = (64, 128, 256)


def best_rate(count: int, fn: Callable[[], object], repeat: int) -> float:
    """Images per second of the fastest of ``repeat`` runs of ``fn`` (which handles ``count``)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return count / best


def main(argv: list[str] | None = None) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="infer-bench-"))
    try:
        return measure(scratch, parse_args(argv))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/latest/model.pt"))
    parser.add_argument("--folder", type=Path, default=None, help="default: 10k test PNGs")
    parser.add_argument("--count", type=int, default=10000, help="digits written without --folder")
    parser.add_argument("--onnx", type=Path, default=None, help="default: export the checkpoint")
    parser.add_argument("--int8", action="store_true", help="also an int8 (dynamic) ONNX model")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs per measurement")
    parser.add_argument("--naive", type=int, default=1000, help="images timed in the naive loop")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--no-targets", action="store_true", help="exit 0 even when a target is missed"
    )
    return parser.parse_args(argv)


def onnx_models(args: argparse.Namespace, checkpoint: Path, scratch: Path) -> dict[str, Path]:
    """``{"fp32": model.onnx[, "int8": model.int8.onnx]}``, exported where not given."""
    onnx_path = args.onnx
    if onnx_path is None:
        from lstm_export.export.to_onnx import export_onnx

        onnx_path = export_onnx(checkpoint, scratch / "model.onnx", validate=False).path
    models = {"fp32": Path(onnx_path)}
    if args.int8:
        from lstm_export.data.cli import require_mnist
        from lstm_export.export.quantize import quantize_int8

        int8 = quantize_int8(
            Path(onnx_path), scratch / "model.int8.onnx", data_dir=require_mnist(args.data_dir)
        )
        models["int8"] = Path(int8.path)
    return models


def measure_model(
    tag: str, model_path: Path, x: np.ndarray, folder: Path, scratch: Path, repeat: int
) -> tuple[dict[str, Any], list[tuple[str, float]]]:
    """Inference alone at its best (every thread count x batch size tried, the fastest kept),
    and end to end with the automatic plan: the figures and the table's rows."""
    from lstm_export.devices import usable_cores
    from lstm_export.infer.classify import classify_folder
    from lstm_export.infer.pipeline import plan_run
    from lstm_export.infer.registry import RUNNERS, load_runner
    from lstm_export.infer.writers import open_rows

    n, results, best = len(x), {}, (0.0, 0, 0)

    def infer_all(runner: Any, batch: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(0, n, batch):
                runner.infer(x[i : i + batch])

        return run

    for threads in sorted({1, usable_cores()}):
        with load_runner(model_path, device="cpu", threads=threads, spinning=False) as runner:
            for batch in BATCHES:
                runner.infer(x[:batch])
                rate = best_rate(n, infer_all(runner, batch), repeat)
                results[f"inference_{tag}_t{threads}_b{batch}"] = rate
                best = max(best, (rate, threads, batch))
    results[f"inference_only_{tag}"] = best[0]
    rows = [(f"inference only, ORT {tag} (best: {best[1]} threads, batch {best[2]})", best[0])]
    plan = plan_run()
    options = RUNNERS["onnxruntime"].planned_options(plan.threads)
    with load_runner(model_path, device="cpu", **options) as runner:
        runner.infer(x[: plan.batch_size])
        accuracy: list[float] = []

        def end_to_end() -> None:
            with open_rows(scratch / f"rows-{tag}.csv", labelled=True) as writer:
                result = classify_folder(runner, folder, on_batch=writer.write)
            accuracy[:] = [result.summary.accuracy or 0.0]

        results[f"end_to_end_{tag}"] = best_rate(n, end_to_end, repeat)
        results[f"accuracy_{tag}"] = accuracy[0]
    rows.append((f"end to end, ORT {tag} ({plan.describe()})", results[f"end_to_end_{tag}"]))
    return results, rows


def measure(scratch: Path, args: argparse.Namespace) -> int:
    """Run every measurement (scratch files under ``scratch``); 0 when both targets are met."""
    import onnxruntime
    import torch
    from PIL import Image

    from lstm_export.checkpoint import resolve_checkpoint
    from lstm_export.data.preprocess import to_model_input
    from lstm_export.devices import usable_cores
    from lstm_export.infer.images import decode_files, to_batch
    from lstm_export.infer.pipeline import plan_run
    from lstm_export.infer.registry import load_runner
    from lstm_export.infer.walk import walk_images

    cores = usable_cores()
    load = os.getloadavg()[0]
    checkpoint = resolve_checkpoint(args.checkpoint)
    folder = args.folder or mnist_folder(scratch, args.count, args.data_dir)
    models = onnx_models(args, checkpoint, scratch)
    paths = walk_images(folder).paths
    n = len(paths)
    for p in paths:  # warm file cache: every measurement reads the same cached files
        Path(p).read_bytes()
    print(
        f"machine: {cores} CPU cores ({cpu_model()}), "
        f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}; Python {platform.python_version()},"
        f" onnxruntime {onnxruntime.__version__}, torch {torch.__version__}; "
        f"{n:,} images in {folder}; best of {args.repeat}",
        file=sys.stderr,
    )
    if load > 0.5:
        print(f"note: load average {load:.1f} before starting: other work shares the CPUs")

    results: dict[str, Any] = {"images": n, "cores": cores, "cpu": cpu_model(), "load": load}
    digits_holder: list[np.ndarray] = []

    def decode_only() -> None:
        digits, errors = decode_files(paths)
        assert not any(errors)
        digits_holder[:] = [digits]

    results["decode_only"] = best_rate(n, decode_only, args.repeat)
    x = to_batch(digits_holder[0])
    rows: list[tuple[str, float]] = [
        ("decode only (1 worker: read, decode, polarity, 28x28 uint8)", results["decode_only"])
    ]
    for tag, model_path in models.items():
        figures, model_rows = measure_model(tag, model_path, x, folder, scratch, args.repeat)
        results |= figures
        rows += model_rows

    # Naive: PIL open, the eager model on one image at a time (torch's default threads).
    m = min(args.naive, n)
    with load_runner(checkpoint, "eager", "cpu") as eager:

        def naive() -> None:
            for p in paths[:m]:
                img = np.asarray(Image.open(p).convert("L"), dtype=np.uint8)
                eager.infer(to_model_input(img[None])).argmax(1)

        results["naive"] = best_rate(m, naive, args.repeat)
    results["plan"] = plan_run().describe()
    rows.append((f"naive loop (PIL + eager, one image at a time, {m} images)", results["naive"]))
    return report(results, rows, args)


def report(results: dict[str, Any], rows: list[tuple[str, float]], args: argparse.Namespace) -> int:
    """Print the table and the targets (and write the figures); 0 when both targets are met."""
    slower = min(results["decode_only"], results["inference_only_fp32"])
    results["ratio_vs_slower"] = results["end_to_end_fp32"] / slower
    results["ratio_vs_naive"] = results["end_to_end_fp32"] / results["naive"]
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'images/s':>9}  {'us/image':>8}")
    for name, rate in rows:
        print(f"{name:<{width}}  {rate:>9,.0f}  {1e6 / rate:>8.1f}")
    ok_slower = results["ratio_vs_slower"] >= 0.70
    ok_naive = results["ratio_vs_naive"] >= 5.0
    print(
        f"end to end (fp32) / slower of decode only and inference only: "
        f"{results['ratio_vs_slower'] * 100:.0f} % (target >= 70 %) "
        f"{'PASS' if ok_slower else 'FAIL'}"
    )
    print(
        f"end to end (fp32) / naive loop: {results['ratio_vs_naive']:.1f}x (target >= 5x) "
        f"{'PASS' if ok_naive else 'FAIL'}"
    )
    print(f"end-to-end accuracy (fp32): {results['accuracy_fp32'] * 100:.2f} %")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if (ok_slower and ok_naive) or args.no_targets else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LstmExportError as exc:  # one line, as the lstm-export commands print it
        sys.exit(f"error: {exc}")
