"""``lstm-export demo``: the whole pipeline on a fresh machine, with a closing summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from lstm_export.console import console, err_console
from lstm_export.train.presets import Preset


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Folder for every output."),
    preset: Preset = typer.Option(Preset.seed, "--preset", help="Training recipe."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder with MNIST IDX files."),
    sample_images: int = typer.Option(
        2000, "--sample-images", min=1, help="Test digits written as PNGs and classified."
    ),
    bench_seconds: float = typer.Option(
        0.5, "--bench-seconds", min=0.01, help="Bench time budget per backend, batch size, round."
    ),
    bench_rounds: int = typer.Option(3, "--bench-rounds", min=1, help="Bench rounds."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override the preset."),
    subset: int | None = typer.Option(None, "--subset", min=1, help="Train on N images only."),
) -> None:
    """Data -> train -> export (TorchScript, ONNX, int8) -> classify a folder -> bench."""
    from lstm_export.bench.cli import print_tables
    from lstm_export.data.cli import require_mnist
    from lstm_export.fileio import ensure_writable_dir
    from lstm_export.pipeline.demo import DemoSettings, run_demo

    ensure_writable_dir(out)  # fail before a download, not after
    settings = DemoSettings(
        out=out,
        preset=preset,
        data_dir=require_mnist(data_dir),  # fetched into the cache (said on stderr) if missing
        sample_images=sample_images,
        bench_seconds=bench_seconds,
        bench_rounds=bench_rounds,
        epochs=epochs,
        subset=subset,
    )
    started: dict[str, Any] = {}

    def on_step(name: str, detail: str) -> None:
        if not detail:
            started[name] = err_console.status(f"[bold]{name}[/] ...")
            started[name].start()
            return
        started.pop(name).stop()
        err_console.print(f"[green]✓[/] [bold]{name:<8}[/] {detail}", highlight=False)

    try:
        summary = run_demo(settings, on_step=on_step)
    finally:
        for status in started.values():
            status.stop()
    print_tables(summary.bench)
    _print_summary(summary)


def _print_summary(summary: Any) -> None:
    rows = {(r["backend"], r["batch_size"]): r for r in summary.bench["latency"]}
    console.rule("summary")
    console.print(
        f"trained to {summary.test_accuracy * 100:.2f} % test accuracy in "
        f"{summary.train_seconds:.0f} s; sample folder: {summary.folder['images']} PNGs at "
        f"{(summary.folder['accuracy'] or 0) * 100:.2f} %",
        highlight=False,
        soft_wrap=True,
    )
    for p in summary.bench["parity"]:
        name = p["backend"]
        b1, b256 = rows.get((name, 1)), rows.get((name, 256))
        parts = [f"{name:<18} accuracy {p['accuracy'] * 100:.2f} %"]
        if b1 is not None:
            parts.append(f"batch-1 latency {b1['latency_ratio']:.2f}x eager")
        if b256 is not None:
            parts.append(f"batch-256 throughput {b256['speedup']:.2f}x eager")
        console.print(", ".join(parts), highlight=False, soft_wrap=True)
    for label, path in summary.files.items():
        console.print(f"{label:<12} {path}", highlight=False, soft_wrap=True)
    console.print(f"total {summary.seconds:.0f} s", highlight=False)
