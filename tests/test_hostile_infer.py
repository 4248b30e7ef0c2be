"""Issue 18 at ``lstm-export infer``: a folder or a model from someone else, and a new user's
rough edges. Each case failed on the code before it: links walked out of the folder, NaN logits
taken as class 0, confusion tables that never finished, folders left by a failed run, text from
outside printed raw, a killed raylet ending the run without a word."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _cli_helpers import one_line_error
from _infer_helpers import png_bytes
from lstm_export.cli import app


@pytest.fixture
def model(make_checkpoint: Callable[..., Path]) -> Path:
    """A tiny untrained checkpoint (eager backend)."""
    return make_checkpoint(hidden_size=8, num_layers=1)


def _digits(folder: Path, *names: str) -> Path:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png_bytes(np.full((28, 28), 40, np.uint8)))
    return folder


def _run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``lstm-export ARGS`` in a subprocess, as a user runs it (stdout and stderr apart)."""
    full = {**os.environ, "COLUMNS": "200", **(env or {})}
    cmd = [sys.executable, "-m", "lstm_export", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=full)


# -- the folder walk stays in the folder -----------------------------------------------------------
def test_a_link_to_the_root_is_never_walked(model: Path, tmp_path: Path) -> None:
    """A link to ``/`` inside FOLDER: no row from outside, the link reported, quickly; a file
    link out of the folder is an error row and the file is never read."""
    folder = _digits(tmp_path / "digits", "a.png", "sub/b.png")
    (folder / "root").symlink_to("/", target_is_directory=True)
    secret = _digits(tmp_path / "outside", "secret.png") / "secret.png"
    (folder / "stolen.png").symlink_to(secret)
    result = _run("infer", model, folder, "--no-progress")
    assert result.returncode == 0, result.stderr
    rows = {r["path"]: r for r in csv.DictReader(io.StringIO(result.stdout))}
    assert set(rows) == {"a.png", "sub/b.png", "stolen.png"}
    assert rows["stolen.png"]["prediction"] == ""
    assert rows["stolen.png"]["error"] == (
        f"symbolic link to {secret}, outside the folder: not followed"
    )
    assert "folder not read root: symbolic link to /, outside the folder: not followed" in (
        result.stderr
    )
    followed = _run("infer", model, folder / "sub", "--no-progress", "--follow-links")
    assert followed.returncode == 0 and "b.png" in followed.stdout


# -- a hostile model -------------------------------------------------------------------------------
def test_non_finite_logits_are_error_rows_and_json_stays_strict(
    make_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    """A model whose logits are NaN: no image is "classified" as class 0; every row says why, the
    run exits 1, and the JSON Lines and summary parse with a strict parser."""
    import torch

    path = make_checkpoint(hidden_size=8, num_layers=1)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["fc.bias"][3] = float("nan")
    torch.save(ckpt, path)
    folder = _digits(tmp_path / "digits", "a.png", "b.png")
    out, summary = tmp_path / "rows.jsonl", tmp_path / "summary.json"
    args = ["infer", path, folder, "-o", out, "--summary-json", summary, "--probabilities"]
    result = CliRunner().invoke(app, [*map(str, args), "--no-progress"])
    assert "none of the 2 image files could be classified" in one_line_error_tail(result)

    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))

    records = [strict(line) for line in out.read_text().splitlines()]
    assert [r["error"] for r in records] == ["the model gave non-finite logits"] * 2  # type: ignore[index]
    assert all(r["prediction"] is None and r["confidence"] is None for r in records)  # type: ignore[index]
    assert strict(summary.read_text())["classified"] == 0  # type: ignore[index]


def one_line_error_tail(result: object) -> str:
    """The ``error:`` line of a run that printed its summary first (exit 1, no traceback)."""
    out = result.output  # type: ignore[attr-defined]
    assert result.exit_code == 1 and "Traceback" not in out, out  # type: ignore[attr-defined]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    return errors[0]


