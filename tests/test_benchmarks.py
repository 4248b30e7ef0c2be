"""Every script in benchmarks/ starts with today's API and runs on a tiny input.

Each script runs as a user runs it: a subprocess of this interpreter (the venv's python) from the
repository root. The models are small (hidden size 16, one layer, untrained), the inputs a few
hundred MNIST test digits, the time budgets a few hundredths of a second.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py"))


def run_script(name: str, *args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/<name> args...`` from the repository root; stdout and stderr kept."""
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """stdout of a run that must have exited 0 (else fail with everything it printed)."""
    assert result.returncode == 0, (
        f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small untrained checkpoint and its ONNX file (legacy exporter: the quick one)."""
    import torch

    from lstm_export.checkpoint import make_checkpoint, save_checkpoint
    from lstm_export.config import ModelConfig
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.model import build_model

    folder = tmp_path_factory.mktemp("bench_model")
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_size=16, num_layers=1)).eval()
    checkpoint = folder / "model.pt"
    save_checkpoint(make_checkpoint(model, metrics={"test_accuracy": 0.0}), checkpoint)
    onnx_path = export_onnx(checkpoint, folder / "model.onnx", legacy=True, validate=False).path
    return checkpoint, onnx_path


def test_every_script_is_tested_here() -> None:
    """A new script in benchmarks/ gets a run of its own in this file."""
    ran = set(re.findall(r'run_script\(\s*"([^"]+)"', Path(__file__).read_text()))
    untested = sorted(set(SCRIPTS) - ran)
    assert SCRIPTS and not untested, f"no test runs {untested} beyond -h"


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str) -> None:
    """Every script starts (its module-level imports exist) and describes itself on -h."""
    out = ok(run_script(script, "-h"))
    assert out.startswith("usage:") and script in out


def test_make_folders(mnist_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "folders"
    result = run_script(
        "make_folders.py",
        out_dir,
        "--count",
        25,
        "--variants",
        "mnist,jpeg,large,photo,messy",
        "--data-dir",
        mnist_dir,
    )
    ok(result)
    for variant, count in (("mnist", 25), ("jpeg", 25), ("large", 25), ("photo", 25)):
        assert f"{out_dir / variant}: {count} image files" in result.stderr
        files = [p for p in (out_dir / variant).rglob("*") if p.is_file()]
        assert len(files) == count
    assert len(list((out_dir / "mnist").glob("*/*.png"))) == 25
    from PIL import Image

    with Image.open(next((out_dir / "large").rglob("*.png"))) as img:
        assert img.size == (112, 112)
    # 25 digits + empty, truncated and not-an-image files (one row each); hidden and .txt left out
    assert f"{out_dir / 'messy'}: 28 image files" in result.stderr
    assert (out_dir / "messy" / "3" / ".hidden.png").is_file()


def test_make_folders_unknown_variant(tmp_path: Path) -> None:
    result = run_script("make_folders.py", tmp_path, "--variants", "mnist,nope")
    assert result.returncode == 2 and "unknown variant 'nope'" in result.stderr
    assert not (tmp_path / "mnist").exists()


def test_independent_timing(small_model: tuple[Path, Path]) -> None:
    _, onnx_path = small_model
    out = ok(
        run_script(
            "independent_timing.py",
            onnx_path,
            "--batch-sizes",
            "1,4",
            "--threads",
            1,
            "--seconds",
            0.02,
            "--repeats",
            1,
        )
    )
    lines = out.splitlines()
    assert lines[0].split() == ["batch", "bench", "p50", "ms", "plain", "p50", "ms", "ratio"]
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == ["1", "4"]
    for row in rows:
        bench, plain, ratio = map(float, row[1:])
        assert bench > 0 and plain > 0
        assert ratio == pytest.approx(bench / plain, rel=0.15)  # printed values are rounded


def test_reproduce_without_mnist(tmp_path: Path) -> None:
    """reproduce.py gets MNIST the way a command does: a missing folder is one error line."""
    result = run_script(
        "reproduce.py", "--out", tmp_path / "out", "--data-dir", tmp_path / "no-mnist"
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "no-mnist" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_infer_throughput(small_model: tuple[Path, Path], mnist_dir: Path, tmp_path: Path) -> None:
    checkpoint, onnx_path = small_model
    figures = tmp_path / "throughput.json"
    result = run_script(
        "infer_throughput.py",
        "--checkpoint",
        checkpoint,
        "--onnx",
        onnx_path,
        "--count",
        200,
        "--repeat",
        1,
        "--naive",
        20,
        "--data-dir",
        mnist_dir,
        "--json",
        figures,
        "--no-targets",
    )
    out = ok(result)
    assert "200 images in" in result.stderr
    for line in (
        "decode only (1 worker",
        "inference only, ORT fp32 (best: ",
        "end to end, ORT fp32 (",
        "naive loop (PIL + eager, one image at a time, 20 images)",
        "(target >= 70 %)",
        "(target >= 5x)",
        "end-to-end accuracy (fp32): ",
    ):
        assert line in out
    data = json.loads(figures.read_text())
    assert data["images"] == 200
    for key in ("decode_only", "inference_only_fp32", "end_to_end_fp32", "naive"):
        assert data[key] > 0
    assert 0 <= data["accuracy_fp32"] <= 1
    assert data["ratio_vs_naive"] == pytest.approx(data["end_to_end_fp32"] / data["naive"])


@pytest.mark.slow
def test_export_parity(small_model: tuple[Path, Path], mnist_dir: Path, tmp_path: Path) -> None:
    checkpoint, _ = small_model
    out_dir, figures = tmp_path / "exports", tmp_path / "parity.json"
    result = run_script(
        "export_parity.py",
        checkpoint,
        "--images",
        300,
        "--out-dir",
        out_dir,
        "--data-dir",
        mnist_dir,
        "--json",
        figures,
        # an untrained model's int8 accuracy is noise around 10 %: only a smoke check here
        "--int8-max-drop",
        0.5,
    )
    out = ok(result)
    assert "300 test images" in out
    backends = [
        "eager",
        "onnxruntime (dynamo)",
        "onnxruntime (legacy)",
        "torchscript",
        "onnx.reference",
    ]
    for backend in [*backends, "onnxruntime int8"]:
        assert re.search(rf"^  {re.escape(backend)} +\d+\.\d\d %", out, re.MULTILINE), backend
    pairs = re.findall(r"^  .+ vs .+ max \|diff\| .+ argmax 300/300  ok$", out, re.MULTILINE)
    assert len(pairs) == 10
    assert out.rstrip().endswith("result: PASS")
    for name in ("model.onnx", "model.legacy.onnx", "model.ts", "model.int8.onnx"):
        assert (out_dir / name).is_file()
    data = json.loads(figures.read_text())
    assert data["pass"] is True and data["images"] == 300
    assert list(data["accuracy"]) == backends
    assert set(data["int8"]) == {"fp32", "int8", "drop"}
    assert all(p["ok"] and p["max_abs_diff"] <= 1e-4 for p in data["pairs"])


@pytest.mark.slow
def test_ray_throughput(small_model: tuple[Path, Path], mnist_dir: Path, tmp_path: Path) -> None:
    _, onnx_path = small_model
    figures = tmp_path / "ray.json"
    ok(
        run_script(
            "ray_throughput.py",
            "--model",
            onnx_path,
            "--count",
            50,
            "--repeat",
            1,
            "--actors",
            "1",
            "--no-warm",
            "--data-dir",
            mnist_dir,
            "--json",
            figures,
        )
    )
    report = json.loads(figures.read_text())
    assert set(report["results"]) == {"in-process", "ray local, 1 actor"}


def _make_wheel(folder: Path, name: str) -> Path:
    """A minimal pure-Python wheel ``name-0.1`` holding ``name/__init__.py``."""
    import base64
    import hashlib
    import zipfile

    files = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{name}-0.1.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode(),
        f"{name}-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{name}-0.1.dist-info/RECORD,,")
    files[f"{name}-0.1.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = folder / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


def run_gpu_check(**env: object) -> subprocess.CompletedProcess[str]:
    """``bash benchmarks/gpu_check.sh`` with this interpreter and ``env`` added."""
    import os

    return subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh")],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable, **{k: str(v) for k, v in env.items()}},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_gpu_check_without_a_gpu_installs_carried_wheels_and_says_what_it_skipped(
    tmp_path: Path,
) -> None:
    """gpu_check.sh with no usable GPU: the wheels it was given (one whole, one split into parts)
    are installed ahead of the interpreter's packages, the environment report is JSON, the CPU
    checks of the CUDA logic pass, and it exits 2 naming what it could not check."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _make_wheel(wheels, "probe_whole")
    split = _make_wheel(tmp_path, "probe_split").read_bytes()
    name = "probe_split-0.1-py3-none-any.whl"
    for i, suffix in enumerate(("aa", "ab", "ac")):
        third = len(split) // 3 + 1
        (wheels / f"{name}.part-{suffix}").write_bytes(split[i * third : (i + 1) * third])
    out, site = tmp_path / "out", tmp_path / "site"
    result = run_gpu_check(
        CUDA_VISIBLE_DEVICES="", GPU_CHECK_OUT=out, GPU_CHECK_WHEELS=wheels, GPU_CHECK_SITE=site
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no GPU: torch cannot use CUDA here" in result.stdout
    assert (
        "not checked: CUDA tests, the CUDA-graph shape test, the CUDA bench table" in result.stdout
    )
    assert (
        f"installed into {site}: probe_split-0.1-py3-none-any.whl probe_whole-0.1" in result.stdout
    )
    assert (site / "probe_split" / "__init__.py").read_text() == "VALUE = 42\n"
    assert (site / "probe_whole" / "__init__.py").is_file()
    report = json.loads((out / "environment.json").read_text())
    assert report["torch_cuda_problem"] and report["onnxruntime"]
    # this interpreter was installed from pyproject.toml, so nothing is below its floors
    assert report["below_tested_floors"] == ([] if sys.version_info >= (3, 11) else None)
    assert "no GPU" in (out / "gpu-check.log").read_text()


def test_gpu_check_refuses_a_wheel_folder_without_wheels(tmp_path: Path) -> None:
    result = run_gpu_check(GPU_CHECK_OUT=tmp_path / "out", GPU_CHECK_WHEELS=tmp_path)
    assert result.returncode == 3
    assert f"GPU_CHECK_WHEELS={tmp_path} holds no wheel" in result.stdout


def test_graph_ab(small_model: tuple[Path, Path], tmp_path: Path) -> None:
    """The same weights exported twice (legacy and dynamo) agree and are timed against each other;
    a file of other weights is refused."""
    import torch

    from lstm_export.checkpoint import make_checkpoint, save_checkpoint
    from lstm_export.config import ModelConfig
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.model import build_model

    checkpoint, legacy = small_model
    dynamo = export_onnx(checkpoint, tmp_path / "dynamo.onnx", validate=False).path
    args = ["--batch-sizes", "1,3", "--seconds", 0.02, "--repeats", 1, "--threads", 1]
    out = ok(run_script("graph_ab.py", legacy, dynamo, "--variant", "onnxruntime-int8", *args))
    lines = out.splitlines()
    assert (
        lines[0]
        == f"{'batch':>5} {'A p50 ms':>10} {'B p50 ms':>10} {'B / A':>6} {'max |diff|':>11}"
    )
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == ["1", "3"]
    for row in rows:
        a, b, ratio, diff = map(float, row[1:])
        assert a > 0 and b > 0 and ratio == pytest.approx(b / a, rel=0.05) and diff <= 1e-5
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    save_checkpoint(make_checkpoint(build_model(ModelConfig(hidden_size=16, num_layers=1))), other)
    foreign = export_onnx(other, legacy=True, validate=False).path
    refused = run_script("graph_ab.py", legacy, foreign, *args)
    assert refused.returncode == 1 and "error: the files disagree at batch 1" in refused.stderr


def test_readme_outputs(tmp_path: Path) -> None:
    """readme_outputs.py --check on a one-block README finds the stale output (exit 1)."""
    readme = tmp_path / "README.md"
    readme.write_text("```bash\necho hello\n```\n\n<!-- output: -->\n```text\nstale\n```\n")
    result = run_script(
        "readme_outputs.py", "--check", "--readme", readme, "--workdir", tmp_path, "--skip-figures"
    )
    assert result.returncode == 1 and "+hello" in result.stdout, result.stdout + result.stderr


def test_serve_load(small_model: tuple[Path, Path], tmp_path: Path) -> None:
    """serve_load.py on a small model: every cell's answers match the in-process ones."""
    out = tmp_path / "load.json"
    args = ["--model", small_model[1], "--requests", "8", "--warmup", "1", "--concurrency", "1,2"]
    ok(run_script("serve_load.py", *args, "--json", out, timeout=300))
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4 and all(r["answers_match"] for r in rows)
