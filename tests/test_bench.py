"""Bench: statistics on known timings, the JSON schema, CLI and bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _cli_helpers import one_line_error
from lstm_export.bench.run import add_ratios, median_round
from lstm_export.bench.stats import latency_stats
from lstm_export.bench.timing import time_runner
from lstm_export.bench.variants import BenchDevice, select_variants
from lstm_export.cli import app
from lstm_export.errors import BenchError

runner = CliRunner()

LATENCY_KEYS = {"backend", "device", "batch_size", "p50_ms", "p90_ms", "p99_ms", "mean_ms"}
LATENCY_KEYS |= {"min_ms", "max_ms", "throughput", "latency_ratio", "speedup", "copy_ms"}
PARITY_KEYS = {"backend", "device", "accuracy", "agreement", "max_abs_diff", "mean_abs_diff"}


def test_latency_stats_on_known_timings() -> None:
    stats = latency_stats([0.001, 0.002, 0.003, 0.004], batch_size=10)
    assert stats.mean_ms == pytest.approx(2.5)
    assert stats.p50_ms == pytest.approx(2.5)
    assert stats.min_ms == pytest.approx(1.0) and stats.max_ms == pytest.approx(4.0)
    assert stats.p90_ms == pytest.approx(3.7)
    assert stats.p99_ms == pytest.approx(3.97)
    assert stats.throughput == pytest.approx(10 / 0.0025)
    assert stats.iterations == 4


def test_latency_stats_rejects_empty_and_bad_batch() -> None:
    with pytest.raises(BenchError):
        latency_stats([], 1)
    with pytest.raises(BenchError):
        latency_stats([0.1], 0)


def test_ratios_against_eager() -> None:
    rows = [
        {"backend": "eager", "device": "cpu", "batch_size": 1, "p50_ms": 2.0, "throughput": 500.0},
        {"backend": "ort", "device": "cpu", "batch_size": 1, "p50_ms": 0.5, "throughput": 1500.0},
        {"backend": "ort", "device": "cpu", "batch_size": 8, "p50_ms": 1.0, "throughput": 8000.0},
    ]
    add_ratios(rows)
    assert rows[1]["latency_ratio"] == pytest.approx(0.25)
    assert rows[1]["speedup"] == pytest.approx(3.0)
    assert rows[2]["latency_ratio"] is None  # no eager row at batch 8


def test_median_round_picks_the_middle_round() -> None:
    fast, mid, slow = (np.full(5, t) for t in (1.0, 2.0, 9.0))
    zeros = np.zeros(5)
    chosen, _ = median_round([(slow, zeros), (fast, zeros), (mid, zeros)])
    assert chosen is mid
    assert median_round([(fast, zeros)])[0] is fast


def test_variant_selection() -> None:
    cpu = [v.name for v in select_variants(None, BenchDevice.cpu)]
    assert cpu[0] == "eager" and "onnxruntime-int8" in cpu
    assert "onnxruntime-fp16" not in cpu
    cuda = [v.name for v in select_variants(None, BenchDevice.cuda)]
    assert {"onnxruntime-cudagraph", "onnxruntime-fp16"} <= set(cuda)
    assert "onnxruntime-int8" not in cuda
    assert [v.name for v in select_variants(["onnxruntime"], BenchDevice.cpu)] == [
        "eager",
        "onnxruntime",
    ]
    with pytest.raises(BenchError, match="unknown backend"):
        select_variants(["tensorflow"], BenchDevice.cpu)
    with pytest.raises(BenchError, match="does not run on cpu"):
        select_variants(["onnxruntime-fp16"], BenchDevice.cpu)


def test_time_runner_counts_iterations(make_checkpoint: Callable[..., Path]) -> None:
    from lstm_export.infer.registry import load_runner

    with load_runner(make_checkpoint(hidden_size=8), device="cpu") as r:
        x = np.zeros((2, 28, 28), dtype=np.float32)
        timings = time_runner(r, x, warmup=1, iterations=5)
        assert timings.compute.shape == (5,) and timings.copies.shape == (5,)
        assert (timings.compute > 0).all()
        budget = time_runner(r, x, warmup=0, iterations=None, seconds=0.05, min_iterations=3)
        assert budget.compute.size >= 3


def test_cli_eager_only_writes_schema(
    make_checkpoint: Callable[..., Path], mnist_dir: Path, tmp_path: Path
) -> None:
    ckpt = make_checkpoint(hidden_size=8)
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    args = ["bench", str(ckpt), "-b", "eager", "--batch-sizes", "1,4", "-n", "3", "--warmup", "1"]
    args += ["--parity-images", "100", "--data-dir", str(mnist_dir), "-o", str(out)]
    args += ["--plot", str(png), "--markdown", "--rounds", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["schema_version"] == 1
    assert {"cpu", "cores", "torch", "onnxruntime"} <= set(data["machine"])
    assert [(r["backend"], r["batch_size"]) for r in data["latency"]] == [
        ("eager", 1),
        ("eager", 4),
    ]
    for row in data["latency"]:
        assert set(row) >= LATENCY_KEYS
        assert row["min_ms"] <= row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["latency_ratio"] == pytest.approx(1.0) and row["rounds"] == 2
    assert set(data["parity"][0]) >= PARITY_KEYS
    assert data["parity"][0]["agreement"] == 1.0 and data["parity"][0]["images"] == 100
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| eager | 1 |" in result.output  # the markdown table


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["-b", "eager,tensorflow"], "unknown backend"),
        (["--batch-sizes", "0,8"], "batch sizes"),
        (["--batch-sizes", "one"], "integers"),
        (["--device", "tpu"], "--device"),
        (["--rounds", "0"], "--rounds"),
        (["-b", "onnxruntime-fp16"], "does not run on cpu"),
    ],
)
def test_cli_bad_input_is_one_line(
    extra: list[str], needle: str, make_checkpoint: Callable[..., Path]
) -> None:
    ckpt = make_checkpoint(hidden_size=8)
    assert needle in one_line_error(runner.invoke(app, ["bench", str(ckpt), *extra]))


def test_cli_cuda_without_cuda_is_one_line_before_measuring(
    make_checkpoint: Callable[..., Path],
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = one_line_error(runner.invoke(app, ["bench", str(make_checkpoint()), "--device", "cuda"]))
    assert "CUDA was asked for, but it is not usable" in line and "--device cpu" in line


def test_cli_missing_run_dir_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(runner.invoke(app, ["bench", str(tmp_path / "nope")]))
    assert "not found" in line
    (tmp_path / "empty").mkdir()
    assert "no model.pt" in one_line_error(runner.invoke(app, ["bench", str(tmp_path / "empty")]))
