"""``lstm-export infer`` through typer's CliRunner: outputs, exit codes, one-line errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _infer_helpers import exported_models, png_bytes, uint8_test_set, write_digits
from lstm_export.cli import app

N = 200


@pytest.fixture(scope="module")
def models(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return exported_models(trained_checkpoint, tmp_path_factory)


@pytest.fixture(scope="module")
def folder(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N test digits as PNGs in class folders, plus one broken file and one text file."""
    images, labels = uint8_test_set(mnist_dir)
    root = tmp_path_factory.mktemp("digits")
    write_digits(root, images[:N], labels[:N])
    (root / "5" / "broken.png").write_bytes(png_bytes(images[0])[:60])
    (root / "5" / "notes.txt").write_text("not an image")
    return root


def _run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("backend", ["eager", "torchscript", "onnxruntime"])
def test_infer_writes_rows_and_prints_accuracy(
    backend: str, models: dict[str, Path], folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "predictions.csv"
    code, stdout, stderr = _run("infer", models[backend], folder, "-o", out, "--no-progress")
    assert code == 0, stderr
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N + 1 and len({r["path"] for r in rows}) == N + 1
    broken = next(r for r in rows if r["path"] == "5/broken.png")
    assert broken["error"] and broken["prediction"] == ""
    ok = [r for r in rows if not r["error"]]
    accuracy = np.mean([r["label"] == r["prediction"] for r in ok])
    assert f"accuracy {accuracy * 100:.2f} %" in stdout  # summary on stdout with -o
    assert "confusion matrix" in stdout and f"predictions: {out}" in stdout
    assert "5/broken.png" in stderr and backend in stderr
    assert "auto: CPU" in stderr  # device auto says what it chose


def test_backends_agree_on_every_row(models: dict[str, Path], folder: Path, tmp_path: Path) -> None:
    predictions = {}
    for backend, model in models.items():
        out = tmp_path / f"{backend}.jsonl"
        assert _run("infer", model, folder, "-o", out, "--no-progress", "--device", "cpu")[0] == 0
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        predictions[backend] = [(r["path"], r["prediction"]) for r in records]
    assert predictions["eager"] == predictions["torchscript"] == predictions["onnxruntime"]


def test_rows_go_to_stdout_without_output(models: dict[str, Path], folder: Path) -> None:
    code, stdout, stderr = _run("infer", models["onnxruntime"], folder / "3", "--no-progress")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(stdout)))
    assert rows and list(rows[0]) == ["path", "prediction", "confidence", "error"]  # unlabelled
    assert all("/" not in r["path"] for r in rows)  # relative to FOLDER
    assert "classified" in stderr and "classified" not in stdout
    code, stdout, _ = _run(
        "infer", models["onnxruntime"], folder / "3", "--format", "jsonl", "--no-progress"
    )
    assert code == 0 and json.loads(stdout.splitlines()[0])["path"].endswith(".png")


