"""Files in and out, safely.

Out: an output is written under a temporary name beside its target, synced to disk, renamed onto
the target and the folder synced (:func:`atomic_path`), so a failed command leaves the complete
file or the previous one. An exception, Ctrl-C, SIGTERM or SIGHUP (turned into
:class:`Terminated` while an output is open) removes the temporary file. SIGKILL cannot be caught:
a temporary name says which process of which machine wrote it (``.NAME.HOST-PID.RANDOM.tmp``) and
the next write of the target removes those of processes gone; a streamed output
(:func:`atomic_open`) lives in an unnamed file (Linux ``O_TMPFILE``) until complete, so it leaves
nothing at all. A device, FIFO or socket is never replaced, and
:func:`check_outputs_against_inputs` refuses an output that is one of the command's inputs.

In: :func:`open_regular` opens regular files only, never blocking on a FIFO or opening a device;
:func:`read_regular_file` never reads past a size limit.
"""

from __future__ import annotations

import contextlib
import errno
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

#: temporary names keep at most this much of the target's name (a 255-byte target name plus a
#: prefix and a suffix would be too long for the file system)
_TMP_NAME_KEEP = 100
#: this machine, in temporary names (a folder shared between machines holds others' files)
_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"
#: signals that end a run and are turned into :class:`Terminated` while an output is open
_TERMINATING = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None
)
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