def test_scores_flag_non_finite_rows_and_keep_big_class_indices() -> None:
    from lstm_export.infer.rows import NON_FINITE, score

    logits = np.zeros((3, 40_000), np.float32)
    logits[0, 39_999] = 5.0
    logits[1, 7] = np.inf
    logits[2, 0] = np.nan
    s = score(logits, [None, None, None], 40_000, keep=False)
    assert s.predicted.dtype == np.int64 and s.predicted.tolist() == [39_999, -1, -1]
    assert s.errors == [None, NON_FINITE, NON_FINITE]
    assert np.isnan(s.confidence[1:]).all()


def test_probability_columns_never_repeat() -> None:
    from lstm_export.errors import OutputError
    from lstm_export.infer.writers import columns

    assert columns(labelled=False, class_names=["a", "b"])[-2:] == ["p_a", "p_b"]
    with pytest.raises(OutputError, match="class names repeat"):
        columns(labelled=True, class_names=["cat", "dog", "cat"])


# -- many classes ----------------------------------------------------------------------------------
def test_a_hundred_thousand_classes_are_summarised_not_tabled() -> None:
    """10^5 classes: counted sparsely (a dense matrix would be 80 GB), summarised in a few lines:
    the per-class recall and the most confused pairs."""
    from rich.console import Console

    from lstm_export.infer.report import print_summary
    from lstm_export.infer.rows import Confusion, Summary

    n = 100_000
    names = [f"class {i}" for i in range(n)]
    rng = np.random.default_rng(0)
    truth = rng.integers(0, n, 200_000)
    guess = np.where(rng.random(200_000) < 0.7, truth, rng.integers(0, n, 200_000))
    guess[:500] = 17  # one pair confused 500 times (or so)
    truth[:500] = 4
    confusion = Confusion(names)
    for start in range(0, len(truth), 4096):
        confusion.add(truth[start : start + 4096], guess[start : start + 4096])
    assert confusion.total == 200_000
    assert confusion.correct == int((truth == guess).sum())
    assert confusion.top_mistakes(1)[0][:2] == ("class 4", "class 17")
    summary = Summary("f", "m", "b", "cpu", names, None, confusion=confusion)
    summary.images = summary.classified = 200_000
    summary.plan = type("P", (), {"describe": lambda self: "plan"})()
    out = io.StringIO()
    print_summary(summary, [], Console(file=out, width=100), Console(file=io.StringIO()))
    text = out.getvalue()
    assert "100,000 classes (too many for a table)" in text
    assert "class 4" in text and "class 17" in text and len(text.splitlines()) < 25
    data = summary.to_dict()
    assert data["confusion_matrix"] is None
    assert json.loads(json.dumps(data))["top_confusions"][0][:2] == ["class 4", "class 17"]


# -- outputs ---------------------------------------------------------------------------------------
def test_a_failed_run_leaves_no_folder_behind(tmp_path: Path) -> None:
    folder = _digits(tmp_path / "digits", "a.png")
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not a model")
    out = tmp_path / "a" / "b" / "rows.csv"
    result = CliRunner().invoke(app, ["infer", str(broken), str(folder), "-o", str(out)])
    one_line_error(result)
    assert not (tmp_path / "a").exists()


