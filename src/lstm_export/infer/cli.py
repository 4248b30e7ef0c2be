"""``lstm-export infer``: classify a folder of images with any backend, rows to CSV or JSON Lines."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.progress import TextColumn

from lstm_export.console import console, err_console, make_progress, print_whole
from lstm_export.devices import Device
from lstm_export.infer.images import Invert
from lstm_export.infer.ray_cli import Engine
from lstm_export.infer.registry import Backend
from lstm_export.infer.writers import OutputFormat, printable_text

if TYPE_CHECKING:
    from rich.console import Console

    from lstm_export.infer.classify import Prediction, Summary

#: error rows listed on the terminal (all of them are in the output)
SHOWN_ERRORS = 10


def infer(
    model: Path = typer.Argument(
        ...,
        help="Model: .pt checkpoint (eager), .ts TorchScript or .onnx ONNX.",
        show_default=False,
    ),
    folder: Path = typer.Argument(
        ..., help="Folder of images (or one image file).", show_default=False
    ),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Write the rows to this .csv or .jsonl file (atomically). Default: CSV on stdout.",
    ),
    fmt: OutputFormat = typer.Option(
        OutputFormat.auto, "--format", help="Row format; auto: from the -o suffix, CSV on stdout."
    ),
    backend: Backend = typer.Option(
        Backend.auto, "--backend", help="auto: from MODEL's suffix (.pt, .ts, .onnx)."
    ),
    device: Device = typer.Option(
        Device.auto, "--device", help="auto: CUDA when it really loads, else CPU (and says which)."
    ),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Images per inference call.",
        show_default="64 on CPU, 512 on CUDA",
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=0,
        help="Decode workers: 0 inline, 1 a thread, N>=2 processes.",
        show_default="auto",
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        help="Inference threads of the model (the cores decoding leaves free).",
        show_default="auto",
    ),
    streams: int | None = typer.Option(
        None,
        "--streams",
        min=1,
        help="Batches inferred at once; the 2nd+ at low priority, on cores decoding leaves idle.",
        show_default="auto",
    ),
    recursive: bool = typer.Option(
        True, "--recursive/--no-recursive", help="Descend into subfolders."
    ),
    invert: Invert = typer.Option(
        Invert.auto,
        "--invert",
        help="Polarity. auto: a light border (dark digit on paper) is inverted.",
    ),
    fit: bool = typer.Option(
        False,
        "--fit",
        help="Photo-like digits: crop to the digit, 20 px box, centre of mass centred (as MNIST).",
    ),
    probabilities: bool = typer.Option(
        False, "--probabilities", help="Add one probability column per class."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Exit 1 when any image (or folder) could not be read."
    ),
    confusion_png: Path | None = typer.Option(
        None, "--confusion-png", help="Labelled folders: also draw the confusion matrix here."
    ),
    summary_json: Path | None = typer.Option(
        None, "--summary-json", help="Also write counts, accuracy and timing as JSON here."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
    engine: Engine = typer.Option(
        Engine.in_process,
        "--engine",
        help="ray: on Ray Data actors, on this machine or a cluster (pip install 'lstm-export\\[ray]').",
    ),
    address: str | None = typer.Option(
        None,
        "--address",
        help="--engine ray: join this Ray cluster and leave it running. Default $RAY_ADDRESS, else a local Ray for the run.",
        show_default=False,
    ),
    actors: int | None = typer.Option(
        None,
        "--actors",
        min=1,
        help="--engine ray: inference actors.",
        show_default="one per free CPU",
    ),
    output_dir: Path | None = typer.Option(
        None,
        "--output-dir",
        help="--engine ray: the workers write the rows as Parquet shards here (runs too big to gather with -o).",
    ),
) -> None:
    r"""Classify every image under FOLDER with MODEL.

    Rows: path (relative to FOLDER), \[label,] prediction, confidence, error. Every file with an image extension gets exactly one row; unreadable ones get an error and the run goes on. Other files are counted as skipped; hidden ones are left out.

    On an ImageFolder layout (first-level folders named 0..9) accuracy and a confusion matrix are printed.

    The summary goes to stdout with -o, to stderr when the rows go to stdout. Exit code 1 when no image could be classified, or with --strict on any error.
    """
    from lstm_export.errors import InputError, OutputError
    from lstm_export.fileio import check_outputs_against_inputs
    from lstm_export.infer.ray_cli import folder_run, resolve_output_format, rows_opener
    from lstm_export.infer.writers import open_rows

    try:  # a bad -o suffix fails before any work
        resolve_output_format(engine, output, fmt)
    except OutputError as exc:
        raise OutputError(f"{exc} (--format)") from exc
    if confusion_png is not None and confusion_png.suffix.lower() != ".png":
        raise OutputError(f"--confusion-png {confusion_png} must end in .png")
    run = folder_run(
        engine,
        model,
        folder,
        backend=backend.value,
        device=device,
        batch_size=batch_size,
        workers=workers,
        threads=threads,
        streams=streams,
        recursive=recursive,
        invert=invert,
        fit=fit,
        probabilities=probabilities,
        address=address,
        actors=actors,
        output=output,
        output_dir=output_dir,
        progress=progress,
    ).require_images()
    open_rows = rows_opener(run, open_rows)  # Ray: also .parquet; --output-dir: workers write
    check_outputs_against_inputs([output, summary_json, confusion_png], [model, *run.walk.paths])
    with err_console.status(f"loading {escape(str(model))}"):
        run.load()
    report = console if output is not None else err_console  # stdout is free with -o
    errors: list[Prediction] = []
    with run:
        runner, walk = run.runner, run.walk
        note = f" ({runner.device_note})" if runner.device_note else ""
        _say(
            f"model    {escape(str(model))}: {runner.description} on {runner.device}{escape(note)}"
        )
        _say(
            f"folder   {escape(str(folder))}: {len(walk.paths):,} images, {walk.skipped:,} other "
            f"files skipped, {walk.hidden:,} hidden; {escape(run.summary.labels if run.summary else '')}"
        )
        _say(f"plan     {run.plan.describe()}")
        bar = make_progress(TextColumn("{task.fields[speed]:>8,.0f} img/s"))
        bar.disable = not progress or engine == Engine.ray  # Ray Data reports its own
        started = time.perf_counter()
        with (
            open_rows(
                output,
                fmt,
                labelled=run.labelled,
                class_names=run.class_names if probabilities else None,
                stream=sys.stdout,
            ) as writer,
            bar,
        ):
            task = bar.add_task("classifying", total=len(walk.paths), speed=0.0)
            for rows in run.batches():
                writer.write(rows)
                errors.extend(r for r in rows if r.error is not None)
                speed = (bar.tasks[task].completed + len(rows)) / max(
                    time.perf_counter() - started, 1e-9
                )
                bar.update(task, advance=len(rows), speed=speed)
    summary = run.summary
    assert summary is not None
    _print_summary(summary, errors, report)
    if output is not None:
        console.print(f"predictions: {escape(str(output))}", highlight=False, soft_wrap=True)
    if output_dir is not None:
        console.print(f"predictions: {escape(str(output_dir))}/part-*.parquet", highlight=False)
    if summary_json is not None:
        import json

        from lstm_export.fileio import write_text_atomic

        write_text_atomic(summary_json, json.dumps(summary.to_dict(), indent=2) + "\n")
        report.print(f"summary: {escape(str(summary_json))}", highlight=False, soft_wrap=True)
    if confusion_png is not None:
        if summary.confusion is None:
            err_console.print(
                f"[yellow]warning:[/] no confusion matrix drawn: the folder is {escape(summary.labels)}",
                highlight=False,
                soft_wrap=True,
            )
        else:
            from lstm_export.infer.report import save_confusion_png

            save_confusion_png(
                summary.confusion, confusion_png, title=f"{folder.name} · {model.name}"
            )
            report.print(
                f"confusion matrix: {escape(str(confusion_png))}", highlight=False, soft_wrap=True
            )
    if summary.classified == 0:
        raise InputError(
            f"none of the {summary.images:,} image files could be classified (see the error column)"
        )
    if strict and (summary.errors or summary.unreadable_folders):
        what = f"{summary.errors:,} of {summary.images:,} images could not be classified"
        if summary.unreadable_folders:
            what += f" and {len(summary.unreadable_folders)} folders could not be read"
        raise InputError(f"--strict: {what}")


def _say(text: str) -> None:
    err_console.print(text, highlight=False, soft_wrap=True)


def _print_summary(summary: Summary, errors: list[Prediction], report: Console) -> None:
    """Counts, speed, errors (first few), and accuracy with the confusion matrix when labelled."""
    from lstm_export.infer.report import confusion_table

    report.print(
        f"classified {summary.classified:,} of {summary.images:,} images in "
        f"{summary.seconds:.2f} s ({summary.images_per_second:,.0f} images/s); "
        f"{summary.errors:,} errors, {summary.skipped:,} other files skipped",
        highlight=False,
        soft_wrap=True,
    )
    for row in errors[:SHOWN_ERRORS]:
        err_console.print(
            f"  [red]error[/] {escape(printable_text(row.path))}: {escape(row.error or '')}",
            highlight=False,
            soft_wrap=True,
        )
    if len(errors) > SHOWN_ERRORS:
        err_console.print(f"  ... and {len(errors) - SHOWN_ERRORS:,} more (see the error column)")
    for problem in summary.unreadable_folders:
        err_console.print(
            f"  [red]unreadable folder[/] {escape(problem)}", highlight=False, soft_wrap=True
        )
    if summary.confusion is not None and summary.accuracy is not None:
        c = summary.confusion
        report.print(
            f"accuracy {summary.accuracy * 100:.2f} % ({c.correct:,} of {c.total:,} labelled "
            f"images{'; errors not counted' if summary.errors else ''})",
            highlight=False,
            soft_wrap=True,
        )
        print_whole(report, confusion_table(c))