def _open_regular_fd(path: Path | str) -> tuple[int, os.stat_result]:
    """``(fd, fstat)`` of a regular file opened for reading (see :func:`open_regular`)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(st.st_mode)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    flags |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(st.st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def open_regular(path: Path | str) -> BinaryIO:
    """Open a regular file for reading (binary, unbuffered); never blocks, never opens a device.

    Checked with ``stat`` before the open (opening a device can have effects), opened with
    ``O_NONBLOCK`` (a FIFO swapped in cannot block) and checked again with ``fstat``. Raises
    :class:`NotRegularFileError` for anything but a regular file, else the usual ``OSError``.
    """
    fd, _ = _open_regular_fd(path)
    try:
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: Path | str, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, opened as :func:`open_regular`
    does; never reads more. Raises :class:`NotRegularFileError`, :class:`FileTooLargeError` (also
    when it grows past ``limit`` while read), :class:`FileChangedError` or another ``OSError``.
    """
    fd, st = _open_regular_fd(path)
    try:
        size = st.st_size
        if size > limit:
            raise FileTooLargeError(f"file too large: {size:,} bytes (limit {limit:,})")
        # One byte more than expected, so a file that grows is noticed; a size of 0 may be a
        # pseudo file system that does not know its sizes, so read it up to the limit.
        data = _read_up_to(fd, (size if size else limit) + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise FileTooLargeError(f"file too large: over {limit:,} bytes (it grew while read)")
    if size and len(data) != size:
        raise FileChangedError(
            f"file changed size while being read ({size:,} bytes when opened, {len(data):,} read)"
        )
    return data


def _read_up_to(fd: int, count: int) -> bytes:
    """Read until ``count`` bytes or the end of the file, whichever comes first."""
    chunks: list[bytes] = []
    left = count
    while left > 0:
        chunk = os.read(fd, min(left, _CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a regular file's bytes (read in chunks; a FIFO or device is refused)."""
    h = hashlib.new(algorithm)
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


# -- signals ---------------------------------------------------------------------------------------
class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived while an output was being written (see :func:`terminating`):
    a ``KeyboardInterrupt``, so what cleans up after Ctrl-C does so here too; a CLI exits with
    ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


_signals_lock = threading.Lock()
_signals_depth = 0
_signals_saved: dict[int, Any] = {}
_signals_fired = False
_last_signum: int | None = None


def _raise_terminated(signum: int, frame: object) -> None:
    global _signals_fired, _last_signum
    if _signals_fired:  # a second signal must not interrupt the clean-up of the first
        return
    _signals_fired = True
    _last_signum = signum
    raise Terminated(signum)


def terminated_by() -> int | None:
    """The signal that raised :class:`Terminated` in this process, or None (typer exits 130 on
    any ``KeyboardInterrupt``; a shell expects ``128 + terminated_by()`` after SIGTERM)."""
    return _last_signum


@contextlib.contextmanager
def terminating() -> Iterator[None]:
    """While active, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread.

    So ``finally`` blocks and context managers (temporary files) run as they do for Ctrl-C, where
    these signals would otherwise end the process on the spot. Only signals still at their default
    action are taken over (an application's own handler, or an ignored SIGHUP under ``nohup``, is
    left alone), and they are given back on exit. Nests; does nothing outside the main thread.
    """
    global _signals_depth, _signals_fired
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with _signals_lock:
        if _signals_depth == 0:
            _signals_fired = False
            for signum in _TERMINATING:
                if signal.getsignal(signum) == signal.SIG_DFL:
                    _signals_saved[signum] = signal.signal(signum, _raise_terminated)
        _signals_depth += 1
    try:
        yield
    finally:
        with _signals_lock:
            _signals_depth -= 1
            if _signals_depth == 0:
                for signum, handler in _signals_saved.items():
                    signal.signal(signum, handler)
                _signals_saved.clear()


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


@contextlib.contextmanager
def new_output_dir(directory: Path) -> Iterator[Path]:
    """:func:`ensure_writable_dir`, and if the block then fails, the folder is removed again when
    this call created it and nothing was written into it (a failed run leaves no empty folder)."""
    created = not os.path.lexists(directory)
    ensure_writable_dir(directory)
    try:
        yield directory
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only succeeds while empty
        raise


def check_writable_file(target: Path) -> Path:
    """Fail early, before any slow step, if ``target`` cannot be written as a file: an existing
    target must be a regular file (a device, FIFO or socket would be replaced by the rename)."""
    target = Path(target)
    if target.is_dir():
        raise OutputError(f"output path {target} is a folder, expected a file")
    try:
        st = os.stat(target)
    except OSError:
        pass  # does not exist yet (or a broken link, which the rename replaces)
    else:
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(
                f"output path {target} is {file_kind(st.st_mode)}, not a regular file; "
                "write to a file"
            )
    ensure_writable_dir(target.parent if str(target.parent) else Path("."))
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
        for entry in os.scandir(target.parent if str(target.parent) else "."):
            found = pattern.fullmatch(entry.name)
            if found and not _alive(int(found[1])) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _temporary_name(target: Path) -> Path:
    """A fresh temporary name for ``target``, once the stale ones are gone."""
    remove_stale_temporaries(target)
    return target.parent / f"{_tmp_prefix(target)}{os.getpid()}.{secrets.token_hex(4)}.tmp"


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
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; sync and rename it onto ``target`` on success.

    On any exception, Ctrl-C, SIGTERM or SIGHUP the temporary file is removed and ``target`` is
    left untouched; OS errors (disk full, permissions) become :class:`OutputError`.
    """
    target = check_writable_file(Path(target))
    with terminating():
        tmp = _temporary_name(target)
        try:  # created with the umask's permissions, as the target would be
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except OSError as exc:
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
        try:
            yield tmp
            _publish(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def atomic_open(
    target: Path,
    mode: str = "w",
    *,
    encoding: str | None = None,
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """An open file (``mode`` ``"w"`` or ``"wb"``) that replaces ``target`` only when complete.

    Where the system allows (Linux ``O_TMPFILE``), the data goes into an unnamed file that is given
    a name only once it is complete, so nothing is left behind whatever ends the process, SIGKILL
    included; elsewhere :func:`atomic_path`. On any exception, Ctrl-C, SIGTERM or SIGHUP
    ``target`` is left untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes only ('w' or 'wb'), not {mode!r}")
    target = check_writable_file(Path(target))
    fd = _unnamed_file(target.parent)
    if fd is None:
        with atomic_path(target) as tmp, open(tmp, mode, encoding=encoding, newline=newline) as f:
            yield f
        return
    with terminating():
        try:
            with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
                yield f
                f.flush()
                _give_name(f.fileno(), target)
        except OSError as exc:
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc


def _unnamed_file(directory: Path) -> int | None:
    """An ``O_TMPFILE`` descriptor in ``directory`` that can later be linked, or None."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(directory, flag | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError:  # a file system without O_TMPFILE support
        return None


def _give_name(fd: int, target: Path) -> None:
    """Link the unnamed file ``fd`` under a temporary name, then publish that onto ``target``."""
    tmp = _temporary_name(target)
    try:
        os.link(f"/proc/self/fd/{fd}", tmp)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP):
            raise
        os.lseek(fd, 0, os.SEEK_SET)  # /proc not usable for linkat: copy the data instead
        with atomic_path(target) as copy, open(copy, "wb") as out:
            while chunk := os.read(fd, _CHUNK):
                out.write(chunk)
        return
    try:
        _publish(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


# -- outputs against inputs ------------------------------------------------------------------------
def check_outputs_against_inputs(
    outputs: Iterable[Path | str | None], inputs: Iterable[Path | str]
) -> None:
    """Before any work: every output (None skipped) can be written, and none would replace an
    input or another output. OutputError for an output that is a folder or not a regular file,
    lies where no file can be created, is given twice, or is the directory entry of an input (the
    rename would replace an image of the folder, or the model). Only existing outputs and inputs
    of the same name (case folded) are compared, so 100,000 inputs cost nothing.
    """
    wanted: list[Path] = []
    seen: dict[tuple[str, str], Path] = {}
    for out in outputs:
        if out is None:
            continue
        path = check_writable_file(Path(out))
        key = _entry(path)
        if key in seen:
            raise OutputError(f"{out} is given as two outputs ({seen[key]} and {out})")
        seen[key] = Path(out)
        if os.path.lexists(path):
            wanted.append(path)
    if not wanted:
        return
    by_name: dict[str, list[Path]] = {}
    for path in wanted:
        by_name.setdefault(path.name.casefold(), []).append(path)
    for item in inputs:
        name = os.path.basename(os.fspath(item)).casefold()
        for out in by_name.get(name, ()):
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
        folder_a, folder_b = (os.stat(os.path.dirname(os.path.abspath(p))) for p in (a, b))
        file_a, file_b = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    same_folder = (folder_a.st_dev, folder_a.st_ino) == (folder_b.st_dev, folder_b.st_ino)
    return same_folder and file_a.st_ino == file_b.st_ino
