"""Bench: statistics on known timings, the JSON schema, CLI and bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from _cli_helpers import one_line_error
from lstm_export.bench import variants as variants_module
from lstm_export.bench.measure import CheckJob, check
from lstm_export.bench.report import markdown, plot
from lstm_export.bench.run import (
    _parity_row,
    _unstable,
    add_ratios,
    best_per_batch,
    median_round,
)
from lstm_export.bench.stats import is_stable, latency_stats, round_spread
from lstm_export.bench.timing import time_runner
from lstm_export.bench.variants import VARIANTS, BenchDevice, Variant, select_variants
from lstm_export.cli import app
from lstm_export.errors import BenchError

runner = CliRunner()

LATENCY_KEYS = {"backend", "device", "batch_size", "p50_ms", "p90_ms", "p99_ms", "mean_ms"}
LATENCY_KEYS |= {"min_ms", "max_ms", "throughput", "latency_ratio", "speedup", "copy_ms"}
LATENCY_KEYS |= {"spread", "disturbed", "iqr_ms", "round_p50_ms", "round_spread", "stable"}
PARITY_KEYS = {"backend", "device", "accuracy", "agreement", "max_abs_diff", "mean_abs_diff"}


def test_latency_stats_on_known_timings() -> None:
    stats = latency_stats([0.001, 0.002, 0.003, 0.004], batch_size=10)
    assert stats.mean_ms == pytest.approx(2.5)
    assert stats.p50_ms == pytest.approx(2.5)
    assert stats.min_ms == pytest.approx(1.0) and stats.max_ms == pytest.approx(4.0)
    assert stats.p90_ms == pytest.approx(3.7)
    assert stats.p99_ms == pytest.approx(3.97)
    assert stats.iqr_ms == pytest.approx(1.5)
    assert stats.throughput == pytest.approx(10 / 0.0025)  # from the median
    assert stats.spread == pytest.approx(3.7 / 2.5) and not stats.disturbed
    assert stats.iterations == 4


def test_latency_stats_rejects_empty_and_bad_batch() -> None:
    with pytest.raises(BenchError):
        latency_stats([], 1)
    with pytest.raises(BenchError):
        latency_stats([0.1], 0)


def _row(backend: str, batch: int, seconds: list[float]) -> dict[str, Any]:
    stats = latency_stats(seconds, batch).to_dict()
    return {"backend": backend, "device": "cpu", "batch_size": batch, **stats}


def test_one_outlier_moves_no_ratio() -> None:
    """The demo's case: one 492 ms call among 90 of eager's made the mean-based speedup 14x."""
    eager = [0.0005] * 89 + [0.492]
    torchscript = [0.00047] * 90
    rows = [_row("eager", 1, eager), _row("torchscript", 1, torchscript)]
    add_ratios(rows)
    ts = rows[1]
    assert ts["latency_ratio"] == pytest.approx(0.94)
    assert ts["speedup"] == pytest.approx(1 / 0.94)  # the same statistic: never 14x
    assert ts["speedup"] == pytest.approx(ts["throughput"] / rows[0]["throughput"])
    assert rows[0]["mean_ms"] > 5  # the mean is what the outlier moved; it is not compared


def test_a_disturbed_round_is_flagged() -> None:
    steady = latency_stats([0.001] * 50, 1)
    noisy = latency_stats([0.001] * 40 + [0.003] * 10, 1)  # p90 = 3 x p50
    assert not steady.disturbed and steady.spread == pytest.approx(1.0)
    assert noisy.disturbed and noisy.to_dict()["disturbed"] is True


def test_ratios_against_eager() -> None:
    rows = [
        {"backend": "eager", "device": "cpu", "batch_size": 1, "p50_ms": 2.0, "throughput": 500.0},
        {"backend": "ort", "device": "cpu", "batch_size": 1, "p50_ms": 0.5, "throughput": 2000.0},
        {"backend": "ort", "device": "cpu", "batch_size": 8, "p50_ms": 1.0, "throughput": 8000.0},
    ]
    add_ratios(rows)
    assert rows[1]["latency_ratio"] == pytest.approx(0.25)
    assert rows[1]["speedup"] == pytest.approx(4.0)
    assert rows[2]["latency_ratio"] is None and rows[2]["speedup"] is None  # no eager at 8


def test_median_round_picks_the_middle_round() -> None:
    fast, mid, slow = (np.full(5, t) for t in (1.0, 2.0, 9.0))
    zeros = np.zeros(5)
    chosen, _ = median_round([(slow, zeros), (fast, zeros), (mid, zeros)])
    assert chosen is mid
    assert median_round([(fast, zeros)])[0] is fast


def test_stability_across_rounds() -> None:
    assert round_spread([1.0, 1.05, 0.98]) == pytest.approx(0.035)  # IQR: half the range
    assert is_stable([1.0, 1.05, 0.98]) and not is_stable([1.0, 1.5, 0.98])
    assert not is_stable([1.0, 1.0], min_rounds=3)  # too few rounds to tell
    # one disturbed round among five leaves the quartiles, so the median is still stable
    assert is_stable([1.0, 1.02, 0.99, 3.0, 1.01])


def test_only_unstable_figures_are_measured_again() -> None:
    """A backend is judged by its ratio to eager in the same round, so drift cancels."""
    p50 = {
        ("eager", 1): {0: 1.0, 1: 2.0, 2: 1.0},  # the machine slowed in round 1 ...
        ("ort", 1): {0: 0.5, 1: 1.0, 2: 0.5},  # ... and ort with it: its ratio is steady
        ("eager", 256): {0: 10.0, 1: 10.1, 2: 10.0},
        ("ort", 256): {0: 5.0, 1: 8.0, 2: 5.1},  # ort alone was disturbed
    }
    again = _unstable(p50, (1, 256), ["eager", "ort"])
    # eager's own batch-1 figure moved, so it is measured again; ort's ratio did not move
    assert again == {"eager": (1, 256), "ort": (256,)}


def _parity(backend: str, precision: str, accuracy: float, agreement: float) -> dict[str, Any]:
    from lstm_export import parity

    n = 10_000
    labels = np.zeros(n, dtype=np.int64)
    reference = np.zeros((n, 10), np.float32)
    reference[:, 0] = 1  # eager: all correct
    logits = reference.copy()
    wrong = round((1 - accuracy) * n)
    logits[:wrong, 0], logits[:wrong, 1] = 0, 1
    assert parity.compare(logits, reference, labels).agreement == pytest.approx(agreement)
    variant = Variant(backend, VARIANTS[0].artifact, "eager", frozenset(), precision)
    return _parity_row(variant, "cpu", logits, reference, labels)


def test_reduced_precision_is_allowed_three_tenths_of_a_point() -> None:
    ok = _parity("int8", "int8", 0.998, 0.998)  # -0.2 points: allowed
    bad = _parity("bf16", "bf16", 0.996, 0.996)  # -0.4 points: flagged
    assert not ok["flagged"] and ok["allowed_drop"] == pytest.approx(0.003)
    assert bad["flagged"] and "0.40 points below" in bad["problems"][0]
    fp32 = _parity("ort", "fp32", 0.9995, 0.9995)  # fp32 is held to agreement instead
    assert fp32["flagged"] and "argmax differs" in fp32["problems"][0]


def test_best_per_batch_compares_our_exports_with_the_peers() -> None:
    variants = [v for v in VARIANTS if v.name in ("eager", "onnxruntime-int8", "openvino")]
    latency = [
        {"backend": "eager", "batch_size": 1, "p50_ms": 1.0, "speedup": 1.0},
        {"backend": "onnxruntime-int8", "batch_size": 1, "p50_ms": 0.2, "speedup": 5.0},
        {"backend": "openvino", "batch_size": 1, "p50_ms": 0.4, "speedup": 2.5},
        {"backend": "eager", "batch_size": 256, "p50_ms": 10.0, "speedup": 1.0},
        {"backend": "onnxruntime-int8", "batch_size": 256, "p50_ms": 6.0, "speedup": 1.67},
        {"backend": "openvino", "batch_size": 256, "p50_ms": 5.0, "speedup": 2.0},
    ]
    parity = [{"backend": v.name, "flagged": False} for v in variants]
    best = {b["batch_size"]: b for b in best_per_batch(latency, parity, variants)}
    assert best[1]["best"] == "onnxruntime-int8" and best[1]["export_ahead"] is True
    assert best[256]["best"] == "openvino" and best[256]["export_ahead"] is False
    assert best[256]["best_peer"] == "openvino" and best[256]["best_export_speedup"] == 1.67
    parity[1]["flagged"] = True  # out of its accuracy bounds: it does not count
    best = {b["batch_size"]: b for b in best_per_batch(latency, parity, variants)}
    assert best[1]["best"] == "openvino" and best[1]["best_export"] is None


def test_variant_selection() -> None:
    cpu = [v.name for v in select_variants(None, BenchDevice.cpu).variants]
    assert cpu[0] == "eager" and "onnxruntime-int8" in cpu
    assert "onnxruntime-fp16" not in cpu
    cuda = [v.name for v in select_variants(None, BenchDevice.cuda).variants]
    assert {"onnxruntime-cudagraph", "onnxruntime-fp16", "onnxruntime-tf32", "eager-tf32"} <= set(
        cuda
    )
    assert "onnxruntime-tf32" not in cpu and "eager-tf32" not in cpu
    assert "onnxruntime-int8" not in cuda and "openvino" not in cuda
    assert [v.name for v in select_variants(["onnxruntime"], BenchDevice.cpu).variants] == [
        "eager",
        "onnxruntime",
    ]
    with pytest.raises(BenchError, match="unknown backend"):
        select_variants(["tensorflow"], BenchDevice.cpu)
    with pytest.raises(BenchError, match="does not run on cpu"):
        select_variants(["onnxruntime-fp16"], BenchDevice.cpu)


def test_peers_are_in_the_default_set_where_installed() -> None:
    from lstm_export.infer.runners.openvino_runner import bf16_support, openvino_problem

    if openvino_problem() is not None:
        pytest.skip("the openvino extra is not installed")
    selection = select_variants(None, BenchDevice.cpu)
    names = [v.name for v in selection.variants]
    assert "openvino" in names
    if bf16_support()[0]:
        assert {"openvino-bf16", "eager-bf16"} <= set(names) and not selection.skipped
    else:
        assert "bf16" in selection.skipped["openvino-bf16"]


def test_a_missing_package_is_skipped_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from lstm_export.infer.runners import openvino_runner

    monkeypatch.setattr(openvino_runner, "openvino_problem", lambda: "openvino is not installed")
    monkeypatch.setattr(openvino_runner, "cpu_flags", lambda: {"avx2"})
    selection = select_variants(None, BenchDevice.cpu)
    names = [v.name for v in selection.variants]
    assert "openvino" not in names and "eager-bf16" not in names and "onnxruntime" in names
    assert selection.skipped["openvino"] == "openvino is not installed"
    assert "emulated" in selection.skipped["eager-bf16"]
    assert all("\n" not in reason for reason in selection.skipped.values())
    with pytest.raises(BenchError, match="'openvino' cannot run here: openvino is not installed"):
        select_variants(["openvino"], BenchDevice.cpu)
    assert variants_module.REFERENCE == "eager"


def test_check_names_the_backend_that_cannot_load(
    make_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    from lstm_export.errors import ModelLoadError

    ckpt = make_checkpoint(hidden_size=8)
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"\x00not a model" * 10)
    by_name = {v.name: v for v in VARIANTS}
    job = CheckJob(
        variants=(by_name["eager"], by_name["onnxruntime"]),
        paths=(ckpt, garbage),
        device="cpu",
        threads=1,
    )
    with pytest.raises(ModelLoadError, match=r"^backend 'onnxruntime' cannot run: ") as info:
        check(job)
    assert "\n" not in str(info.value)


def test_the_check_runs_before_anything_is_measured(
    make_checkpoint: Callable[..., Path], mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend that cannot load fails the bench before any backend is measured."""
    from lstm_export.bench import run as run_module
    from lstm_export.errors import DeviceError

    measured: list[str] = []

    def in_child(work: object, job: Any, *_: object) -> None:
        if work is run_module.check:
            raise DeviceError("backend 'onnxruntime' cannot run: CUDA provider did not load")
        measured.append(job.variant.name)

    monkeypatch.setattr(run_module, "in_child", in_child)
    settings = run_module.BenchSettings(backends=["onnxruntime"], data_dir=mnist_dir)
    plan = run_module.plan_bench(make_checkpoint(hidden_size=8), settings)
    with pytest.raises(DeviceError, match="onnxruntime"):
        run_module.run_bench(plan)
    assert measured == []


