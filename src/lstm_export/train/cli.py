"""``lstm-export train``: train a preset (optionally overridden flag by flag) into a run folder."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.progress import TextColumn

from lstm_export.console import console, err_console, make_progress
from lstm_export.train.presets import PRESETS, Preset, Schedule


def train(
    preset: Preset = typer.Option(
        Preset.seed, "--preset", help="seed: Adam 0.01, batch 100, 2 epochs. best: >= 99 %."
    ),
    epochs: int | None = typer.Option(None, "--epochs", min=1),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (peak with onecycle)."),
    hidden_size: int | None = typer.Option(None, "--hidden-size", min=1),
    num_layers: int | None = typer.Option(None, "--num-layers", min=1),
    bidirectional: bool | None = typer.Option(None, "--bidirectional/--unidirectional"),
    dropout: float | None = typer.Option(None, "--dropout", min=0.0, max=0.99),
    schedule: Schedule | None = typer.Option(None, "--schedule"),
    clip_grad_norm: float | None = typer.Option(None, "--clip-grad-norm", min=0.0),
    label_smoothing: float | None = typer.Option(None, "--label-smoothing", min=0.0, max=0.99),
    weight_decay: float | None = typer.Option(None, "--weight-decay", min=0.0),
    augment: bool | None = typer.Option(None, "--augment/--no-augment"),
    seed: int | None = typer.Option(None, "--seed"),
    subset: int | None = typer.Option(
        None, "--subset", min=0, help="Train on the first N images only (quick runs)."
    ),
    test_subset: int | None = typer.Option(
        None, "--test-subset", min=0, help="Evaluate on the first N test images only."
    ),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch intra-op threads."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder with MNIST IDX files."),
    out: Path = typer.Option(Path("runs/latest"), "--out", "-o", help="Run folder to write."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics as JSON on stdout."),
) -> None:
    """Train the LSTM on MNIST; write OUT/model.pt (checkpoint) and OUT/metrics.json."""
    from lstm_export.fileio import new_output_dir

    if lr is not None and lr <= 0:
        raise typer.BadParameter("must be > 0", param_hint="--lr")
    config = PRESETS[preset].with_overrides(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        hidden_size=hidden_size,
        num_layers=num_layers,
        bidirectional=bidirectional,
        dropout=dropout,
        schedule=schedule,
        clip_grad_norm=clip_grad_norm,
        label_smoothing=label_smoothing,
        weight_decay=weight_decay,
        augment=augment,
        seed=seed,
        subset=subset,
        test_subset=test_subset,
    )
    with new_output_dir(out):  # fail before training, not after; no empty folder on failure
        from lstm_export.data.cli import require_mnist

        data_dir = require_mnist(data_dir)  # fetched or data errors before the progress bar starts

        import torch

        from lstm_export.train.loop import train as run_training
        from lstm_export.train.run_dir import save_run

        if threads:
            torch.set_num_threads(threads)
        progress = make_progress(
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[speed]:,.0f} img/s"),
        )
        state: dict[str, Any] = {"t0": time.perf_counter(), "seen": 0}

        with progress:
            task = progress.add_task("training", total=None, loss=float("nan"), speed=0.0)

            def on_step(epoch: int, step: int, steps: int, loss: float) -> None:
                if step == 0:
                    state["t0"], state["seen"] = time.perf_counter(), 0
                    progress.reset(
                        task, total=steps, description=f"epoch {epoch + 1}/{config.epochs}"
                    )
                state["seen"] += config.batch_size
                speed = state["seen"] / max(time.perf_counter() - state["t0"], 1e-9)
                progress.update(task, advance=1, loss=loss, speed=speed)

            def on_epoch(record: dict[str, Any]) -> None:
                progress.console.print(
                    f"epoch {record['epoch']}/{config.epochs}: train loss {record['train_loss']:.4f}"
                    f"  test accuracy {record['test_accuracy'] * 100:.2f} %"
                    f"  ({record['seconds']:.0f} s)"
                )

            result = run_training(config, data_dir, on_step=on_step, on_epoch=on_epoch)
        model_path = save_run(result, out)
    metrics = result.metrics
    if as_json:
        console.print_json(json.dumps({**metrics, "checkpoint": str(model_path)}))
        return
    err_console.print(
        f"[green]done[/] test accuracy {metrics['test_accuracy'] * 100:.2f} % "
        f"({metrics['test_examples']} images) in {metrics['train_seconds']:.0f} s"
    )
    console.print(f"checkpoint: {model_path}", highlight=False, soft_wrap=True)
