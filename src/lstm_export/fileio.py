"""Files in and out, safely.

Out: an output is written beside its target under a temporary name that says which process of
which machine wrote it (``.NAME.HOST-PID.RANDOM.tmp``), synced, renamed onto the target and the
folder synced (:func:`atomic_path`). An exception, Ctrl-C, SIGTERM or SIGHUP removes the temporary
file; after SIGKILL the next write of the target removes it. A streamed output
(:func:`atomic_open`) stays an unnamed ``O_TMPFILE`` until complete, so it leaves nothing even
then. A device, FIFO or socket is never replaced; an output may not be one of the inputs.

In: :func:`open_regular` opens regular files only, never blocking on a FIFO or opening a device;
:func:`read_regular_file` never reads past a size limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import signal
import socket
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from lstm_export.errors import OutputError

#: temporary names keep at most this much of the target's name (255 bytes is the usual limit)
_TMP_NAME_KEEP = 100
#: this machine, in temporary names (a folder shared between machines holds others' files)
_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"
_CHUNK = 1 << 20


# -- reading ---------------------------------------------------------------------------------------
class NotRegularFileError(OSError):
    """The path is a FIFO, a device, a socket or a folder: only regular files are read."""


class FileTooLargeError(OSError):
    """The file is larger than the limit it is read with."""


class FileChangedError(OSError):
    """The file changed size while it was read (someone is still writing it)."""


_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


def file_kind(mode: int) -> str:
    """What an ``st_mode`` is, in words: ``"a FIFO (named pipe)"``, ``"a character device"``..."""
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def _not_regular(mode: int) -> NotRegularFileError:
    return NotRegularFileError(f"is {file_kind(mode)}, not a regular file")


def open_regular(path: Path | str) -> BinaryIO:
    """Open a regular file for reading (binary): ``stat`` before the open (opening a device can
    have effects), ``O_NONBLOCK`` (a FIFO swapped in cannot block), ``fstat`` after.
    :class:`NotRegularFileError` for anything but a regular file, else the usual ``OSError``."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise _not_regular(mode)
    f = os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC), "rb")
    try:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(mode)
        os.set_blocking(f.fileno(), True)
    except BaseException:
        f.close()
        raise
    return f


def read_regular_file(path: Path | str, limit: int) -> bytes:
    """The bytes of a regular file (:func:`open_regular`) of at most ``limit`` bytes, never read
    past it: :class:`FileTooLargeError` (also when it grows while read), :class:`FileChangedError`
    or what :func:`open_regular` raises."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise FileTooLargeError(f"file too large: {size:,} bytes (limit {limit:,})")
        # One byte more than expected, so a file that grows is noticed; a size of 0 may be a
        # pseudo file system that does not know its sizes, so read it up to the limit.
        chunks, left = [], (size or limit) + 1
        while left > 0 and (chunk := f.read(min(left, _CHUNK))):
            chunks.append(chunk)
            left -= len(chunk)
    data = b"".join(chunks)
    if len(data) > limit:
        raise FileTooLargeError(f"file too large: over {limit:,} bytes (it grew while read)")
    if size and len(data) != size:
        raise FileChangedError(
            f"file changed size while being read ({size:,} bytes when opened, {len(data):,} read)"
        )
    return data


def file_digest(path: Path) -> str:
    """SHA-256 of a regular file's bytes, in hex (read in chunks; a FIFO or device is refused)."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


