"""``lstm-export bench``: every backend against eager PyTorch, parity and latency, in one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from lstm_export.bench.variants import VARIANTS, BenchDevice
from lstm_export.console import console, err_console, make_progress, print_whole
from lstm_export.data.cli import require_mnist

_VARIANT_NAMES = ", ".join(variant.name for variant in VARIANTS)


def _parse_ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated integers, got {text!r}", param_hint=flag
        ) from None
    if not values or min(values) < 1:
        raise typer.BadParameter(
            f"batch sizes must be integers >= 1, got {text!r}", param_hint=flag
        )
    return values


def bench(
    target: Path = typer.Argument(
        Path("runs/latest"), help="Run folder (with model.pt) or a checkpoint file."
    ),
    backends: str | None = typer.Option(
        None,
        "--backends",
        "-b",
        help=f"Comma-separated, from: {_VARIANT_NAMES}. Default: all available on the device.",
    ),
    device: BenchDevice = typer.Option(BenchDevice.cpu, "--device"),
    batch_sizes: str = typer.Option("1,8,64,256,1024", "--batch-sizes"),
    warmup: int = typer.Option(10, "--warmup", min=0, help="Untimed calls per batch size."),
    iterations: int | None = typer.Option(
        None, "--iterations", "-n", min=1, help="Timed calls per batch size (instead of --seconds)."
    ),
    seconds: float = typer.Option(1.0, "--seconds", min=0.01, help="Time budget per batch size."),
    rounds: int = typer.Option(
        3, "--rounds", min=1, help="Measure the backends in turn N times; report the median round."
    ),
    max_rounds: int | None = typer.Option(
        None,
        "--max-rounds",
        min=1,
        help="Measure unstable figures again, up to this many rounds (default: rounds + 4).",
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        help="Threads for each backend (torch, ONNX Runtime, OpenVINO; default: cores).",
    ),
    parity_images: int = typer.Option(
        0, "--parity-images", min=0, help="Test images for parity (0: all 10k)."
    ),
    reexport: bool = typer.Option(
        False, "--reexport", help="Export again even if files are fresh."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder with MNIST IDX files."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write results JSON here."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a latency/throughput PNG here."),
    markdown: bool = typer.Option(False, "--markdown", help="Print markdown tables on stdout."),
    as_json: bool = typer.Option(False, "--json", help="Print the results JSON on stdout."),
) -> None:
    """Measure parity (full test set) and latency of every backend against eager PyTorch."""
    from lstm_export.artifacts import Artifact
    from lstm_export.bench.report import markdown as to_markdown
    from lstm_export.bench.report import plot as write_plot
    from lstm_export.bench.report import write_json
    from lstm_export.bench.run import BenchSettings, plan_bench, run_bench
    from lstm_export.fileio import check_outputs_against_inputs, ensure_writable_dir

    settings = BenchSettings(
        device=device,
        backends=[b.strip() for b in backends.split(",") if b.strip()] if backends else None,
        batch_sizes=_parse_ints(batch_sizes, "--batch-sizes"),
        warmup=warmup,
        iterations=iterations,
        seconds=None if iterations else seconds,
        rounds=rounds,
        max_rounds=max_rounds,
        threads=threads,
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

    progress = make_progress()
    with progress:
        task = progress.add_task("bench", total=None)

        def on_progress(description: str, done: int, total: int) -> None:
            progress.update(task, description=description, completed=done, total=total or None)

        def on_line(text: str) -> None:
            progress.console.print(text, highlight=False, markup=False, soft_wrap=True)

        result = run_bench(plan, on_progress=on_progress, on_line=on_line).to_dict()

    if output is not None:
        write_json(result, output)
    if plot is not None:
        write_plot(result, plot)
    if as_json:
        console.print_json(json.dumps(result))
    elif markdown:
        console.print(to_markdown(result), markup=False, highlight=False, soft_wrap=True)
    else:
        print_tables(result)
    for label, path in (("results", output), ("plot", plot)):
        if path is not None:
            err_console.print(f"{label}: {path}", highlight=False)


def print_tables(result: dict[str, Any]) -> None:
    """Rich tables: latency with ratios against eager (all from the median), then parity."""
    from rich import box
    from rich.table import Table

    m = result["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cores']} cores"
    s = result["settings"]
    latency = Table(
        title=f"Latency on {where} ({s['device']}, {s['threads']} threads; medians)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    latency.add_column("backend", no_wrap=True)
    for col in ("batch", "p50 ms", "p90/p50", "img/s", "lat/eager", "speedup"):
        latency.add_column(col, justify="right", no_wrap=True)
    flagged = False
    for r in result["latency"]:
        ratio, speedup = r["latency_ratio"], r["speedup"]
        shown = f"{speedup:.2f}x" if speedup is not None else "-"
        if speedup is not None and abs(speedup - 1) > 0.05:
            shown = f"[{'green' if speedup > 1 else 'red'}]{shown}[/]"
        spread = f"{min(r['spread'], 99):.2f}"
        if r["disturbed"]:
            spread, flagged = f"[yellow]{spread}⚠[/]", True
        if r.get("stable") is False:
            shown, flagged = f"{shown}[yellow]*[/]", True
        latency.add_row(
            r["backend"],
            str(r["batch_size"]),
            _ms(r["p50_ms"]),
            spread,
            f"{r['throughput']:,.0f}",
            f"{ratio:.2f}x" if ratio is not None else "-",
            shown,
        )
    if flagged:
        latency.caption = (
            "⚠ p90/p50 above the disturbed threshold; * its rounds still disagreed (unstable)"
        )
        latency.caption_justify = "left"
    images = result["parity"][0]["images"] if result["parity"] else 0
    parity = Table(
        title=f"Parity with eager PyTorch on {images} test images",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    parity.add_column("backend", no_wrap=True)
    parity.add_column("prec", no_wrap=True)
    for col in ("accuracy", "Δ eager", "agree", "max |Δ|", "mean |Δ|"):
        parity.add_column(col, justify="right", no_wrap=True)
    for p in result["parity"]:
        agreement = f"{p['agreement'] * 100:.2f} %"
        delta = f"{p['accuracy_delta'] * 100:+.2f} pt"
        if p["flagged"]:
            agreement, delta = f"[bold red]{agreement}[/]", f"[bold red]{delta}[/]"
        parity.add_row(
            p["backend"],
            p["precision"],
            f"{p['accuracy'] * 100:.2f} %",
            delta,
            agreement,
            f"{p['max_abs_diff']:.1e}",
            f"{p['mean_abs_diff']:.1e}",
        )
    print_whole(console, latency)
    print_whole(console, parity)
    for p in result["parity"]:
        for problem in p.get("problems", []):
            console.print(f"⚠ {p['backend']}: {problem}", highlight=False, soft_wrap=True)
    for skipped in result.get("skipped", []):
        console.print(
            f"skipped {skipped['backend']}: {skipped['reason']}", highlight=False, soft_wrap=True
        )


def _ms(value: float) -> str:
    """Milliseconds with four significant figures at most: 0.113, 7.512, 65.64, 812.7."""
    return f"{value:.3f}" if value < 10 else f"{value:.2f}" if value < 100 else f"{value:.1f}"
