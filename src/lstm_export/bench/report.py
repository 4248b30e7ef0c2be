"""Bench output: the JSON file, a markdown summary and the latency/throughput plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lstm_export.fileio import atomic_path, write_text_atomic


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write the result dict (see README, "bench JSON schema") atomically."""
    write_text_atomic(path, json.dumps(result, indent=2) + "\n")


def _fmt_ratio(value: float | None, suffix: str = "x") -> str:
    return "-" if value is None else f"{value:.2f}{suffix}"


def markdown(result: dict[str, Any]) -> str:
    """Latency and parity tables as GitHub markdown, with the machine named."""
    m = result["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cores']} cores"
    s = result["settings"]
    lines = [
        f"Machine: {where}; torch {m['torch']}, onnxruntime {m['onnxruntime']}; "
        f"device {s['device']}, {s['threads']} threads.",
        "",
        "| backend | batch | p50 ms | p90 ms | p99 ms | images/s | latency vs eager | "
        "throughput vs eager |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["latency"]:
        lines.append(
            f"| {r['backend']} | {r['batch_size']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
            f"{r['p99_ms']:.3f} | {r['throughput']:,.0f} | {_fmt_ratio(r['latency_ratio'])} | "
            f"{_fmt_ratio(r['speedup'])} |"
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
            f"{p['accuracy_delta'] * 100:+.2f} pt | {p['agreement'] * 100:.2f} %{flag} | "
            f"{p['max_abs_diff']:.2e} | {p['mean_abs_diff']:.2e} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Latency (p50) against batch size, log-log, and throughput per backend; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["latency"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in backends:
        mine = sorted((r for r in rows if r["backend"] == name), key=lambda r: r["batch_size"])
        sizes = [r["batch_size"] for r in mine]
        ax_lat.plot(sizes, [r["p50_ms"] for r in mine], marker="o", label=name)
        ax_tp.plot(sizes, [r["throughput"] for r in mine], marker="o", label=name)
    ax_lat.set(xscale="log", yscale="log", xlabel="batch size", ylabel="p50 latency (ms)")
    ax_tp.set(xscale="log", yscale="log", xlabel="batch size", ylabel="throughput (images/s)")
    for ax in (ax_lat, ax_tp):
        ax.grid(True, which="both", alpha=0.3)
    ax_lat.legend(fontsize=8)
    m = result["machine"]
    where = m.get("gpu") or f"{m['cpu']} ({m['cores']} cores)"
    fig.suptitle(f"lstm-export bench on {where}, {result['settings']['threads']} threads")
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
