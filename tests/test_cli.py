"""The CLI through typer's CliRunner: help, version, data, train, and one-line errors."""

from __future__ import annotations

import json
import os
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


def test_data_verifies_folder(mnist_dir: Path) -> None:
    result = runner.invoke(app, ["data", "--data-dir", str(mnist_dir)])
    assert result.exit_code == 0, result.output
    assert str(mnist_dir.resolve()) in result.output


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


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_is_one_line_as_user(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert "not writable" in one_line_error(runner.invoke(app, ["train", "--out", str(locked)]))


def test_out_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["train", "--out", str(blocker / "run")])
    assert "cannot create output folder" in one_line_error(result)
