"""Throughput of ``lstm-export infer --engine ray`` against the in-process engine, and its fixed cost.

On one folder of 28x28 PNGs (10,000 MNIST test digits by default), the rows written to a CSV file
as the CLI does, each configuration run ``--repeat`` times (the fastest and the median kept):

1. in-process: :func:`~lstm_export.infer.classify.FolderRun` with the automatic plan;
2. ray, local, 1 actor and 2 actors: a local Ray started for the run and stopped after it, as
   ``--engine ray`` without ``--address`` does;
3. ray, warm, 2 actors: a Ray already running (as when joining a cluster): the actor pool's own
   start-up without the cluster's.

For each Ray run: the whole wall time (start to stop), the seconds to start Ray and to the first
block back (actors started, the model loaded in each), and the seconds the actors spent on the
blocks, from which the per-actor rate (images per second of one actor's work: the number
``docs/scale-out.md`` scales up), the pool's steady rate (actors x per-actor rate) and the fixed
start-up cost (``wall - images / steady rate``).

    python benchmarks/ray_throughput.py --model model.onnx [--folder DIR] [--count 10000]
        [--repeat 3] [--actors 1,2] [--no-warm] [--json benchmarks/results/ray-throughput.json]
        [--md benchmarks/results/ray-throughput.md]

Without --folder the digits are written as PNGs in a temporary folder (MNIST from --data-dir,
$LSTM_EXPORT_DATA_DIR or the cache); without --model a seeded, untrained model is exported
(throughput does not depend on the weights). ``--actors 1`` and ``--no-warm`` make a quick run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lstm_export.bench.machine import cpu_model
from make_folders import mnist_folder  # a sibling script: benchmarks/ is sys.path[0]

# a Ray started here listens on the loopback address only
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def make_model(root: Path) -> Path:
    import torch

    from lstm_export.checkpoint import make_checkpoint, save_checkpoint
    from lstm_export.config import ModelConfig
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig()).eval()
    save_checkpoint(make_checkpoint(model, metrics={}), root / "model.pt")
    return Path(export_onnx(root / "model.pt", root / "model.onnx", validate=False).path)


def run_in_process(model: Path, folder: Path, out: Path) -> dict[str, Any]:
    from lstm_export.infer.classify import FolderRun
    from lstm_export.infer.writers import open_rows

    t0 = time.perf_counter()
    with FolderRun(model, folder) as run:
        loaded = time.perf_counter()
        with open_rows(out, labelled=run.labelled) as writer:
            for rows in run.batches():
                writer.write(rows)
    wall = time.perf_counter() - t0
    assert run.summary is not None
    return {
        "wall_s": wall,
        "startup_s": loaded - t0,  # walk + model load
        "images": run.summary.images,
        "images_per_s": run.summary.images / wall,
        "steady_images_per_s": run.summary.images / run.summary.seconds,
        "plan": run.plan.describe(),
        "accuracy": run.summary.accuracy,
    }


def run_ray(model: Path, folder: Path, out: Path, actors: int) -> dict[str, Any]:
    from lstm_export.infer.ray_engine import RayRun
    from lstm_export.infer.writers import open_rows

    t0 = time.perf_counter()
    with RayRun(model, folder, actors=actors, progress=False) as run:
        with open_rows(out, labelled=run.labelled) as writer:
            for rows in run.batches():
                writer.write(rows)
        last_at = time.perf_counter()
    wall = time.perf_counter() - t0
    assert run.summary is not None and run.summary.ray is not None
    images, ray = run.summary.images, run.summary.ray
    per_actor = ray["images_per_actor_second"]
    work = ray["actor_seconds"] / actors  # the pool's work, were its actors perfectly overlapped
    return {
        "wall_s": wall,
        "images": images,
        "images_per_s": images / wall,
        "steady_images_per_s": images / work,
        "per_actor_images_per_s": per_actor,
        "startup_s": wall - work,
        "connect_s": ray["connect_seconds"],
        "first_block_s": ray["first_block_seconds"],
        "stop_s": time.perf_counter() - last_at,
        "plan": run.plan.describe(),
        "accuracy": run.summary.accuracy,
    }


def driver_costs(model: Path, folder: Path, scratch: Path) -> dict[str, Any]:
    """What the driver itself pays per file, whatever the cluster: walking the folder, holding
    its paths, and (with ``-o``) turning returned blocks into rows and writing them as CSV, or
    (with ``--output-dir``) only counting them. No Ray started: blocks as the actors return them
    are made up here."""
    import numpy as np

    from lstm_export.infer.ray_engine import RayRun
    from lstm_export.infer.rows import Scores
    from lstm_export.infer.walk import walk_images
    from lstm_export.infer.writers import open_rows

    t0 = time.perf_counter()
    walk = walk_images(folder)
    walk_s = time.perf_counter() - t0
    n = len(walk.paths)
    held = sum(
        sys.getsizeof(p) + sys.getsizeof(q) + 16
        for p, q in zip(walk.paths, walk.names, strict=True)
    )
    run = RayRun(model, folder, progress=False)  # builds, walks; starts nothing
    runner = run._driver_runner.load()
    rng = np.random.default_rng(0)
    block = 4096

    def begin() -> Any:  # the run's class names, labels and a fresh summary
        return run._begin(runner, model=str(model), backend="", device="cpu", plan=run.plan)

    def blocks() -> Any:
        for start in range(0, n, block):
            m = min(block, n - start)
            yield (
                start,
                Scores(rng.integers(0, 10, m), rng.random(m), [None] * m, None),
            )  # as the actors return them: class indices, confidences, no error

    begin()
    data = list(blocks()) * max(1, 100_000 // max(n, 1))  # the same blocks again: >= 100k rows
    rows_total = sum(len(scores.errors) for _, scores in data)
    t0 = time.perf_counter()
    with open_rows(scratch / "gather.csv", labelled=run.labelled) as writer:
        for start, scores in data:
            writer.write(run._rows(start, scores))
    gather_s = time.perf_counter() - t0
    summary, truth = begin(), np.asarray(run.labels) if run.labels is not None else None
    t0 = time.perf_counter()
    for start, scores in data:  # --output-dir: the counts of the rows read back, no rows made
        part = truth[start : start + len(scores.errors)] if truth is not None else None
        summary.count(part, scores.predicted)
    count_s = time.perf_counter() - t0
    runner.close()
    return {
        "files": n,
        "walk_files_per_s": n / walk_s,
        "driver_bytes_per_file": held / n,
        "gather_rows_per_s": rows_total / gather_s,
        "count_rows_per_s": rows_total / count_s,
    }


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Fastest run (by wall time) in full, and the median of each number."""
    best = min(samples, key=lambda s: s["wall_s"])
    out: dict[str, Any] = {"best": best, "runs": len(samples)}
    for key, value in best.items():
        if isinstance(value, float):
            out[f"median_{key}"] = statistics.median(s[key] for s in samples)
    return out


