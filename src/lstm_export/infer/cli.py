"""``lstm-export infer``: classify a folder of images with any backend, in this process or on Ray;
rows to CSV, JSON Lines or Parquet."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import TextColumn

from lstm_export import fileio
from lstm_export.cli_options import (
    OUTPUT,
    RAY,
    TUNING,
    Engine,
    ProgressFlag,
    ThreadsOption,
    TrustFlag,
)
from lstm_export.console import console, count, err_console, make_progress, plain
from lstm_export.devices import Device
from lstm_export.errors import ConfigError, InferenceError, InputError, OutputError
from lstm_export.infer import report
from lstm_export.infer.images import Invert
from lstm_export.infer.registry import Backend
from lstm_export.infer.writers import OutputFormat, open_rows, resolve_format

if TYPE_CHECKING:
    from lstm_export.infer.rows import Prediction, Run, Summary


def _flag(name: str, help: str, panel: str | None = None, **extra: Any) -> Any:
    """``typer.Option(name[, short], help=help)`` in the ``--help`` panel ``panel``."""
    names = [name, *([extra.pop("short")] if "short" in extra else [])]
    return typer.Option(*names, help=help, rich_help_panel=panel, **extra)


# fmt: off
ModelArg = Annotated[Path, typer.Argument(
    help="Model: .pt checkpoint (eager), .ts TorchScript, .onnx ONNX, .xml OpenVINO IR, or a run "
    "folder (its model.pt).", show_default=False)]
FolderArg = Annotated[Path, typer.Argument(
    help="Folder of images, one image file, or a quoted glob pattern.", show_default=False)]
OutputOpt = Annotated[Path | None, _flag(
    "--output", "Write the rows to this .csv, .jsonl or .parquet file (atomically). Default: CSV "
    "on stdout.", OUTPUT, short="-o")]
FormatOpt = Annotated[OutputFormat, _flag(
    "--format", "Row format; auto: from the -o suffix, CSV on stdout.", OUTPUT)]
BackendOpt = Annotated[Backend, _flag("--backend", "auto: from MODEL's suffix.")]
DeviceOpt = Annotated[Device, _flag(
    "--device", "auto: CUDA when it really loads, else CPU (and says which).")]
BatchOpt = Annotated[int | None, _flag(
    "--batch-size", "Images per inference call.", TUNING, min=1,
    show_default="64 on CPU, 512 on CUDA")]
WorkersOpt = Annotated[int | None, _flag(
    "--workers", "Decode workers: 0 inline, 1 a thread, N>=2 processes (in-process only).",
    TUNING, min=0, show_default="auto")]
StreamsOpt = Annotated[int | None, _flag(
    "--streams", "Batches inferred at once; the 2nd+ at low priority, on cores decoding leaves "
    "idle (in-process only).", TUNING, min=1, show_default="auto")]
RecursiveFlag = Annotated[bool, _flag("--recursive/--no-recursive", "Descend into subfolders.")]
FollowFlag = Annotated[bool, _flag(
    "--follow-links", "Follow symbolic links that lead out of FOLDER (without it such a file is "
    "an error row and such a folder is not entered).")]
InvertOpt = Annotated[Invert, _flag(
    "--invert", "Polarity. auto: a light border (dark digit on paper) is inverted.")]
FitFlag = Annotated[bool, _flag(
    "--fit", "Photo-like digits: crop to the digit, 20 px box, centre of mass centred (as MNIST).")]
ProbabilitiesFlag = Annotated[bool, _flag(
    "--probabilities", "Add one probability column per class.", OUTPUT)]
StrictFlag = Annotated[bool, _flag("--strict", "Exit 1 when any image (or folder) could not be read.")]
ConfusionOpt = Annotated[Path | None, _flag(
    "--confusion-png", "Labelled folders: also draw the confusion matrix here.", OUTPUT)]
SummaryOpt = Annotated[Path | None, _flag(
    "--summary-json", "Also write counts, accuracy and timing as JSON here.", OUTPUT)]
EngineOpt = Annotated[Engine, _flag(
    "--engine", "ray: Ray Data actors, on this machine or a cluster (needs the ray extra: pip "
    "install 'lstm-export\\[ray]').", RAY)]
AddressOpt = Annotated[str | None, _flag(
    "--address", "Join this Ray cluster and leave it running. Default $RAY_ADDRESS, else a local "
    "Ray for the run.", RAY, show_default=False)]
ActorsOpt = Annotated[int | None, _flag(
    "--actors", "Inference actors.", RAY, min=1, show_default="one per free CPU")]
OutputDirOpt = Annotated[Path | None, _flag(
    "--output-dir", "The cluster writes the rows as Parquet files here (runs too big to gather "
    "with -o).", RAY)]
# fmt: on


def infer(
    model: ModelArg,
    folder: FolderArg,
    output: OutputOpt = None,
    fmt: FormatOpt = OutputFormat.auto,
    backend: BackendOpt = Backend.auto,
    device: DeviceOpt = Device.auto,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    threads: ThreadsOption = None,
    streams: StreamsOpt = None,
    recursive: RecursiveFlag = True,
    follow_links: FollowFlag = False,
    invert: InvertOpt = Invert.auto,
    fit: FitFlag = False,
    probabilities: ProbabilitiesFlag = False,
    strict: StrictFlag = False,
    confusion_png: ConfusionOpt = None,
    summary_json: SummaryOpt = None,
    progress: ProgressFlag = True,
    engine: EngineOpt = Engine.in_process,
    address: AddressOpt = None,
    actors: ActorsOpt = None,
    output_dir: OutputDirOpt = None,
    trust_model: TrustFlag = False,
) -> None:
    r"""Classify every image under FOLDER with MODEL.

    Rows: path (relative to FOLDER), \[label,] prediction, confidence, error. Every file with an image extension gets exactly one row; unreadable ones get an error and the run goes on. Other files are counted as skipped; hidden ones are left out. Symbolic links leading out of FOLDER are not followed unless asked.

    On an ImageFolder layout (first-level folders named after the classes) accuracy and a confusion matrix are printed.

    The summary goes to stdout with -o, to stderr when the rows go to stdout. Exit code 1 when no image could be classified, or with --strict on any error.
    """
    ray_only = {"--address": address, "--actors": actors, "--output-dir": output_dir}
    in_process_only = {"--workers": workers, "--streams": streams}
    wrong, other = (in_process_only, "in-process") if engine == Engine.ray else (ray_only, "ray")
    if given := [flag for flag, value in wrong.items() if value is not None]:
        raise ConfigError(f"{', '.join(given)} only work with --engine {other}")
    if output is not None and output_dir is not None:
        raise ConfigError(
            "-o gathers every row here, --output-dir has the cluster write them: choose one"
        )
    try:  # output names of an unknown format fail before any work
        parquet = resolve_format(output, fmt) == OutputFormat.parquet
    except OutputError as exc:
        raise OutputError(f"{exc} (--format)") from exc
    if parquet and output is None:
        raise OutputError("Parquet rows need a file: give -o NAME.parquet")
    if confusion_png is not None and confusion_png.suffix.lower() != ".png":
        raise OutputError(f"--confusion-png {confusion_png} must end in .png")
    if model.is_dir():
        from lstm_export.checkpoint import resolve_checkpoint

        model = resolve_checkpoint(model)
    settings: dict[str, Any] = {
        "backend": backend.value, "device": device, "batch_size": batch_size, "threads": threads,
        "recursive": recursive, "follow_links": follow_links, "invert": invert, "fit": fit,
        "probabilities": probabilities, "trusted": trust_model,
    }  # fmt: skip
    run: Run
    if engine == Engine.ray:
        from lstm_export.infer.ray_engine import RayRun

        run = RayRun(model, folder, address=address, actors=actors, output_dir=output_dir,
                     progress=progress, **settings)  # fmt: skip
    else:
        from lstm_export.infer.classify import FolderRun

        run = FolderRun(model, folder, workers=workers, streams=streams, **settings)
    run.walk.require_images()
    outputs, stdout = [output, summary_json, confusion_png], sys.stdout  # the rows' stream

    def work() -> None:
        fileio.check_outputs_against_inputs(outputs, [model, *run.walk.paths])
        quiet = _quiet_ray() if engine == Engine.ray else contextlib.nullcontext()
        with quiet, contextlib.ExitStack() as stack:
            with err_console.status(f"loading {plain(model)}"):
                stack.enter_context(run)
            bar = progress and engine != Engine.ray  # Ray Data reports its own
            summary, errors = _classify(run, output, fmt, stdout, bar)
        _finish(summary, errors, output, output_dir, summary_json, confusion_png, strict)

    with _made_folders_removed_on_failure([*outputs, output_dir]):
        _in_a_child(work) if engine == Engine.ray else work()


@contextlib.contextmanager
def _made_folders_removed_on_failure(paths: list[Path | None]) -> Iterator[None]:
    """A failed run leaves nothing behind: the (empty) folders made for ``paths`` are removed."""
    missing: set[Path] = set()
    for path in filter(None, paths):
        missing.update(p for p in Path(os.path.abspath(path)).parents if not p.exists())
    try:
        yield
    except BaseException:
        for folder in sorted(missing, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only while empty
        raise


def _in_a_child(work: Callable[[], None]) -> None:
    """``work()`` in a forked child, whose errors are raised here: Ray ends a driver whose raylet
    died on the spot, so the parent says so in one line. Ctrl-C, SIGTERM, SIGHUP are passed on."""
    read, write = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        code = 1
        try:
            work()
            code = 0
        except BaseException as exc:
            with contextlib.suppress(Exception):
                os.write(write, pickle.dumps(exc))
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)
    os.close(write)
    try:
        with fileio.terminating(), os.fdopen(read, "rb") as pipe:
            sent = pipe.read()  # until the child ends
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM or SIGHUP (Terminated)
        terminated = fileio.terminated_by() if isinstance(stop, fileio.Terminated) else None
        if terminated or os.getpgid(pid) != os.getpgrp():  # Ray moved it out of our group
            os.kill(pid, terminated or signal.SIGINT)
        os.waitpid(pid, 0)
        raise
    status = os.waitpid(pid, 0)[1]
    if sent:
        try:
            error = pickle.loads(sent)
        except Exception:
            error = InferenceError("the Ray run failed with an error that could not be read back")
        raise error
    if status:
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {status >> 8}"
        raise InferenceError(
            f"the Ray run ended abruptly ({how}): Ray stops a driver whose raylet died (Ray's "
            "logs say why)"
        )


@contextlib.contextmanager
def _quiet_ray() -> Iterator[None]:
    """Ray's own output goes to the log's stream only with ``-v``: what it prints on stdout (a
    raylet's state dump) and what its C++ core writes straight to the stderr descriptor."""
    if logging.getLogger().isEnabledFor(logging.INFO):
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    saved, encoding = os.dup(2), sys.stderr.encoding
    # Python's stderr (rich, logging, progress) stays the terminal
    terminal = os.fdopen(
        os.dup(saved), "w", encoding=encoding, errors="backslashreplace", buffering=1
    )
    with (
        open(os.devnull, "w") as devnull,
        terminal,
        contextlib.redirect_stderr(terminal),
        contextlib.redirect_stdout(devnull),
    ):
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _classify(
    run: Run, output: Path | None, fmt: OutputFormat, stdout: IO[str], show_bar: bool
) -> tuple[Summary, list[Prediction]]:
    """Write the rows as they come, with a progress bar; the summary and the first errors."""
    report.print_start(run, err_console)
    errors: list[Prediction] = []
    bar = make_progress(TextColumn("{task.fields[speed]:>8,.0f} img/s"))
    bar.disable = not show_bar
    names = run.class_names if run.probabilities else None
    writes = run.output_dir is None  # else the run writes its rows itself
    rows_out = open_rows(output, fmt, labelled=run.labelled, class_names=names, stream=stdout)
    summary = run.summary
    assert summary is not None
    with rows_out if writes else contextlib.nullcontext() as writer, bar:
        task = bar.add_task("classifying", total=len(run.walk.paths), speed=0.0)
        for rows in run.batches():
            if writer is not None:
                writer.write(rows)
            errors += [r for r in rows if r.error is not None][: report.SHOWN_ERRORS - len(errors)]
            done = bar.tasks[task].completed + len(rows)
            bar.update(task, completed=done, speed=done / max(summary.seconds, 1e-9))
    return summary, errors


def _finish(
    summary: Summary,
    errors: list[Prediction],
    output: Path | None,
    output_dir: Path | None,
    summary_json: Path | None,
    confusion_png: Path | None,
    strict: bool,
) -> None:
    """The summary, the files beside the rows, and the exit status."""
    out = console if output is not None or output_dir is not None else err_console
    say: dict[str, Any] = {"highlight": False, "soft_wrap": True}
    report.print_summary(summary, errors, out, err_console)
    rows = output if output_dir is None else f"{output_dir}/part-*.parquet"
    if rows is not None:
        console.print(f"predictions: {plain(rows)}", **say)
    if summary_json is not None:
        text = json.dumps(summary.to_dict(), indent=2, allow_nan=False)
        fileio.write_text_atomic(summary_json, text + "\n")
        out.print(f"summary: {plain(summary_json)}", **say)
    c = summary.confusion
    if confusion_png is not None and c is not None and len(c.class_names) <= report.PNG_CLASSES:
        title = f"{Path(summary.folder).name} · {Path(summary.model).name}"
        report.save_confusion_png(c, confusion_png, title=title)
        out.print(f"confusion matrix: {plain(confusion_png)}", **say)
    elif confusion_png is not None:
        many = f"{len(c.class_names):,} classes are too many to draw" if c is not None else ""
        why = many or f"the folder is {summary.labels}"
        err_console.print(f"[yellow]warning:[/] no confusion matrix drawn: {plain(why)}", **say)
    if summary.classified == 0:
        raise InputError(
            f"none of the {count(summary.images, 'image file')} could be classified (see the "
            "error column)"
        )
    if strict and (summary.errors or summary.unreadable_folders):
        what = f"{summary.errors:,} of {count(summary.images, 'image')} could not be classified"
        if summary.unreadable_folders:
            what += f" and {count(len(summary.unreadable_folders), 'folder')} could not be read"
        raise InputError(f"--strict: {what}")
