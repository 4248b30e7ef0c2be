"""``lstm-export bench``: every backend against eager PyTorch, parity and latency, in one run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lstm_export.bench.variants import VARIANTS, BenchDevice
from lstm_export.cli_options import (
    OUTPUT,
    TUNING,
    DataDirOption,
    JsonFlag,
    ThreadsOption,
    cap_threads,
)
from lstm_export.console import console, err_console, plain, print_json, progress_bar
from lstm_export.data.cli import require_mnist

_VARIANT_NAMES = ", ".join(variant.name for variant in VARIANTS)


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated integers (batch sizes), got {text!r}",
            param_hint="--batch-sizes",
        ) from None


def _tuning(flag: str, minimum: float, help: str, *aliases: str) -> Any:
    return typer.Option(flag, *aliases, help=help, min=minimum, rich_help_panel=TUNING)


def _output(flag: str, help: str, *aliases: str) -> Any:
    return typer.Option(flag, *aliases, help=help, rich_help_panel=OUTPUT)


def bench(
    target: Annotated[
        Path, typer.Argument(help="Run folder (with model.pt) or a checkpoint file.")
    ] = Path("runs/latest"),
    backends: Annotated[
        str | None,
        typer.Option(
            "--backends",
            "-b",
            help=f"Comma-separated, from: {_VARIANT_NAMES}. Default: all available on the device.",
        ),
    ] = None,
    device: Annotated[BenchDevice, typer.Option("--device")] = BenchDevice.cpu,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes")] = "1,8,64,256,1024",
    warmup: Annotated[int, _tuning("--warmup", 0, "Untimed calls per batch size.")] = 10,
    iterations: Annotated[
        int | None, _tuning("--iterations", 1, "Timed calls per batch size (not --seconds).", "-n")
    ] = None,
    seconds: Annotated[float, _tuning("--seconds", 0.01, "Time budget per batch size.")] = 1.0,
    rounds: Annotated[
        int, _tuning("--rounds", 1, "Rounds of every backend; medians reported.")
    ] = 3,
    max_rounds: Annotated[
        int | None, _tuning("--max-rounds", 1, "Rounds at most for unstable figures (rounds + 4).")
    ] = None,
    threads: ThreadsOption = None,
    parity_images: Annotated[
        int, typer.Option("--parity-images", min=0, help="Test images for parity (0: all 10k).")
    ] = 0,
    reexport: Annotated[
        bool, typer.Option("--reexport", help="Export again even if files are fresh.")
    ] = False,
    data_dir: DataDirOption = None,
    output: Annotated[Path | None, _output("--output", "Write results JSON here.", "-o")] = None,
    plot: Annotated[Path | None, _output("--plot", "Write a latency/throughput PNG here.")] = None,
    markdown: Annotated[bool, _output("--markdown", "Print markdown tables on stdout.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Measure parity (full test set) and latency of every backend against eager PyTorch."""
    from lstm_export.artifacts import Artifact
    from lstm_export.bench import report
    from lstm_export.bench.run import BenchSettings, plan_bench, run_bench
    from lstm_export.fileio import check_outputs_against_inputs, ensure_writable_dir, terminating

    settings = BenchSettings(
        device=device,
        backends=[b.strip() for b in backends.split(",") if b.strip()] if backends else None,
        batch_sizes=_batch_sizes(batch_sizes),
        warmup=warmup,
        iterations=iterations,
        seconds=None if iterations else seconds,
        rounds=rounds,
        max_rounds=max_rounds,
        threads=cap_threads(threads),
        parity_images=parity_images,
        reexport=reexport,
        data_dir=data_dir,
    )
    for path in (output, plot):
        if path is not None:
            ensure_writable_dir(path.parent)  # fail before measuring, not after
    plan = plan_bench(target, settings)
    check_outputs_against_inputs(
        [output, plot], [plan.checkpoint, *(a.beside(plan.checkpoint) for a in Artifact)]
    )
    plan.data_dir = require_mnist(settings.data_dir)
    with terminating(), progress_bar() as on_progress:  # SIGTERM: the measuring child goes too
        result = run_bench(plan, on_progress=on_progress, on_line=_say)
    if output is not None:
        report.write_json(result, output)
    if plot is not None:
        report.plot(result, plot)
    if as_json:
        print_json(result)
    elif markdown:
        console.print(plain(report.markdown(result)), highlight=False, soft_wrap=True)
    else:
        report.print_tables(result)
    for label, path in (("results", output), ("plot", plot)):
        if path is not None:
            err_console.print(f"{label}: {plain(path)}", highlight=False)


def _say(text: str) -> None:
    err_console.print(plain(text), highlight=False, soft_wrap=True)