def test_strict_fails_on_broken_files_but_writes_the_rows(
    models: dict[str, Path], folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "p.jsonl"
    code, _, stderr = _run("infer", models["eager"], folder, "-o", out, "--strict", "--no-progress")
    assert code == 1
    assert (
        _one_line_error(stderr) == f"error: --strict: 1 of {N + 1} images could not be classified"
    )
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == N + 1 and sum(r["error"] is not None for r in records) == 1


def test_device_cuda_without_cuda_is_one_line_and_exit_1(
    models: dict[str, Path], folder: Path, tmp_path: Path
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for model in models.values():
        out = tmp_path / "p.csv"
        code, _, stderr = _run("infer", model, folder, "--device", "cuda", "-o", out)
        assert code == 1
        assert _one_line_error(stderr).startswith("error: CUDA was asked for, but")
        assert stderr.strip().endswith("(--device cpu runs without it)")
        assert not out.exists()


def test_no_image_or_none_classified_exit_1(models: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    code, _, stderr = _run("infer", models["onnxruntime"], empty)
    assert (
        code == 1
        and "no image files" in _one_line_error(stderr)
        and "1 other file skipped" in stderr
    )
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"")
    out = tmp_path / "bad.csv"
    code, _, stderr = _run("infer", models["onnxruntime"], bad, "-o", out, "--no-progress")
    assert code == 1 and "none of the 1 image file could" in _one_line_error(stderr)
    assert "empty file" in out.read_text()  # the rows are still written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope.onnx", "."], "not found"),
        (["model.h5", "."], "cannot tell the backend"),
        (["{onnx}", "missing-folder"], "does not exist"),
        (["{onnx}", "{folder}", "-o", "p.txt"], "--format"),
        (["{onnx}", "{folder}", "--batch-size", "0"], "batch-size"),
        (["{onnx}", "{folder}", "--invert", "maybe"], "invert"),
    ],
)
def test_usage_and_input_errors_are_one_line(
    args: list[str],
    message: str,
    models: dict[str, Path],
    folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.h5").write_bytes(b"x")
    filled = [a.format(onnx=models["onnxruntime"], folder=folder) for a in args]
    code, _, stderr = _run("infer", *filled)
    assert code in (1, 2)
    assert message in _one_line_error(stderr)


def test_confusion_png_and_summary_json(
    models: dict[str, Path], folder: Path, tmp_path: Path
) -> None:
    png, summary = tmp_path / "cm.png", tmp_path / "summary.json"
    code, stdout, _ = _run(
        "infer", models["onnxruntime"], folder, "-o", tmp_path / "p.csv",
        "--confusion-png", png, "--summary-json", summary, "--no-progress",
    )  # fmt: skip
    assert code == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    data = json.loads(summary.read_text())
    assert data["images"] == N + 1 and data["errors"] == 1 and data["labelled"] is True
    assert np.array(data["confusion_matrix"]).sum() == N
    assert f"{data['accuracy'] * 100:.2f} %" in stdout


def test_confusion_png_on_an_unlabelled_folder_warns(
    models: dict[str, Path], folder: Path, tmp_path: Path
) -> None:
    png = tmp_path / "cm.png"
    code, _, stderr = _run(
        "infer", models["onnxruntime"], folder / "4", "--confusion-png", png, "--no-progress"
    )
    assert code == 0 and "no confusion matrix drawn" in stderr and not png.exists()


def test_fit_and_invert_flags_reach_the_preprocessing(
    models: dict[str, Path], mnist_dir: Path, tmp_path: Path
) -> None:
    images, labels = uint8_test_set(mnist_dir)
    write_digits(tmp_path / "paper", 255 - images[:40], labels[:40])
    base = [
        "infer",
        models["onnxruntime"],
        tmp_path / "paper",
        "--no-progress",
        "--format",
        "jsonl",
    ]

    def accuracy(*flags: str) -> float:
        code, stdout, _ = _run(*base, *flags)
        assert code == 0
        records = [json.loads(line) for line in stdout.splitlines()]
        return float(np.mean([r["prediction"] == r["label"] for r in records]))

    auto, never = accuracy(), accuracy("--invert", "no")
    assert auto > never + 0.3  # black on white needs the inversion auto makes
    assert accuracy("--fit") > never + 0.3


def test_cli_and_package_import_no_heavy_modules() -> None:
    """``lstm-export --help`` stays instant: torch, onnxruntime, PIL, matplotlib load on use."""
    import subprocess
    import sys

    code = (
        "import sys, lstm_export.cli, lstm_export.infer as infer; "
        "assert infer.classify_folder.__name__ == 'classify_folder'; "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'PIL', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_odd_file_names_are_printed_literally(models: dict[str, Path], tmp_path: Path) -> None:
    """Rich markup in a file name ([red], [bold]) is shown as it is, not interpreted."""
    (tmp_path / "[bold]x[red].png").write_bytes(b"")
    (tmp_path / "ok [1].png").write_bytes(png_bytes(np.zeros((28, 28), np.uint8)))
    code, stdout, stderr = _run("infer", models["onnxruntime"], tmp_path, "--no-progress")
    assert code == 0
    assert "[bold]x[red].png: empty file (0 bytes)" in stderr
    assert [r["path"] for r in csv.DictReader(io.StringIO(stdout))] == [
        "[bold]x[red].png",
        "ok [1].png",
    ]
