"""``lstm-export train``: train a preset (optionally overridden flag by flag) into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lstm_export.cli_options import (
    TUNING,
    DataDirOption,
    JsonFlag,
    ThreadsOption,
    cap_threads,
    positive_finite,
)
from lstm_export.config import LIMITS
from lstm_export.console import console, count, err_console, make_progress, plain, print_json
from lstm_export.train.presets import PRESETS, Preset, Schedule

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from lstm_export.train.loop import EpochCallback, StepCallback


def _tuning(*flags: str, help: str | None = None, **bounds: Any) -> Any:
    return typer.Option(*flags, help=help, rich_help_panel=TUNING, **bounds)


def train(
    preset: Annotated[
        Preset,
        typer.Option("--preset", help="seed: Adam 0.01, batch 100, 2 epochs. best: >= 99 %."),
    ] = Preset.seed,
    epochs: Annotated[int | None, _tuning("--epochs", min=1, max=1000)] = None,
    batch_size: Annotated[int | None, _tuning("--batch-size", min=1, max=60_000)] = None,
    lr: Annotated[
        float | None,
        _tuning("--lr", help="Learning rate (peak with onecycle).", callback=positive_finite),
    ] = None,
    hidden_size: Annotated[
        int | None, _tuning("--hidden-size", min=1, max=LIMITS["hidden_size"])
    ] = None,
    num_layers: Annotated[
        int | None, _tuning("--num-layers", min=1, max=LIMITS["num_layers"])
    ] = None,
    bidirectional: Annotated[bool | None, _tuning("--bidirectional/--unidirectional")] = None,
    dropout: Annotated[float | None, _tuning("--dropout", min=0.0, max=0.99)] = None,
    schedule: Annotated[Schedule | None, _tuning("--schedule")] = None,
    clip_grad_norm: Annotated[float | None, _tuning("--clip-grad-norm", min=0.0)] = None,
    label_smoothing: Annotated[
        float | None, _tuning("--label-smoothing", min=0.0, max=0.99)
    ] = None,
    weight_decay: Annotated[float | None, _tuning("--weight-decay", min=0.0)] = None,
    augment: Annotated[bool | None, _tuning("--augment/--no-augment")] = None,
    seed: Annotated[int | None, _tuning("--seed", min=0, max=2**32 - 1)] = None,
    subset: Annotated[
        int | None, typer.Option("--subset", min=0, help="Train on the first N images only.")
    ] = None,
    test_subset: Annotated[
        int | None,
        typer.Option("--test-subset", min=0, help="Evaluate on the first N test images only."),
    ] = None,
    threads: ThreadsOption = None,
    data_dir: DataDirOption = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")] = Path(
        "runs/latest"
    ),
    as_json: JsonFlag = False,
) -> None:
    """Train the LSTM on MNIST; write OUT/model.pt (checkpoint) and OUT/metrics.json."""
    from lstm_export.data.cli import require_mnist
    from lstm_export.fileio import terminating
    from lstm_export.train.run_dir import run_folder

    config = PRESETS[preset].with_overrides(
        epochs=epochs, batch_size=batch_size, lr=lr, hidden_size=hidden_size,
        num_layers=num_layers, bidirectional=bidirectional, dropout=dropout, schedule=schedule,
        clip_grad_norm=clip_grad_norm, label_smoothing=label_smoothing,
        weight_decay=weight_decay, augment=augment, seed=seed, subset=subset,
        test_subset=test_subset,
    )  # fmt: skip
    threads = cap_threads(threads)
    # SIGTERM ends the run like Ctrl-C; either way the folder is removed if this run made it
    with terminating(), run_folder(out):  # fail before training, not after
        data_dir = require_mnist(data_dir)  # fetched or data errors before the progress bar starts

        import torch

        from lstm_export.train.loop import train as run_training
        from lstm_export.train.run_dir import save_run

        if threads:
            torch.set_num_threads(threads)
        with make_progress() as progress:
            task = progress.add_task("training", total=None)
            on_step, on_epoch = follow_training(progress, task, config.epochs)
            result = run_training(config, data_dir, on_step=on_step, on_epoch=on_epoch)
        model_path = save_run(result, out)
    metrics = result.metrics
    if as_json:
        print_json({**metrics, "checkpoint": str(model_path)})
        return
    err_console.print(
        f"[green]done[/] test accuracy {metrics['test_accuracy'] * 100:.2f} % "
        f"({count(metrics['test_examples'], 'test image')}) in {metrics['train_seconds']:.0f} s"
    )
    console.print(f"checkpoint: {plain(model_path)}", highlight=False, soft_wrap=True)


def follow_training(
    progress: Progress, task: TaskID, epochs: int
) -> tuple[StepCallback, EpochCallback]:
    """Training callbacks that drive ``task``: one bar over every batch of every epoch (so the
    time left is the run's), the epoch, batch and loss in its text, and a line per epoch."""

    def on_step(epoch: int, step: int, steps: int, loss: float) -> None:
        progress.update(
            task,
            total=epochs * steps,
            completed=epoch * steps + step + 1,
            description=f"epoch {epoch + 1}/{epochs}, batch {step + 1}/{steps}, loss {loss:.4f}",
        )

    def on_epoch(record: dict[str, Any]) -> None:
        progress.console.print(
            f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}"
            f"  test accuracy {record['test_accuracy'] * 100:.2f} %  ({record['seconds']:.0f} s)",
            highlight=False,
        )

    return on_step, on_epoch
