"""Bench output: tables on the terminal or in markdown, the JSON file and the plot."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lstm_export.bench.stats import DISTURBED_SPREAD, STABLE_SPREAD
from lstm_export.console import count
from lstm_export.fileio import atomic_path, write_text_atomic


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write the result dict (see README, "bench JSON schema") atomically."""
    write_text_atomic(path, json.dumps(result, indent=2) + "\n")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _ms(value: float) -> str:
    """Milliseconds with four significant figures at most: 0.113, 7.512, 65.64, 812.7."""
    return f"{value:.3f}" if value < 10 else f"{value:.2f}" if value < 100 else f"{value:.1f}"


def _notes(row: dict[str, Any]) -> list[str]:
    flags = {"noisy calls": row.get("disturbed"), "rounds disagree": row.get("stable") is False}
    return [note for note, flagged in flags.items() if flagged]


#: what a row's note means (shown under a table that has such a row)
LEGEND = {
    "noisy calls": f"noisy calls: the slowest tenth of the calls took over {DISTURBED_SPREAD}x "
    "the median (p90/p50): something else ran on the machine; the median is still reported",
    "rounds disagree": "rounds disagree: after the last round the rounds' figures still spread "
    f"over {STABLE_SPREAD * 100:.0f} % of their median (interquartile range); treat it as rough",
}
#: (terminal heading, markdown heading, cell) of each column
_Column = tuple[str, str, Callable[[dict[str, Any]], str]]
_LATENCY: list[_Column] = [
    ("backend", "backend", lambda r: r["backend"]),
    ("batch", "batch", lambda r: str(r["batch_size"])),
    ("p50 ms", "p50 ms", lambda r: _ms(r["p50_ms"])),
    ("p90/p50", "p90/p50", lambda r: f"{min(r['spread'], 99):.2f}"),
    ("img/s", "images/s", lambda r: f"{r['throughput']:,.0f}"),
    ("lat/eager", "latency vs eager", lambda r: _ratio(r["latency_ratio"])),
    ("speedup", "throughput vs eager", lambda r: _ratio(r["speedup"])),
    ("rounds", "rounds", lambda r: str(r["rounds"])),
    ("note", "note", lambda r: ", ".join(_notes(r))),
]
_PARITY: list[_Column] = [
    ("backend", "backend", lambda p: p["backend"]),
    ("prec", "precision", lambda p: p["precision"]),
    ("accuracy", "accuracy", lambda p: f"{p['accuracy'] * 100:.2f} %"),
    ("Δ eager", "Δ vs eager", lambda p: f"{p['accuracy_delta'] * 100:+.2f} pt"),
    ("agree", "agreement with eager", lambda p: f"{p['agreement'] * 100:.2f} %"),
    ("max |Δ|", "max abs diff", lambda p: f"{p['max_abs_diff']:.1e}"),
    ("mean |Δ|", "mean abs diff", lambda p: f"{p['mean_abs_diff']:.1e}"),
    ("note", "note", lambda p: "out of bounds" if p["flagged"] else ""),
]
#: columns of words (the others hold numbers, right-aligned)
_LEFT = {"backend", "prec", "note", "fastest", "ours", "peer", "ahead"}
_AHEAD = {True: "yes", False: "**no**"}
_BEST: list[_Column] = [
    ("batch", "batch", lambda b: str(b["batch_size"])),
    ("fastest", "fastest (latency vs eager)", lambda b: _named(b, "best")),
    ("ours", "best of our exports", lambda b: _named(b, "best_export")),
    ("peer", "best peer", lambda b: _named(b, "best_peer")),
    ("ahead", "ours at least as fast", lambda b: _AHEAD.get(b["export_ahead"], "-")),
]


def _named(best: dict[str, Any], key: str) -> str:
    speedup = best[f"{key}_speedup"]
    return "-" if best[key] is None else f"{best[key]} ({_ratio(1 / speedup if speedup else None)})"


def _where(result: dict[str, Any]) -> str:
    m = result["machine"]
    return str(m.get("gpu") or f"{m['cpu']}, {count(m['cores'], 'core')}")


def _after(result: dict[str, Any]) -> list[str]:
    """The lines under the tables: what the notes mean, parity problems, skipped backends."""
    shown = {note for r in result["latency"] for note in _notes(r)}
    lines = [text for note, text in LEGEND.items() if note in shown]
    lines += [f"{p['backend']}: {x}" for p in result["parity"] for x in p.get("problems", [])]
    return lines + [f"skipped {x['backend']}: {x['reason']}" for x in result.get("skipped", [])]


