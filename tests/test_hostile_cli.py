"""The commands against text, signals and flags from outside (issue 18): what reaches the terminal
is text, a stopped command leaves no process and no folder behind, absurd flags are one line."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from _cli_helpers import one_line_error
from lstm_export.cli import app

runner = CliRunner()
CLI = "from lstm_export.cli import main; main()"
#: names that rich would read as markup (or choke on), and an escape sequence (clear the screen)
HOSTILE = ["model[v2]", "[red]x[/]", "a[/b]", "esc\x1b[2J"]


def run(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def shown(name: str) -> str:
    """How ``name`` must appear: as it is, control characters as ``\\xNN``."""
    return name.replace("\x1b", "\\x1b")


# -- text from outside is text ---------------------------------------------------------------------
@pytest.mark.parametrize("name", HOSTILE)
def test_an_error_line_quotes_paths_as_they_are(name: str, tmp_path: Path) -> None:
    line = one_line_error(run("inspect", tmp_path / f"{name}.onnx"))
    assert f"{shown(name)}.onnx" in line and "\x1b" not in line
    line = one_line_error(run("bench", tmp_path / name))
    assert shown(name) in line and "\x1b" not in line


def test_an_install_hint_keeps_its_brackets(monkeypatch: pytest.MonkeyPatch) -> None:
    from lstm_export.errors import ModelLoadError
    from lstm_export.export import inspect_model

    def refuse(*_: object) -> None:
        raise ModelLoadError("needs Ray: pip install 'lstm-export[ray]'")

    monkeypatch.setattr(inspect_model, "inspect_model", refuse)
    assert one_line_error(run("inspect", "m.onnx")).endswith("pip install 'lstm-export[ray]'")


def test_data_prints_the_folder_as_it_is(mnist_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mnist[v2]\x1b[2J"
    folder.mkdir()
    for file in mnist_dir.iterdir():
        (folder / file.name).symlink_to(file.resolve())
    result = run("data", "--data-dir", folder)
    assert result.exit_code == 0, result.output
    assert shown(str(folder.resolve())) in result.stdout and "\x1b" not in result.output


def test_inspect_escapes_metadata(make_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    """A model's metadata cannot clear the screen or set the window title."""
    import onnx

    from lstm_export.export.to_onnx import export_onnx

    path = export_onnx(
        make_checkpoint(hidden_size=4), tmp_path / "m.onnx", legacy=True, opset=17, validate=False
    ).path
    model = onnx.load(path)
    entry = model.metadata_props.add()
    entry.key, entry.value = "note[v2]", "\x1b[2J\x1b]0;owned\x07[red]x[/]"
    onnx.save(model, path)
    result = run("inspect", path)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "note[v2]: \\x1b[2J\\x1b]0;owned\\x07[red]x[/]" in result.stdout