# -- signals ---------------------------------------------------------------------------------------
class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived while an output was being written (see :func:`terminating`):
    a ``KeyboardInterrupt``, so what cleans up after Ctrl-C does so here too; a CLI exits with
    ``128 + signum``."""


_signals_fired = False
_last_signum: int | None = None


def _raise_terminated(signum: int, frame: object) -> None:
    global _signals_fired, _last_signum
    if _signals_fired:  # a second signal must not interrupt the clean-up of the first
        return
    _signals_fired = True
    _last_signum = signum
    raise Terminated(f"terminated by {signal.Signals(signum).name}")


def terminated_by() -> int | None:
    """The signal that raised :class:`Terminated` in this process, or None (typer exits 130 on
    any ``KeyboardInterrupt``; a shell expects ``128 + terminated_by()`` after SIGTERM)."""
    return _last_signum


@contextlib.contextmanager
def terminating() -> Iterator[None]:
    """While active, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread (elsewhere it
    does nothing). Only signals at their default action are taken over (not an application's
    handler, an enclosing ``terminating()``'s, ``nohup``'s ignored SIGHUP), given back on exit."""
    global _signals_fired
    taken: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) == signal.SIG_DFL:
                taken[signum] = signal.signal(signum, _raise_terminated)
    if taken:
        _signals_fired = False
    try:
        yield
    finally:
        for sig, handler in taken.items():
            signal.signal(sig, handler)


# -- writing ---------------------------------------------------------------------------------------
def ensure_writable_dir(directory: Path) -> Path:
    """Create ``directory`` if needed and prove with a real file that files can be created in it
    (permission bits say nothing for root; ``/proc`` accepts no new files at all)."""
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
    """Fail early, before any slow step, if ``target`` cannot be written as a file: an existing
    target must be a regular file (a device, FIFO or socket would be replaced by the rename)."""
    target = Path(target)
    if target.is_dir():
        raise OutputError(f"output path {target} is a folder, expected a file")
    with contextlib.suppress(OSError):  # absent (or a broken link, which the rename replaces)
        mode = os.stat(target).st_mode
        if not stat.S_ISREG(mode):
            raise OutputError(
                f"output path {target} is {file_kind(mode)}, not a regular file; write to a file"
            )
    ensure_writable_dir(target.parent)
    return target


def _tmp_prefix(target: Path) -> str:
    """``.NAME.HOST-``: how the temporary names of ``target`` written on this machine start."""
    return f".{target.name[:_TMP_NAME_KEEP]}.{_HOST}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # EPERM: it runs, as another user
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove (and return) the temporary files of ``target`` left behind by a process of this
    machine that no longer runs (SIGKILL, the OOM killer); only names of our own pattern."""
    pattern = re.compile(re.escape(_tmp_prefix(target)) + r"(\d+)\.[0-9a-f]{8}\.tmp")
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(target.parent):
            found = pattern.fullmatch(entry.name)
            if found and not _alive(int(found[1])) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _publish(tmp: Path, target: Path) -> None:
    """Sync ``tmp`` to disk, rename it onto ``target``, then sync the folder (the rename)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    with contextlib.suppress(OSError):  # some systems cannot open or sync a folder
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _writing(target: Path) -> Iterator[None]:
    """SIGTERM and SIGHUP raise (:func:`terminating`); an ``OSError`` becomes an OutputError."""
    with terminating():
        try:
            yield
        except OSError as exc:
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target``, renamed onto it on success and removed on any failure
    (see the module docstring); OS errors (disk full, permissions) become :class:`OutputError`."""
    target = check_writable_file(Path(target))
    with _writing(target):
        remove_stale_temporaries(target)
        tmp = target.parent / f"{_tmp_prefix(target)}{os.getpid()}.{secrets.token_hex(4)}.tmp"
        # created with the umask's permissions, as the target would be
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            yield tmp
            _publish(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)  # gone already once renamed


@contextlib.contextmanager
def atomic_open(
    target: Path, mode: str = "w", *, encoding: str | None = None, newline: str | None = None
) -> Iterator[IO[Any]]:
    """A file open for writing (``mode`` ``"w"`` or ``"wb"``) that replaces ``target`` only when
    complete: unnamed until then where the system allows (``O_TMPFILE``), else :func:`atomic_path`."""
    target = check_writable_file(Path(target))
    fd = _unnamed_file(target.parent)
    if fd is None:
        with atomic_path(target) as tmp, open(tmp, mode, encoding=encoding, newline=newline) as f:
            yield f
        return
    with _writing(target), os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
        yield f
        f.flush()
        with atomic_path(target) as tmp:  # the unnamed file takes the temporary name
            tmp.unlink()
            try:
                os.link(f"/proc/self/fd/{fd}", tmp)
            except OSError:  # /proc cannot link here: copy the data instead
                os.lseek(fd, 0, os.SEEK_SET)
                with open(tmp, "wb") as out:
                    while chunk := os.read(fd, _CHUNK):
                        out.write(chunk)


def _unnamed_file(directory: Path) -> int | None:
    """An ``O_TMPFILE`` descriptor in ``directory`` that can later be linked, or None."""
    if not hasattr(os, "O_TMPFILE") or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o666)
    except OSError:  # a file system without O_TMPFILE support
        return None


def write_text_atomic(target: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


# -- outputs against inputs ------------------------------------------------------------------------
def check_outputs_against_inputs(
    outputs: Iterable[Path | str | None], inputs: Iterable[Path | str]
) -> None:
    """Before any work: every output (None skipped) can be written (:func:`check_writable_file`),
    none is given twice or is the directory entry of an input (the rename would replace it). Only
    existing outputs and inputs of the same name (case folded) are compared: 100,000 inputs are
    cheap."""
    seen: dict[tuple[str, str], Path] = {}
    existing: dict[str, list[Path]] = {}
    for out in outputs:
        if out is None:
            continue
        path = check_writable_file(Path(out))
        if _entry(path) in seen:
            raise OutputError(f"{out} is given as two outputs ({seen[_entry(path)]} and {out})")
        seen[_entry(path)] = path
        if os.path.lexists(path):
            existing.setdefault(path.name.casefold(), []).append(path)
    for item in inputs if existing else ():
        for out in existing.get(os.path.basename(item).casefold(), ()):
            if _same_entry(out, Path(item)):
                raise OutputError(
                    f"output {out} is the input file {item}: refusing to overwrite an input"
                )


def _entry(path: Path) -> tuple[str, str]:
    """A directory entry's identity: its folder's real path and its own name."""
    absolute = os.path.abspath(path)
    return os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute)


def _same_entry(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same directory entry (what a rename onto ``a`` replaces)."""
    if _entry(a) == _entry(b):
        return True
    try:  # a case-insensitive file system: same folder, names equal but for case, same file
        folders = [os.stat(os.path.dirname(os.path.abspath(p))) for p in (a, b)]
        return os.path.samestat(*folders) and os.lstat(a).st_ino == os.lstat(b).st_ino
    except OSError:
        return False
