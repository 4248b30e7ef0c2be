"""Find the image files under a folder: stable order, hidden entries skipped, symlink loops safe.

Every entry with an image extension is listed, whatever it is: a FIFO, device or socket named
``x.png`` gets its row, whose error :func:`lstm_export.infer.images.read_bytes` gives without ever
opening it for a blocking read. FOLDER itself must be a folder or a regular image file.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lstm_export.errors import InputError
from lstm_export.fileio import file_kind
from lstm_export.infer.images import is_image_name

log = logging.getLogger(__name__)


@dataclass
class Walk:
    """What a folder holds: the image files to classify, and what was left out."""

    root: Path
    #: image files as path strings, in a stable order (sorted by their relative path's parts)
    paths: list[str] = field(default_factory=list)
    #: the same files relative to ``root``, ``/``-separated (the file name for a single file)
    names: list[str] = field(default_factory=list)
    #: files without an image extension (not classified)
    skipped: int = 0
    #: hidden files and folders (name starting with ``.``) left out
    hidden: int = 0
    #: folders that could not be listed, as ``"relative/path: reason"``
    unreadable: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        """The image files as paths (see :attr:`paths`)."""
        return [Path(p) for p in self.paths]

    def relative(self, path: Path) -> str:
        """``path`` relative to the root, ``/``-separated (the file name for a single file)."""
        if self.root.is_file():
            return path.name
        return Path(os.path.relpath(path, self.root)).as_posix()


def walk_images(folder: Path, *, recursive: bool = True) -> Walk:
    """List the image files under ``folder`` (or ``folder`` itself when it is one image file).

    Symbolic links are followed, each real folder is entered once (so loops end), and broken
    links with an image extension are kept (their row reports the broken link). Raises
    InputError when ``folder`` does not exist, or is neither a folder nor a regular file (a FIFO,
    a device, a socket).
    """
    root = Path(folder)
    try:
        mode = os.stat(root).st_mode
    except FileNotFoundError:
        raise InputError(f"folder {root} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read {root}: {exc.strerror or exc}") from exc
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise InputError(f"{root} is {file_kind(mode)}, not a folder nor an image file")
    result = Walk(root=root)
    if stat.S_ISREG(mode):
        if is_image_name(root.name):
            result.paths.append(str(root))
            result.names.append(root.name)
        else:
            raise InputError(f"{root} is not a folder nor a file with an image extension")
        return result
    # Depth first, each folder's entries sorted by name: the same order as sorting every
    # relative path by its parts, without building and sorting them all at the end.
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Iterator[os.DirEntry[str]], str]] = []

    def enter(directory: str, prefix: str) -> None:
        where = prefix.rstrip("/") or "."
        try:
            st = os.stat(directory)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                log.info("not entering %s again (symbolic link loop or second link)", directory)
                return
            seen.add(key)
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            result.unreadable.append(f"{where}: {exc.strerror or exc}")
            return
        stack.append((iter(entries), prefix))

    enter(str(root), "")
    while stack:
        entries, prefix = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        name = entry.name
        if name.startswith("."):
            result.hidden += 1
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError:
            is_dir = False
        if is_dir:
            if recursive:
                enter(entry.path, f"{prefix}{name}/")
        elif is_image_name(name):
            result.paths.append(entry.path)
            result.names.append(prefix + name)
        else:
            result.skipped += 1
    for problem in result.unreadable:
        log.warning("cannot list folder %s", problem)
    return result