# -- train's flags ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, needle",
    [
        (["--hidden-size", "1000000"], "--hidden-size"),
        (["--num-layers", "10000000"], "--num-layers"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**32)], "--seed"),
        (["--lr", "inf"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--weight-decay", "inf"], "weight_decay"),
        (["--clip-grad-norm", "nan"], "--clip-grad-norm"),
        (["--threads", "0"], "--threads"),
    ],
)
def test_train_refuses_absurd_flags_in_one_line(
    args: list[str], needle: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"  # no MNIST there: a flag let through fails on the data, never trains
    result = run("train", *args, "--data-dir", tmp_path / "no-mnist", "--out", out)
    assert needle in one_line_error(result)
    assert not out.exists()


def test_train_caps_threads_at_the_cores_and_says_so(tmp_path: Path) -> None:
    result = run("train", "--threads", "100000", "--data-dir", tmp_path / "nope", "--out", tmp_path)
    assert result.exit_code == 1
    cores = len(os.sched_getaffinity(0))
    assert f"note: --threads 100000 is more than the {cores} core" in result.output
    assert f"here; using {cores}" in result.output


def test_train_output_reads_well(mnist_dir: Path, tmp_path: Path) -> None:
    """A run folder named with brackets is printed as it is; one test image is "1 test image"."""
    out = tmp_path / "run[v2]"
    args = ["train", "--epochs", "1", "--subset", "200", "--test-subset", "1", "--hidden-size", "8"]
    result = run(*args, "--data-dir", mnist_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"checkpoint: {out / 'model.pt'}" in result.stdout
    assert "(1 test image) in" in result.stderr


# -- signals ---------------------------------------------------------------------------------------
def _children(pid: int, marker: str = "") -> set[int]:
    """Processes whose parent is ``pid`` and whose command line holds ``marker`` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == pid and marker in cmdline:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(args: list[object]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", CLI, *(str(a) for a in args)]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


def _wait_for(condition: Callable[[], Any], proc: subprocess.Popen[bytes], what: str) -> Any:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"ended before {what}: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no {what} within 120 s")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_bench_stopped_leaves_no_measuring_process(
    sig: str, make_checkpoint: Callable[..., Path], mnist_dir: Path
) -> None:
    """SIGTERM: one line, exit 143, the child killed; SIGKILL: the kernel kills the child."""
    ckpt = make_checkpoint(hidden_size=8)
    proc = _start(
        ["bench", ckpt, "-b", "eager", "--batch-sizes", "1", "--seconds", "60", "--rounds", "1",
         "--parity-images", "100", "--data-dir", mnist_dir]
    )  # fmt: skip
    spawned: set[int] = set()  # the check's process, then the measuring one

    def measuring() -> set[int]:
        spawned.update(_children(proc.pid, "spawn_main"))
        return {c for c in spawned if _alive(c)} if len(spawned) >= 2 else set()

    try:
        children = _wait_for(measuring, proc, "the measuring process")
        time.sleep(1.0)
        proc.send_signal(getattr(signal, sig))
        _, stderr = proc.communicate(timeout=60)
        deadline = time.monotonic() + 20
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [c for c in children if _alive(c)], "a child outlived the bench"
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group: an orphaned child too
            os.killpg(proc.pid, signal.SIGKILL)
    if sig == "SIGTERM":
        lines = stderr.decode().strip().splitlines()
        assert proc.returncode == 128 + signal.SIGTERM, stderr.decode()
        assert lines[-1] == "error: terminated by SIGTERM" and "Traceback" not in stderr.decode()


def test_train_stopped_by_sigterm_leaves_no_folder(mnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "run"
    proc = _start(
        ["train", "--epochs", "50", "--hidden-size", "8", "--data-dir", mnist_dir, "--out", out]
    )
    try:
        _wait_for(out.exists, proc, "the run folder")
        time.sleep(3.0)  # training has started
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, stderr.decode()
    assert stderr.decode().strip().splitlines()[-1] == "error: terminated by SIGTERM"
    assert sorted(tmp_path.iterdir()) == []  # neither run/ nor the new/ made for it


# -- progress and the bench's figures --------------------------------------------------------------
def test_training_progress_shows_epoch_batch_loss_and_the_whole_run() -> None:
    from rich.progress import Progress

    from lstm_export.train.cli import follow_training

    progress = Progress()
    task = progress.add_task("training", total=None)
    on_step, _ = follow_training(progress, task, epochs=3)
    on_step(1, 4, 10, 0.25)
    shown_task = progress.tasks[0]
    assert shown_task.total == 30 and shown_task.completed == 15  # 10 + 5 of 3 x 10 batches
    assert shown_task.description == "epoch 2/3, batch 5/10, loss 0.2500"


def test_bench_progress_counts_every_round(
    make_checkpoint: Callable[..., Path], mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bar's total is every backend in every round from the start (so the time left means
    something), and its text says which round."""
    from lstm_export.bench import run as run_module
    from lstm_export.bench.measure import Measurement

    def fake_in_child(work: Any, job: Any, name: str, report: Any, measured: Any = None) -> Any:
        if work is not run_module.measure:
            return None  # the check passes
        report("batch 1")
        times = {b: np.full(5, 0.001) for b in job.batch_sizes}
        return Measurement({"backend": job.variant.name}, np.zeros((100, 10)), times, times)

    monkeypatch.setattr(run_module, "in_child", fake_in_child)
    monkeypatch.setattr(run_module, "machine_info", lambda device: {})
    seen: list[tuple[str, int, int]] = []
    settings = run_module.BenchSettings(
        backends=["torchscript"], batch_sizes=(1,), rounds=3, parity_images=100, data_dir=mnist_dir
    )
    plan = run_module.plan_bench(make_checkpoint(hidden_size=8), settings)
    assert [v.name for v in plan.variants] == ["eager", "torchscript"]
    files = {v.artifact: plan.checkpoint for v in plan.variants}
    monkeypatch.setattr(run_module, "ensure_artifacts", lambda *a, **k: files)
    run_module.run_bench(plan, on_progress=lambda *step: seen.append(step))
    measuring = [s for s in seen if s[0].startswith("round")]
    assert measuring[0] == ("round 1, eager: batch 1", 0, 6)  # 2 backends x 3 rounds
    assert ("round 3, torchscript: batch 1", 5, 6) in measuring


def test_every_batch_size_is_warmed_up_before_any_is_timed(
    make_checkpoint: Callable[..., Path], mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first figure of a fresh process is not its cold start (480 ms at batch 1 once)."""
    from lstm_export.bench.measure import MeasureJob, measure
    from lstm_export.bench.variants import VARIANTS
    from lstm_export.infer import registry

    calls: list[int] = []
    real = registry.make_runner

    def recording(*args: Any, **kwargs: Any) -> Any:
        runner = real(*args, **kwargs)
        run_prepared = runner.run_prepared

        def counted(x: Any) -> Any:
            calls.append(len(x))
            return run_prepared(x)

        runner.run_prepared = counted  # type: ignore[method-assign]
        return runner

    monkeypatch.setattr(registry, "make_runner", recording)
    job = MeasureJob(
        variant=VARIANTS[0], path=make_checkpoint(hidden_size=8), device="cpu", threads=1,
        data_dir=mnist_dir, parity_images=100, parity=False, batch_sizes=(1, 8), warmup=2,
        iterations=3, seconds=None,
    )  # fmt: skip
    measure(job)
    assert calls.index(8) < len(calls) - 1 - calls[::-1].index(1)  # batch 8 ran before 1 is timed
    assert calls.count(1) >= 2 + 2 + 3  # the warm-up round, time_runner's warm-up, timed calls


def test_the_fetch_warning_says_why_torchvision_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's message starts "Error downloading NAME:" and names the cause last."""
    import torchvision.datasets

    from lstm_export.data.fetch import fetch_torchvision
    from lstm_export.errors import DataError

    def offline(*_: object, **__: object) -> None:
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz:\nTried https://a/, got:\n"
            "<urlopen error [Errno -3] Temporary failure in name resolution>\n"
        )

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError) as info:
        fetch_torchvision(Path("/nonexistent"))
    message = str(info.value)
    assert not message.endswith(":") and "\n" not in message
    assert message.endswith("gz: <urlopen error [Errno -3] Temporary failure in name resolution>")


def test_sample_folder_has_a_normal_folder_mode(tmp_path: Path) -> None:
    from lstm_export.pipeline.samples import write_sample_folder

    images, labels = np.zeros((3, 28, 28), np.uint8), np.array([0, 1, 1])
    umask = os.umask(0o022)
    try:
        folder = write_sample_folder(images, labels, tmp_path / "samples", count=3)
    finally:
        os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o755
    assert (folder / "1").stat().st_mode & 0o777 == 0o755
