"""Atomic output files: write to a temporary name in the target folder, then rename."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lstm_export.errors import OutputError


def ensure_writable_dir(directory: Path) -> Path:
    """Create ``directory`` if needed and prove that files can be created in it.

    Writability is probed with a real temporary file: permission bits say nothing for root, and
    pseudo file systems (``/proc``) accept no new files at all.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {directory}: {exc.strerror}") from exc
    if not directory.is_dir():
        raise OutputError(f"output path {directory} exists and is not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".probe.", dir=directory)
    except OSError as exc:
        raise OutputError(f"output folder {directory} is not writable: {exc.strerror}") from exc
    os.close(fd)
    os.unlink(name)
    return directory


def check_writable_file(target: Path) -> Path:
    """Fail early, before any slow step, if ``target`` cannot be written as a file."""
    target = Path(target)
    if target.is_dir():
        raise OutputError(f"output path {target} is a folder, expected a file")
    ensure_writable_dir(target.parent if str(target.parent) else Path("."))
    return target


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left untouched; OS errors
    (disk full, permissions) become :class:`OutputError`.
    """
    target = check_writable_file(Path(target))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