# -- a new user ------------------------------------------------------------------------------------
def test_a_run_folder_is_a_model(model: Path, tmp_path: Path) -> None:
    """``infer RUN_FOLDER`` as ``inspect``, ``shapes`` and ``bench`` take one (its model.pt)."""
    folder = _digits(tmp_path / "digits", "a.png")
    result = CliRunner().invoke(app, ["infer", str(model.parent), str(folder), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"model    {model}: eager" in result.output
    assert "classified 1 of 1 image in" in result.output  # and no "1 images"
    assert "1 image, 0 other files skipped" in result.output


def test_help_keeps_every_word_at_80_columns() -> None:
    result = _run("infer", "-h", env={"COLUMNS": "80"})
    assert result.returncode == 0
    assert "…" not in result.stdout, result.stdout
    assert "lstm-export[ray]" in result.stdout.replace("│", "").replace("\n", "").replace(" ", "")


def test_text_from_outside_is_printed_as_text(model: Path, tmp_path: Path) -> None:
    """A folder named with markup and an escape sequence, a file name with a window-title
    sequence, class names with both: shown escaped, never interpreted."""
    from rich.console import Console

    from lstm_export.infer.report import confusion_table
    from lstm_export.infer.rows import Confusion

    folder = _digits(tmp_path / "a[red]b\x1b[2J", "ok.png")
    (folder / "t\x1b]0;title\x07.png").write_bytes(b"")
    result = _run("infer", model, folder, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "a[red]b\\x1b[2J: 2 images" in result.stderr
    assert "error t\\x1b]0;title\\x07.png: empty file (0 bytes)" in result.stderr
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=True).print(
        confusion_table(Confusion(["[bold]x", "y\x1b]0;t\x07"]))
    )
    assert "[bold]x" in out.getvalue() and "\x1b]0;t" not in out.getvalue()


# -- Ray: a killed raylet --------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("stop", ["raylet killed", "SIGTERM"])
def test_a_ray_run_stopped_midway_is_one_error_line(stop: str, model: Path, tmp_path: Path) -> None:
    """The raylet of the local Ray killed mid-run (exit 1), or SIGTERM to the command (passed on
    to the Ray run; exit 143): one error line, nothing on stdout (Ray printed the raylet's state
    dump there), no output file, no Ray process left."""
    import signal
    import tempfile
    import time
    import uuid

    names = [f"{c}/{i:03d}.png" for c in range(10) for i in range(150)]
    folder = _digits(tmp_path / "digits", *names)
    tag = uuid.uuid4().hex
    env = {**os.environ, "LSTM_EXPORT_RAY_TEST": tag, "LSTM_EXPORT_RAY_CPUS": "2"}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="lxk-", dir="/tmp")
    cmd = [sys.executable, "-m", "lstm_export", "infer", str(model), str(folder), "--engine",
           "ray", "--actors", "1", "--batch-size", "4", "--no-progress", "-o", str(tmp_path / "r.csv")]  # fmt: skip
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def marked() -> dict[int, bytes]:
        found = {}
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                if f"LSTM_EXPORT_RAY_TEST={tag}\0".encode() in (entry / "environ").read_bytes():
                    found[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                continue
        return found

    try:
        deadline = time.monotonic() + 240
        while child.poll() is None and time.monotonic() < deadline:  # until an actor works
            if any(b"MapBatches" in cmd or b"Classifier" in cmd for cmd in marked().values()):
                break
            time.sleep(0.5)
        time.sleep(2)
        raylets = [pid for pid, cmd in marked().items() if b"raylet/raylet" in cmd]
        assert raylets and child.poll() is None
        if stop == "SIGTERM":
            os.kill(child.pid, signal.SIGTERM)
        else:
            os.kill(raylets[0], signal.SIGKILL)
        stdout, stderr = child.communicate(timeout=240)
    finally:
        child.kill()
    lines = stderr.decode().strip().splitlines()
    assert stdout == b"", stdout[-2000:]
    assert not (tmp_path / "r.csv").exists()
    if stop == "SIGTERM":
        assert child.returncode == 128 + signal.SIGTERM, stderr
        assert lines[-1] == "error: terminated by SIGTERM", lines
    else:
        assert child.returncode == 1, stderr
        # Ray either ends the driver (the parent reports it) or raises that the actor died
        assert lines[-1].startswith(
            ("error: the Ray run ended abruptly", "error: the Ray job failed: The actor died")
        ), lines
    assert sum(line.startswith("error:") for line in lines) == 1
    assert "Traceback" not in stderr.decode()
    deadline = time.monotonic() + 30
    while marked() and time.monotonic() < deadline:
        time.sleep(1)
    left = marked()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, left
