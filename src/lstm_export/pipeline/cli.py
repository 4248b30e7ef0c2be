"""``lstm-export demo``: the whole pipeline on a fresh machine, with a closing summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lstm_export.cli_options import DataDirOption
from lstm_export.console import console, count, make_progress, plain
from lstm_export.train.presets import Preset


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for every output.")] = Path(
        "runs/demo"
    ),
    preset: Annotated[Preset, typer.Option("--preset", help="Training recipe.")] = Preset.seed,
    data_dir: DataDirOption = None,
    sample_images: Annotated[
        int, typer.Option("--sample-images", min=1, help="Test digits written as PNGs, classified.")
    ] = 2000,
    bench_seconds: Annotated[
        float,
        typer.Option("--bench-seconds", min=0.01, help="Bench time per backend, batch, round."),
    ] = 0.5,
    bench_rounds: Annotated[int, typer.Option("--bench-rounds", min=1, help="Bench rounds.")] = 3,
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Override the preset.")
    ] = None,
    subset: Annotated[
        int | None, typer.Option("--subset", min=1, help="Train on N images only.")
    ] = None,
) -> None:
    """Data -> train -> export (TorchScript, ONNX, int8) -> classify a folder -> bench."""
    from lstm_export.bench.report import print_tables
    from lstm_export.data.cli import require_mnist
    from lstm_export.fileio import ensure_writable_dir, terminating
    from lstm_export.pipeline.demo import DemoSettings, run_demo
    from lstm_export.train.cli import follow_training
    from lstm_export.train.presets import PRESETS

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
    steps = ("data", "train", "export", "classify", "bench")
    with terminating(), make_progress(transient=True) as progress:  # SIGTERM: children go too
        tasks = {name: progress.add_task(name, total=None, visible=False) for name in steps}

        def on_step(name: str, detail: str) -> None:
            progress.update(tasks[name], visible=not detail)
            if detail:
                progress.console.print(f"[green]✓[/] [bold]{name:<8}[/] {plain(detail)}")

        def on_bench(description: str, done: int, total: int) -> None:
            text = f"bench: {plain(description)}"
            progress.update(tasks["bench"], description=text, completed=done, total=total or None)

        epochs_run = epochs or PRESETS[preset].epochs
        on_train_step, on_epoch = follow_training(progress, tasks["train"], epochs_run)
        summary = run_demo(
            settings, on_step, on_train_step=on_train_step, on_epoch=on_epoch,
            on_bench_progress=on_bench,
        )  # fmt: skip
    print_tables(summary.bench)
    _print_summary(summary)


def _print_summary(summary: Any) -> None:
    rows = {(r["backend"], r["batch_size"]): r for r in summary.bench["latency"]}
    console.rule("summary")
    console.print(
        f"trained to {summary.test_accuracy * 100:.2f} % test accuracy in "
        f"{summary.train_seconds:.0f} s; sample folder: {count(summary.folder['images'], 'PNG')} at "
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
        console.print(f"{label:<12} {plain(path)}", highlight=False, soft_wrap=True)
    console.print(f"total {summary.seconds:.0f} s", highlight=False)