def measure(
    model: Path, folder: Path, scratch: Path, repeat: int, actors: list[int], warm: bool
) -> dict[str, Any]:
    import ray

    results: dict[str, Any] = {}
    configs: list[tuple[str, Any]] = [
        ("in-process", lambda out: run_in_process(model, folder, out))
    ]
    for n in actors:
        configs.append(
            (f"ray local, {n} actor{'s' if n != 1 else ''}",
             lambda out, n=n: run_ray(model, folder, out, n))
        )  # fmt: skip
    for name, fn in configs:
        samples = []
        for i in range(repeat):
            load = os.getloadavg()[0]
            sample = fn(scratch / f"rows-{len(results)}-{i}.csv")
            sample["load_average_before"] = load
            samples.append(sample)
            print(f"{name:24} run {i + 1}: {sample['images_per_s']:8,.0f} images/s end to end, "
                  f"{sample['steady_images_per_s']:8,.0f} steady, start-up "
                  f"{sample['startup_s']:.2f} s (load {load:.1f})", file=sys.stderr, flush=True)  # fmt: skip
        results[name] = summarise(samples)
    if not warm:
        return results
    # warm: Ray already up (joining a cluster): what a run costs beyond the cluster's start
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
             logging_level=logging.WARNING)  # fmt: skip
    try:
        samples = []
        for i in range(repeat):
            load = os.getloadavg()[0]
            sample = run_ray(model, folder, scratch / f"rows-warm-{i}.csv", max(actors))
            sample["load_average_before"] = load
            samples.append(sample)
            print(f"{'ray warm':24} run {i + 1}: {sample['images_per_s']:8,.0f} images/s "
                  f"end to end, {sample['steady_images_per_s']:8,.0f} steady, start-up "
                  f"{sample['startup_s']:.2f} s (load {load:.1f})", file=sys.stderr, flush=True)  # fmt: skip
        results[f"ray warm, {max(actors)} actors"] = summarise(samples)
    finally:
        ray.shutdown()
    return results


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# `--engine ray` against the in-process engine",
        "",
        f"{report['images']:,} PNGs (28x28 MNIST test digits), rows written to CSV; "
        f"{report['machine']['cpu']}, {report['machine']['cores']} cores, ray "
        f"{report['ray_version']}, best of {report['repeat']} runs (median in brackets). "
        f"Load average of the machine during the runs: {report['load_average_range']} "
        "(other jobs shared it: compare the rows, not the absolute numbers).",
        "",
        "| engine | images/s end to end | steady images/s | per actor | fixed start-up s |"
        " Ray start s | first block s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["results"].items():
        b = r["best"]
        connect = f"{b['connect_s']:.2f}" if "connect_s" in b else "-"
        first = f"{b['first_block_s']:.2f}" if "first_block_s" in b else "-"
        per_actor = (
            f"{b['per_actor_images_per_s']:,.0f} ({r['median_per_actor_images_per_s']:,.0f})"
            if "per_actor_images_per_s" in b
            else "-"
        )
        lines.append(
            f"| {name} | {b['images_per_s']:,.0f} ({r['median_images_per_s']:,.0f}) "
            f"| {b['steady_images_per_s']:,.0f} ({r['median_steady_images_per_s']:,.0f}) "
            f"| {per_actor} "
            f"| {b['startup_s']:.2f} ({r['median_startup_s']:.2f}) | {connect} | {first} |"
        )
    lines += [
        "",
        "- *end to end*: images / wall time, from the call to the closed CSV (Ray: its start and "
        "stop included).",
        "- *steady*: in-process, images / the run's time after the model is loaded; Ray, actors "
        "x *per actor*: images per second of one actor's own work (decode thread + 1-thread "
        "runner), from the time the actors report spending on blocks; the rate "
        "`docs/scale-out.md` scales from.",
        "- *fixed start-up*: wall time minus images / steady rate: what a run costs whatever its "
        "size (in-process: walk and model load; Ray: starting Ray, the actors and the model in "
        "each, and stopping Ray).",
        "- *ray warm*: Ray already running (joining a cluster): the actor pool's start only.",
        "",
        "The driver alone (no Ray; what it pays per file whatever the cluster): walks "
        f"{report['driver']['walk_files_per_s']:,.0f} files/s (this disk, cached), holds "
        f"{report['driver']['driver_bytes_per_file']:,.0f} bytes per file's paths, turns returned "
        f"blocks into CSV rows at {report['driver']['gather_rows_per_s']:,.0f} rows/s (`-o`) and "
        f"counts them at {report['driver']['count_rows_per_s']:,.0f} rows/s (`--output-dir`).",
        "",
        "Plans: " + "; ".join(f"{k}: {v['best']['plan']}" for k, v in report["results"].items()),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, default=None, help=".onnx (default: an untrained one)"
    )
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--actors", default="1,2", help="pool sizes of the local Ray runs")
    parser.add_argument(
        "--no-warm", action="store_true", help="skip the runs on an already started Ray"
    )
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--md", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        import ray
    except ImportError:
        parser.exit(1, "error: Ray is not installed: pip install 'lstm-export[ray]'\n")

    scratch = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    try:
        model = args.model or make_model(scratch)
        folder = args.folder or mnist_folder(scratch, args.count, args.data_dir)
        loads = [os.getloadavg()[0]]
        driver = driver_costs(model, folder, scratch)
        print(f"driver: {driver}", file=sys.stderr, flush=True)
        actors = [int(a) for a in args.actors.split(",") if a.strip()]
        results = measure(model, folder, scratch, args.repeat, actors, not args.no_warm)
        loads.append(os.getloadavg()[0])
        samples = [r["best"]["load_average_before"] for r in results.values()] + loads
        report = {
            "images": next(iter(results.values()))["best"]["images"],
            "repeat": args.repeat,
            "ray_version": ray.__version__,
            "machine": {
                "cpu": cpu_model(),
                "cores": os.cpu_count(),
                "python": platform.python_version(),
            },
            "load_average_range": f"{min(samples):.1f}-{max(samples):.1f}",
            "driver": driver,
            "results": results,
        }
        text = json.dumps(report, indent=2) + "\n"
        print(markdown(report))
        if args.json:
            args.json.write_text(text)
        if args.md:
            args.md.write_text(markdown(report))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    from lstm_export.errors import LstmExportError

    try:
        sys.exit(main())
    except LstmExportError as exc:  # one line, as the lstm-export commands print it
        sys.exit(f"error: {exc}")