def markdown(result: dict[str, Any]) -> str:
    """Latency, parity and best-per-batch tables as GitHub markdown, with the machine named."""
    m, s = result["machine"], result["settings"]
    versions = f"torch {m['torch']}, onnxruntime {m['onnxruntime']}"
    versions += f", openvino {m['openvino']}" if m.get("openvino") else ""
    load = f"; load average {m['load_average']}" if m.get("load_average") else ""
    lines = [
        f"Machine: {_where(result)}; {versions}; device {s['device']}, {count(s['threads'], 'thread')}{load}.",
        "",
        "Every figure is a median: p50 of the calls of the median round; images/s = batch / p50;"
        " the ratios are p50 against eager's p50 at the same batch size.",
    ]
    tables = [(_LATENCY, result["latency"], 2), (_PARITY, result["parity"], 2)]
    tables += [(_BEST, result["best"], 1)] if result.get("best") else []
    for columns, rows, left in tables:
        lines += ["", "| " + " | ".join(c[1] for c in columns) + " |"]
        lines.append(
            "|" + "|".join("---" if i < left else "---:" for i in range(len(columns))) + "|"
        )
        lines += ["| " + " | ".join(c[2](row) for c in columns) + " |" for row in rows]
    after = _after(result)
    return "\n".join(lines + ([""] if after else []) + [f"- {x}" for x in after]) + "\n"


def print_tables(result: dict[str, Any]) -> None:
    """Rich tables on stdout: latency with ratios against eager (all from the median), parity,
    and what their notes mean."""
    from rich import box
    from rich.table import Table

    from lstm_export.console import console, plain, print_whole

    s = result["settings"]
    images = result["parity"][0]["images"] if result["parity"] else 0
    titles = (
        f"Latency on {_where(result)} ({s['device']}, {count(s['threads'], 'thread')}; medians)",
        f"Parity with eager PyTorch on {count(images, 'test image')}",
    )
    for title, columns, rows in zip(
        titles, (_LATENCY, _PARITY), (result["latency"], result["parity"]), strict=True
    ):
        table = Table(title=plain(title), title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
        for heading, *_ in columns:
            table.add_column(heading, justify="left" if heading in _LEFT else "right", no_wrap=True)
        for row in rows:
            style = "red" if row.get("flagged") else None
            table.add_row(*(plain(c[2](row)) for c in columns), style=style)
        print_whole(console, table)
    for line in _after(result):
        console.print(plain(line), highlight=False, soft_wrap=True)


#: line styles: eager a thick black line, our exports solid, peers dashed; markers tell apart
_MARKERS = "osD^vP*Xh<>p"
#: a red ring around a noisy figure
_RING = {"s": 150, "facecolors": "none", "edgecolors": "red", "linewidths": 1.2, "zorder": 3}
#: (figure, y label) of the two panels
_PANELS = (("p50_ms", "median latency (ms)"), ("throughput", "images/s (median)"))


def plot(result: dict[str, Any], path: Path) -> None:
    """Median latency against batch size (log-log) and median throughput, one line per backend,
    with one legend below both panels (readable with eight or more backends); PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["latency"]
    roles = {p["backend"]: p.get("role", "export") for p in result["parity"]}
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.2))
    cmap = plt.get_cmap("tab10")
    marked = False
    for i, name in enumerate(dict.fromkeys(r["backend"] for r in rows)):
        mine = sorted((r for r in rows if r["backend"] == name), key=lambda r: r["batch_size"])
        role = roles.get(name, "export")
        style: dict[str, Any] = {
            "marker": _MARKERS[i % len(_MARKERS)],
            "markersize": 6,
            "linewidth": 1.6,
            "color": cmap(i % 10),
            "linestyle": "--" if role == "peer" else "-",
            "label": name + (" (peer)" if role == "peer" else ""),
        }
        if role == "reference":
            style.update(color="black", linewidth=2.6, label=f"{name} (reference)")
        shaky = [r for r in mine if _notes(r)]
        label = "noisy calls or rounds disagree" if shaky and not marked else None
        for ax, (key, _) in zip(axes, _PANELS, strict=True):
            ax.plot([r["batch_size"] for r in mine], [r[key] for r in mine], **style)
            ax.scatter(
                [r["batch_size"] for r in shaky], [r[key] for r in shaky], **_RING, label=label
            )
        marked = marked or bool(shaky)
    sizes = sorted({r["batch_size"] for r in rows})
    for ax, (_, ylabel) in zip(axes, _PANELS, strict=True):
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel=ylabel)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.minorticks_off()
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    columns = min(4, max(1, len(labels)))
    fig.legend(handles, labels, loc="lower center", ncol=columns, frameon=False, handlelength=3)
    threads = count(result["settings"]["threads"], "thread")
    fig.suptitle(f"lstm-export bench on {_where(result)}, {threads} (medians; dashed: peers)")
    rows_of_legend = -(-len(labels) // 4)
    fig.tight_layout(rect=(0, 0.04 + 0.045 * rows_of_legend, 1, 1))
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
