"""The CLI through typer's CliRunner (and a subprocess): help, version, data, train, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _cli_helpers import one_line_error
from lstm_export import __version__
from lstm_export.cli import app

runner = CliRunner()


def test_help_and_version() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("data", "train"):
        assert command in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_bare_command_prints_help_and_exits_0() -> None:
    result = runner.invoke(app, [])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and "data" in result.output
    assert "error" not in result.output.lower()


def _run_module(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "lstm_export", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_python_dash_m_bare_prints_help_and_exits_0() -> None:
    proc = _run_module()
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout and "train" in proc.stdout
    assert "error" not in (proc.stdout + proc.stderr).lower()


def test_python_dash_m_version_and_one_line_error() -> None:
    proc = _run_module("--version")
    assert proc.returncode == 0 and __version__ in proc.stdout
    proc = _run_module("--bogus")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--bogus" in lines[0]


def test_data_verifies_folder(mnist_dir: Path) -> None:
    result = runner.invoke(app, ["data", "--data-dir", str(mnist_dir)])
    assert result.exit_code == 0, result.output
    assert str(mnist_dir.resolve()) in result.output


def test_data_json(mnist_dir: Path) -> None:
    from lstm_export.data.files import MD5

    result = runner.invoke(app, ["data", "--data-dir", str(mnist_dir), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["folder"] == str(mnist_dir.resolve())
    assert payload["source"] == "--data-dir" and payload["fetched"] is False
    assert payload["verified"] is True
    files = {f["name"]: f for f in payload["files"]}
    assert set(files) == set(MD5)
    for name, entry in files.items():
        assert entry["md5"] == MD5[name] and entry["md5_ok"] is True
        assert entry["size"] == Path(entry["path"]).stat().st_size > 0


def _cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("LSTM_EXPORT_DATA_DIR", raising=False)
    return tmp_path / "xdg" / "lstm-export" / "mnist"


def test_data_fetches_a_missing_cache_and_says_so(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lstm_export.data import fetch
    from lstm_export.data.files import MD5, find_file

    cache = _cache_env(tmp_path, monkeypatch)

    def fake_fetch(directory: Path) -> None:  # the real one downloads; copy the verified files
        directory.mkdir(parents=True)
        for name in MD5:
            source = find_file(mnist_dir, name)
            assert source is not None
            shutil.copy(source, directory / source.name)

    monkeypatch.setattr(fetch, "fetch_into", fake_fetch)
    result = runner.invoke(app, ["data", "--json"])
    assert result.exit_code == 0, result.output
    assert f"MNIST not found locally; fetching into {cache} ..." in result.stderr
    payload = json.loads(result.stdout)
    assert payload["fetched"] is True and payload["source"] == "cache"
    assert payload["folder"] == str(cache.resolve()) and payload["verified"] is True
    # Now it is there: verified, not fetched again.
    result = runner.invoke(app, ["data", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fetched"] is False and "fetching" not in result.stderr


def test_data_corrupt_cache_is_one_line_with_the_cli_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _cache_env(tmp_path, monkeypatch)
    cache.mkdir(parents=True)
    (cache / "train-images-idx3-ubyte").write_bytes(b"")
    line = one_line_error(runner.invoke(app, ["data", "--json"]))
    assert "missing" in line and "lstm-export data --force" in line


def test_data_missing_folder_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(runner.invoke(app, ["data", "--data-dir", str(tmp_path)]))
    assert "missing train-images-idx3-ubyte" in line


def test_train_cli_quick_run(mnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--epochs", "1", "--subset", "1000", "--test-subset", "300"]
    args += ["--hidden-size", "32", "--data-dir", str(mnist_dir), "--out", str(out), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "model.pt").is_file() and (out / "metrics.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_examples"] == 1000 and metrics["test_examples"] == 300


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--epochs", "abc"], "--epochs"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--lr", "-1"], "--lr"),
        (["train", "--preset", "fastest"], "--preset"),
        (["train", "--bogus"], "--bogus"),
    ],
)
def test_nonsense_flags_are_one_line(args: list[str], needle: str) -> None:
    assert needle in one_line_error(runner.invoke(app, args))


def test_missing_data_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["train", "--data-dir", str(tmp_path / "x"), "--out", str(tmp_path)]
    )
    assert "does not exist" in one_line_error(result)


def test_unwritable_out_is_one_line(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # permission bits do not stop root; /proc takes no new files
        locked = Path("/proc/self")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
    assert "not writable" in one_line_error(runner.invoke(app, ["train", "--out", str(locked)]))


def test_out_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["train", "--out", str(blocker / "run")])
    assert "cannot create output folder" in one_line_error(result)
