"""Files in and out, safely.

Out: every output is written to a temporary name in the target folder and renamed onto the target
only when complete (:func:`atomic_path`, :func:`atomic_open`), so a failed or interrupted command
leaves either the complete file or the previous one, and no temporary file:

- an exception, Ctrl-C (SIGINT), SIGTERM or SIGHUP removes the temporary file (while one is open,
  the main thread turns SIGTERM and SIGHUP into :class:`Terminated`, a ``KeyboardInterrupt``);
- :func:`atomic_open` writes into an unnamed file (Linux ``O_TMPFILE``) that only gets a name at
  the very end, so even SIGKILL or the OOM killer leaves nothing behind;
- an existing target that is not a regular file (a device such as ``/dev/null``, a FIFO, a socket)
  is refused instead of being replaced, and :func:`check_outputs_against_inputs` refuses an output
  that is one of the command's own inputs, before any work starts.

In: :func:`open_regular` opens regular files only (a FIFO, device or socket is refused without
ever blocking), and :func:`read_regular_file` never reads past a size limit.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import signal
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


def file_kind(mode: int) -> str:
    """What an ``st_mode`` is, in words: ``"a FIFO (named pipe)"``, ``"a character device"``..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


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

    Symbolic links are followed. The path is checked with ``stat`` before it is opened (opening a
    device can have effects of its own), opened with ``O_NONBLOCK`` (a FIFO swapped in meanwhile
    cannot block the open) and checked again with ``fstat`` on what was really opened. Raises
    :class:`NotRegularFileError` for anything but a regular file, and the usual ``OSError``
    (``FileNotFoundError``, ``PermissionError``...) otherwise.
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
    """The bytes of a regular file of at most ``limit`` bytes; never reads more than that.

    Opened as :func:`open_regular` does (``O_NONBLOCK`` changes nothing for a regular file).
    Raises :class:`NotRegularFileError` (FIFO, device, socket, folder), :class:`FileTooLargeError`
    (over ``limit``, also when it grows past it while being read), :class:`FileChangedError` (its
    size changed while it was read) or another ``OSError``.
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
    """SIGTERM or SIGHUP arrived while an output was being written (see :func:`terminating`).

    A ``KeyboardInterrupt`` so that everything which cleans up after Ctrl-C does so here too;
    ``signum`` says which signal it was (a CLI exits with ``128 + signum``).
    """

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
    """The signal that raised :class:`Terminated` in this process, or None.

    For a CLI whose framework turns every ``KeyboardInterrupt`` into exit code 130 (typer does):
    ``128 + terminated_by()`` is the exit code a shell expects after SIGTERM (143) or SIGHUP.
    """
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
    """Fail early, before any slow step, if ``target`` cannot be written as a file.

    An existing target must be a regular file (or a link to one): a device (``/dev/null``), FIFO
    or socket would be replaced by the rename, so it is refused.
    """
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
    return f".{target.name[:_TMP_NAME_KEEP]}."


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any exception, Ctrl-C, SIGTERM or SIGHUP the temporary file is removed and ``target`` is
    left untouched; OS errors (disk full, permissions) become :class:`OutputError`.
    """
    target = check_writable_file(Path(target))
    with terminating():
        try:
            fd, tmp_name = tempfile.mkstemp(
                prefix=_tmp_prefix(target), suffix=".tmp", dir=target.parent
            )
        except OSError as exc:
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
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
    a name only once it is complete, so no temporary file can be left behind whatever ends the
    process, SIGKILL included; elsewhere a named temporary file as in :func:`atomic_path`. On any
    exception, Ctrl-C, SIGTERM or SIGHUP ``target`` is left untouched.
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
    """Link the unnamed file ``fd`` under a fresh temporary name, then rename that onto target."""
    for _ in range(100):
        tmp = target.parent / f"{_tmp_prefix(target)}{secrets.token_hex(4)}.tmp"
        try:
            os.link(f"/proc/self/fd/{fd}", tmp)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP):
                raise
            _copy_out(fd, target)  # /proc not usable for linkat: copy the data instead
            return
    else:
        raise OSError(errno.EEXIST, "no free temporary name")
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _copy_out(fd: int, target: Path) -> None:
    """Copy the unnamed file ``fd`` into a named temporary file renamed onto ``target``."""
    os.lseek(fd, 0, os.SEEK_SET)
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        while chunk := os.read(fd, _CHUNK):
            out.write(chunk)


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


# -- outputs against inputs ------------------------------------------------------------------------
def check_outputs_against_inputs(
    outputs: Iterable[Path | str | None], inputs: Iterable[Path | str]
) -> None:
    """Before any work: every output can be written, and none would replace an input or another.

    ``outputs``: the files a command will write (None entries are skipped). ``inputs``: the files
    it reads (the model, every image found in the folder...). Raises :class:`OutputError` when an
    output is a folder, a device or other non-regular file, lies in a folder where no file can be
    created, is given twice, or is the same directory entry as an input (which the final rename
    would replace: ``-o`` pointing at an image of the folder, or at the model). Outputs that do
    not exist yet cannot be an input; for those that do, only inputs with the same name (case
    folded, for case-insensitive file systems) are looked at, so 100,000 inputs cost nothing.
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
    return (folder_a.st_dev, folder_a.st_ino, file_a.st_ino) == (
        folder_b.st_dev,
        folder_b.st_ino,
        file_b.st_ino,
    )