def _fake_result(names: list[str]) -> dict[str, Any]:
    latency: list[dict[str, Any]] = []
    parity: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        for batch in (1, 8, 64, 256, 1024):
            p50 = (0.1 + 0.05 * batch) * (1 + 0.1 * i)
            latency.append(
                {
                    "backend": name,
                    "batch_size": batch,
                    "p50_ms": p50,
                    "throughput": batch / p50 * 1e3,
                    "spread": 1.1 + 0.2 * i,
                    "disturbed": i == 3,
                    "stable": i != 2,
                    "rounds": 3,
                    "latency_ratio": 1 + 0.1 * i,
                    "speedup": 1 / (1 + 0.1 * i),
                }
            )
        parity.append(
            {
                "backend": name,
                "precision": "fp32",
                "role": "reference" if i == 0 else ("peer" if i > 4 else "export"),
                "accuracy": 0.98,
                "accuracy_delta": 0.0,
                "agreement": 1.0,
                "max_abs_diff": 0.0,
                "mean_abs_diff": 0.0,
                "flagged": False,
                "problems": [],
            }
        )
    return {
        "machine": {"cpu": "Test CPU", "cores": 2, "torch": "2", "onnxruntime": "1"},
        "settings": {"device": "cpu", "threads": 2},
        "latency": latency,
        "parity": parity,
        "skipped": [{"backend": "x", "reason": "not installed"}],
    }


