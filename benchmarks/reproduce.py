"""Reproduce the README's pipeline and benchmark figures from nothing.

Runs the one-command demo (data, seed-recipe training, export with validation, classification of a
sample folder, bench) into ``benchmarks/results/run/`` and keeps its figures beside it:
``bench-cpu.json``, ``bench-cpu.png``, ``bench-cpu.md`` and ``demo-summary.json``. With ``--best``
it also trains the ``best`` preset and records ``train-best.json``. Generated models stay under
``run/`` (ignored by git); the JSON, PNG and markdown files are the committed results.

    .venv/bin/python benchmarks/reproduce.py [--best] [--seconds 1.0] [--data-dir DIR]

MNIST comes from --data-dir, $LSTM_EXPORT_DATA_DIR or the cache (fetched into when missing).
``--epochs``, ``--subset``, ``--sample-images``, ``--batch-sizes`` and ``--rounds`` shrink the
run for a quick check; the committed figures use their defaults.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from lstm_export.bench.report import markdown
from lstm_export.data.cli import require_mnist
from lstm_export.errors import LstmExportError
from lstm_export.pipeline.demo import DemoSettings, run_demo
from lstm_export.train.presets import PRESETS, Preset

RESULTS = Path(__file__).resolve().parent / "results"


def batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,8,64"`` -> ``(1, 8, 64)``."""
    try:
        sizes = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not whole numbers separated by commas: {text}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1: {text}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    defaults = DemoSettings()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--seconds", type=float, default=1.0, help="bench budget per batch size")
    parser.add_argument("--best", action="store_true", help="also train the best preset")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with MNIST")
    parser.add_argument("--epochs", type=int, default=None, help="override the seed recipe's")
    parser.add_argument("--subset", type=int, default=None, help="train on the first N images")
    parser.add_argument("--sample-images", type=int, default=defaults.sample_images)
    parser.add_argument(
        "--batch-sizes",
        type=batch_sizes,
        default=defaults.bench_batch_sizes,
        help="bench batch sizes, e.g. 1,8,64",
    )
    parser.add_argument("--rounds", type=int, default=defaults.bench_rounds)
    args = parser.parse_args(argv)
    out: Path = args.out
    run = out / "run"
    data_dir = require_mnist(args.data_dir)
    settings = DemoSettings(
        out=run,
        data_dir=data_dir,
        bench_seconds=args.seconds,
        bench_rounds=args.rounds,
        bench_batch_sizes=args.batch_sizes,
        sample_images=args.sample_images,
        epochs=args.epochs,
        subset=args.subset,
    )

    def step(name: str, detail: str) -> None:
        if detail:
            print(f"{name:<9} {detail}", flush=True)

    summary = run_demo(settings, on_step=step)
    shutil.copy(run / "bench.json", out / "bench-cpu.json")
    shutil.copy(run / "bench.png", out / "bench-cpu.png")
    (out / "bench-cpu.md").write_text(markdown(summary.bench))
    record = {
        "test_accuracy": summary.test_accuracy,
        "train_seconds": summary.train_seconds,
        "export": summary.export,
        "folder": summary.folder,
        "seconds": round(summary.seconds, 1),
    }
    (out / "demo-summary.json").write_text(json.dumps(record, indent=2) + "\n")
    print(markdown(summary.bench))
    if args.best:
        from lstm_export.train.loop import train
        from lstm_export.train.run_dir import save_run

        result = train(PRESETS[Preset.best], data_dir)
        save_run(result, out / "run-best")
        best = {k: result.metrics[k] for k in ("test_accuracy", "train_seconds", "epochs")}
        best["history"] = result.metrics["history"]
        (out / "train-best.json").write_text(json.dumps(best, indent=2) + "\n")
        print(f"best preset: {best['test_accuracy'] * 100:.2f} % in {best['train_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LstmExportError as exc:  # one line, as the lstm-export commands print it
        sys.exit(f"error: {exc}")
