"""Bench output: the JSON file, a markdown summary and the latency/throughput plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lstm_export.bench.stats import DISTURBED_SPREAD, STABLE_SPREAD
from lstm_export.fileio import atomic_path, write_text_atomic


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write the result dict (see README, "bench JSON schema") atomically."""
    write_text_atomic(path, json.dumps(result, indent=2) + "\n")


def _fmt_ratio(value: float | None, suffix: str = "x") -> str:
    return "-" if value is None else f"{value:.2f}{suffix}"


def markdown(result: dict[str, Any]) -> str:
    """Latency, parity and best-per-batch tables as GitHub markdown, with the machine named."""
    m = result["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cores']} cores"
    s = result["settings"]
    versions = f"torch {m['torch']}, onnxruntime {m['onnxruntime']}"
    if m.get("openvino"):
        versions += f", openvino {m['openvino']}"
    lines = [
        f"Machine: {where}; {versions}; device {s['device']}, {s['threads']} threads"
        + (f"; load average {m['load_average']}" if m.get("load_average") else "")
        + ".",
        "",
        "Every figure is a median: p50 of the calls of the median round; images/s = batch / p50;"
        " the ratios are p50 against eager's p50 at the same batch size. ⚠: p90/p50 above "
        f"{DISTURBED_SPREAD} (the machine was disturbed); *unstable*: the rounds' interquartile "
        f"range was still above {STABLE_SPREAD * 100:.0f} % of their median after the last round.",
        "",
        "| backend | batch | p50 ms | p90/p50 | images/s | latency vs eager | "
        "throughput vs eager | rounds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["latency"]:
        spread = f"{r['spread']:.2f}" + (" ⚠" if r["disturbed"] else "")
        rounds = str(r["rounds"]) + (" *unstable*" if r.get("stable") is False else "")
        lines.append(
            f"| {r['backend']} | {r['batch_size']} | {r['p50_ms']:.3f} | {spread} | "
            f"{r['throughput']:,.0f} | {_fmt_ratio(r['latency_ratio'])} | "
            f"{_fmt_ratio(r['speedup'])} | {rounds} |"
        )
    lines += [
        "",
        "| backend | precision | accuracy | Δ vs eager | agreement with eager | max abs diff | "
        "mean abs diff |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for p in result["parity"]:
        flag = " ⚠" if p["flagged"] else ""
        lines.append(
            f"| {p['backend']} | {p['precision']} | {p['accuracy'] * 100:.2f} % | "
            f"{p['accuracy_delta'] * 100:+.2f} pt{flag} | {p['agreement'] * 100:.2f} %{flag} | "
            f"{p['max_abs_diff']:.2e} | {p['mean_abs_diff']:.2e} |"
        )
    problems = [f"{p['backend']}: {x}" for p in result["parity"] for x in p.get("problems", [])]
    if problems:
        lines += ["", *[f"- ⚠ {x}" for x in problems]]
    if result.get("best"):
        lines += [
            "",
            "| batch | fastest (latency vs eager) | best of our exports | best peer | "
            "ours at least as fast |",
            "|---:|---|---|---|---|",
        ]
        for b in result["best"]:
            ahead = {True: "yes", False: "**no**", None: "-"}[b["export_ahead"]]
            lines.append(
                f"| {b['batch_size']} | {_named(b['best'], b['best_speedup'])} | "
                f"{_named(b['best_export'], b['best_export_speedup'])} | "
                f"{_named(b['best_peer'], b['best_peer_speedup'])} | {ahead} |"
            )
    if result.get("skipped"):
        lines += ["", *[f"- skipped {x['backend']}: {x['reason']}" for x in result["skipped"]]]
    return "\n".join(lines) + "\n"


def _named(name: str | None, speedup: float | None) -> str:
    if name is None:
        return "-"
    return f"{name} ({_fmt_ratio(None if not speedup else 1 / speedup)})"


#: line styles: eager a thick black line, our exports solid, peers dashed; markers tell apart
_MARKERS = "osD^vP*Xh<>p"


def plot(result: dict[str, Any], path: Path) -> None:
    """Median latency against batch size (log-log) and median throughput, one line per backend,
    with one legend below both panels (readable with eight or more backends); PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["latency"]
    roles = {p["backend"]: p.get("role", "export") for p in result["parity"]}
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(12, 6.2))
    cmap = plt.get_cmap("tab10")
    marked = False
    for i, name in enumerate(backends):
        mine = sorted((r for r in rows if r["backend"] == name), key=lambda r: r["batch_size"])
        sizes = [r["batch_size"] for r in mine]
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
        ax_lat.plot(sizes, [r["p50_ms"] for r in mine], **style)
        ax_tp.plot(sizes, [r["throughput"] for r in mine], **style)
        shaky = [r for r in mine if r.get("stable") is False or r.get("disturbed")]
        for ax, key in ((ax_lat, "p50_ms"), (ax_tp, "throughput")):
            ax.scatter(
                [r["batch_size"] for r in shaky],
                [r[key] for r in shaky],
                s=150,
                facecolors="none",
                edgecolors="red",
                linewidths=1.2,
                zorder=3,
                label="unstable or disturbed" if shaky and not marked else None,
            )
        marked = marked or bool(shaky)
    ax_lat.set(xscale="log", yscale="log", xlabel="batch size", ylabel="median latency (ms)")
    ax_tp.set(
        xscale="log", yscale="log", xlabel="batch size", ylabel="throughput (images/s, median)"
    )
    sizes_all = sorted({r["batch_size"] for r in rows})
    for ax in (ax_lat, ax_tp):
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xticks(sizes_all, [str(b) for b in sizes_all])
        ax.minorticks_off()
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = ax_lat.get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=min(4, max(1, len(labels))),
        fontsize=10,
        frameon=False,
        handlelength=3,
    )
    m = result["machine"]
    where = m.get("gpu") or f"{m['cpu']} ({m['cores']} cores)"
    fig.suptitle(
        f"lstm-export bench on {where}, {result['settings']['threads']} threads "
        "(medians; dashed: peer runtimes)"
    )
    rows_of_legend = -(-len(labels) // 4)
    fig.tight_layout(rect=(0, 0.04 + 0.045 * rows_of_legend, 1, 1))
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
