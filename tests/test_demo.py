"""The one-command demo end to end on a tiny training budget."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from lstm_export.cli import app
from lstm_export.pipeline.samples import write_sample_folder


def test_sample_folder_is_imagefolder(tmp_path: Path, mnist_test: tuple) -> None:
    import numpy as np
    from PIL import Image

    images = (np.asarray(mnist_test[0][:30]) * 255).round().astype(np.uint8)
    labels = mnist_test[1][:30]
    folder = write_sample_folder(images, labels, tmp_path / "s", count=25)
    files = sorted(folder.rglob("*.png"))
    assert len(files) == 25
    first = folder / str(int(labels[0])) / "00000.png"
    assert first in files
    np.testing.assert_array_equal(np.asarray(Image.open(first)), images[0])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_demo_end_to_end(mnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--data-dir", str(mnist_dir), "--epochs", "1"]
    args += [
        "--subset",
        "3000",
        "--sample-images",
        "60",
        "--bench-seconds",
        "0.02",
        "--bench-rounds",
        "1",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in (
        "model.pt",
        "model.onnx",
        "model.ts",
        "model.int8.onnx",
        "bench.json",
        "bench.png",
    ):
        assert (out / name).is_file(), name
    assert len(list((out / "samples").rglob("*.png"))) == 60
    bench = json.loads((out / "bench.json").read_text())
    backends = {p["backend"] for p in bench["parity"]}
    assert {"eager", "torchscript", "onnxruntime", "onnxruntime-int8"} <= backends
    fp32 = [p for p in bench["parity"] if p["precision"] == "fp32"]
    assert all(p["agreement"] == 1.0 for p in fp32)
    assert "summary" in result.output and "batch-256 throughput" in result.output