def test_plot_and_markdown_show_every_backend(tmp_path: Path) -> None:
    names = ["eager", "torchscript", "onnxruntime", "onnxruntime-int8", "x5", "openvino"]
    names += ["openvino-bf16", "eager-bf16"]
    result = _fake_result(names)
    png = tmp_path / "eight.png"
    plot(result, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width = matplotlib.image.imread(png).shape[:2]
    assert width > 1200 and height > 600  # room for a legend of eight below the panels
    text = markdown(result)
    for name in names:
        assert f"| {name} | 1 |" in text
    assert "| eager | 1 | 0.150 | 1.10 | 6,667 | 1.00x | 1.00x | 3 |  |" in text  # no note
    assert "| noisy calls |" in text and "| rounds disagree |" in text
    assert "noisy calls: the slowest tenth of the calls took over 1.5x the median" in text
    assert "rounds disagree: after the last round" in text and "skipped x: not installed" in text


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
    args += ["--plot", str(png), "--markdown", "--rounds", "2", "--max-rounds", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["schema_version"] == 2
    assert {"cpu", "cores", "torch", "onnxruntime"} <= set(data["machine"])
    assert [(r["backend"], r["batch_size"]) for r in data["latency"]] == [
        ("eager", 1),
        ("eager", 4),
    ]
    for row in data["latency"]:
        assert set(row) >= LATENCY_KEYS
        assert row["min_ms"] <= row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["latency_ratio"] == pytest.approx(1.0) and row["rounds"] == 2
        assert row["throughput"] == pytest.approx(row["batch_size"] / row["p50_ms"] * 1e3)
    assert set(data["parity"][0]) >= PARITY_KEYS
    assert data["parity"][0]["agreement"] == 1.0 and data["parity"][0]["images"] == 100
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| eager | 1 |" in result.output  # the markdown table
    # a line per backend and batch size, as it was measured (on stderr)
    assert "round 1  eager" in result.output and "batch     4: p50" in result.output


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["-b", "eager,tensorflow"], "unknown backend"),
        (["--batch-sizes", "0,8"], "batch sizes"),
        (["--batch-sizes", "one"], "integers"),
        (["--device", "tpu"], "--device"),
        (["--rounds", "0"], "--rounds"),
        (["--rounds", "3", "--max-rounds", "2"], "max rounds (2) must be >= rounds (3)"),
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


def test_every_variant_reaches_the_measuring_child() -> None:
    """Each backend is measured in a spawned process: its variant must pickle (no lambdas)."""
    import pickle

    assert pickle.loads(pickle.dumps(VARIANTS)) == VARIANTS
