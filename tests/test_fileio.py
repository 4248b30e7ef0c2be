"""The one atomic write path: synced before and after the rename, and no temporary file that
outlives its process (a SIGKILLed writer's file is removed by the next write of the target)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

_WRITE_AND_HANG = """
import sys, time
from pathlib import Path
from lstm_export.fileio import atomic_path
with atomic_path(Path(sys.argv[1])) as tmp:
    tmp.write_bytes(b"half")
    print(tmp.name, flush=True)
    time.sleep(60)
"""


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """SIGKILL cannot be caught: the temporary file stays until the target is written again."""
    from lstm_export.fileio import write_text_atomic

    target = tmp_path / "model.onnx"
    target.write_text("previous")
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITE_AND_HANG, str(target)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        left = child.stdout.readline().strip()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert left.startswith(".model.onnx.") and f"-{child.pid}." in left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([left, "model.onnx"])
    (tmp_path / ".model.onnx.tmp").write_text("not ours")  # not the writer's pattern: kept
    write_text_atomic(target, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.onnx.tmp", "model.onnx"]
    assert target.read_text() == "new"


def test_a_running_writers_temporary_file_is_left_alone(tmp_path: Path) -> None:
    from lstm_export.fileio import atomic_path, remove_stale_temporaries

    target = tmp_path / "rows.csv"
    with atomic_path(target) as tmp:  # this process: alive
        tmp.write_text("x")
        assert remove_stale_temporaries(target) == [] and tmp.exists()
    assert target.read_text() == "x" and [p.name for p in tmp_path.iterdir()] == ["rows.csv"]


@pytest.mark.parametrize("unnamed", [True, False])
def test_the_file_is_synced_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unnamed: bool
) -> None:
    from lstm_export import fileio

    if not unnamed:
        monkeypatch.setattr(fileio, "_unnamed_file", lambda directory: None)
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    with fileio.atomic_open(tmp_path / "out.csv") as f:
        f.write("a,b\n")
    assert events == ["fsync file", "rename", "fsync folder"]
    assert (tmp_path / "out.csv").read_text() == "a,b\n"
