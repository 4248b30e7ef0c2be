"""The whole pipeline end to end: verify MNIST (never downloaded here), train, export
TorchScript, ONNX and int8 ONNX, classify a sample folder, benchmark; each step reports through
``on_step``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lstm_export.console import count
from lstm_export.train.presets import PRESETS, Preset

if TYPE_CHECKING:
    from lstm_export.bench.run import ProgressCallback
    from lstm_export.train.loop import EpochCallback
    from lstm_export.train.loop import StepCallback as TrainStepCallback

#: on_step(name, detail): called when a step starts ("" detail) and when it ends
StepCallback = Callable[[str, str], None]


@dataclass
class DemoSettings:
    """What the demo does; defaults are the README's main command."""

    out: Path = Path("runs/demo")
    preset: Preset = Preset.seed
    data_dir: Path | None = None
    sample_images: int = 2000
    bench_seconds: float = 0.5
    bench_rounds: int = 3
    bench_batch_sizes: tuple[int, ...] = (1, 8, 64, 256, 1024)
    epochs: int | None = None  # override the preset (quick runs)
    subset: int | None = None


@dataclass
class DemoSummary:
    """Figures and paths produced by the demo."""

    test_accuracy: float = 0.0
    train_seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    folder: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def run_demo(
    settings: DemoSettings,
    on_step: StepCallback | None = None,
    *,
    on_train_step: TrainStepCallback | None = None,
    on_epoch: EpochCallback | None = None,
    on_bench_progress: ProgressCallback | None = None,
) -> DemoSummary:
    """Run every stage in order; any failure raises the stage's typed error. ``on_train_step`` and
    ``on_epoch`` follow the training, ``on_bench_progress`` the bench's rounds."""
    from lstm_export.bench.report import plot, write_json
    from lstm_export.bench.run import BenchSettings, plan_bench, run_bench
    from lstm_export.data.mnist import ensure_mnist, load_split
    from lstm_export.export.quantize import quantize_int8
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.export.to_torchscript import export_torchscript
    from lstm_export.fileio import ensure_writable_dir
    from lstm_export.infer.classify import classify_folder
    from lstm_export.pipeline.samples import write_sample_folder
    from lstm_export.train.loop import train
    from lstm_export.train.run_dir import save_run

    step = on_step or (lambda *_: None)
    start = time.perf_counter()
    summary = DemoSummary()
    out = ensure_writable_dir(settings.out)

    step("data", "")
    data_dir = ensure_mnist(settings.data_dir)
    step("data", f"MNIST verified in {data_dir}")

    step("train", "")
    config = PRESETS[settings.preset].with_overrides(epochs=settings.epochs, subset=settings.subset)
    result = train(config, data_dir, on_step=on_train_step, on_epoch=on_epoch)
    checkpoint = save_run(result, out)
    summary.test_accuracy = result.metrics["test_accuracy"]
    summary.train_seconds = result.metrics["train_seconds"]
    summary.files["checkpoint"] = str(checkpoint)
    step("train", f"{summary.test_accuracy * 100:.2f} % in {summary.train_seconds:.0f} s")

    step("export", "")
    onnx_report = export_onnx(checkpoint, out / "model.onnx", data_dir=data_dir)
    ts_report = export_torchscript(checkpoint, out / "model.ts", data_dir=data_dir)
    int8_report = quantize_int8(out / "model.onnx", out / "model.int8.onnx", data_dir=data_dir)
    summary.files.update(
        onnx=str(onnx_report.path), torchscript=str(ts_report.path), int8=str(int8_report.path)
    )
    summary.export = {k: getattr(int8_report, k) for k in ("fp32_accuracy", "int8_accuracy")}
    step(
        "export",
        f"model.onnx, model.ts validated against eager; model.int8.onnx "
        f"{int8_report.int8_accuracy * 100:.2f} % (fp32 {int8_report.fp32_accuracy * 100:.2f} %)",
    )

    step("classify", "")
    test = load_split(data_dir, "test")
    samples = write_sample_folder(
        test.images, test.labels, out / "samples", count=settings.sample_images
    )
    folder = classify_folder(onnx_report.path, samples, backend="onnxruntime", device="cpu")
    summary.files["samples"] = str(samples)
    images, accuracy = folder.summary.images, folder.summary.accuracy
    speed = folder.summary.images_per_second
    summary.folder = {"images": images, "accuracy": accuracy, "images_per_second": speed}
    step("classify", f"{count(images, 'PNG')}, accuracy {(accuracy or 0) * 100:.2f} %")

    step("bench", "")
    bench_settings = BenchSettings(
        batch_sizes=settings.bench_batch_sizes,
        seconds=settings.bench_seconds,
        rounds=settings.bench_rounds,
        data_dir=data_dir,
    )
    plan = plan_bench(checkpoint, bench_settings)
    bench = run_bench(plan, on_progress=on_bench_progress)
    write_json(bench, out / "bench.json")
    plot(bench, out / "bench.png")
    summary.files.update(bench_json=str(out / "bench.json"), bench_png=str(out / "bench.png"))
    summary.bench = bench
    step("bench", f"{len(bench['latency'])} latency rows, {len(bench['parity'])} parity rows")
    summary.seconds = time.perf_counter() - start
    return summary
