"""Reproduce the README's pipeline and benchmark figures from nothing.

Runs the one-command demo (data, seed-recipe training, export with validation, classification of a
sample folder, bench) into ``benchmarks/results/run/`` and keeps its figures beside it:
``bench-cpu.json``, ``bench-cpu.png``, ``bench-cpu.md`` and ``demo-summary.json``. With ``--best``
it also trains the ``best`` preset and records ``train-best.json``. Generated models stay under
``run/`` (ignored by git); the JSON, PNG and markdown files are the committed results.

    .venv/bin/python benchmarks/reproduce.py [--best] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from lstm_export.bench.report import markdown
from lstm_export.pipeline.demo import DemoSettings, run_demo
from lstm_export.train.presets import PRESETS, Preset

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--seconds", type=float, default=1.0, help="bench budget per batch size")
    parser.add_argument("--best", action="store_true", help="also train the best preset")
    args = parser.parse_args()
    out: Path = args.out
    run = out / "run"

    def step(name: str, detail: str) -> None:
        if detail:
            print(f"{name:<9} {detail}", flush=True)

    summary = run_demo(DemoSettings(out=run, bench_seconds=args.seconds), on_step=step)
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

        result = train(PRESETS[Preset.best])
        save_run(result, out / "run-best")
        best = {k: result.metrics[k] for k in ("test_accuracy", "train_seconds", "epochs")}
        best["history"] = result.metrics["history"]
        (out / "train-best.json").write_text(json.dumps(best, indent=2) + "\n")
        print(f"best preset: {best['test_accuracy'] * 100:.2f} % in {best['train_seconds']:.0f} s")


if __name__ == "__main__":
    main()
