"""Find the image files under a folder (or a glob pattern's matches): stable order, hidden entries
left out, symbolic link loops safe, and never a step outside the folder.

Every entry with an image extension is listed, whatever it is: a FIFO, device or socket named
``x.png`` gets its row, whose error :func:`lstm_export.infer.images.read_bytes` gives without ever
opening it for a blocking read. A symbolic link whose target lies outside the folder is not
followed (unless asked): a file becomes a row with that error (its file is never read), a folder
is reported as not read. FOLDER itself must be a folder or a regular image file.
"""

from __future__ import annotations

import glob
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

_GLOB_CHARS = frozenset("*?[")


@dataclass
class Walk:
    """What a folder holds: the image files to classify, and what was left out."""

    root: Path
    recursive: bool = True
    #: image files as path strings, in a stable order (sorted by their relative path's parts)
    paths: list[str] = field(default_factory=list)
    #: the same files relative to ``root``, ``/``-separated (the file name for a single file)
    names: list[str] = field(default_factory=list)
    #: index in :attr:`paths` -> why that file is not read (a link out of the folder)
    refused: dict[int, str] = field(default_factory=dict)
    #: files without an image extension (not classified)
    skipped: int = 0
    #: hidden files and folders (name starting with ``.``) left out
    hidden: int = 0
    #: folders that could not be listed (or were not entered), as ``"relative/path: reason"``
    unreadable: list[str] = field(default_factory=list)

    def require_images(self) -> Walk:
        """InputError when the folder holds no image file (a run over it would do nothing)."""
        if not self.paths:
            where = "" if self.recursive else "; subfolders not searched"
            raise InputError(
                f"no image files in {self.root} ({self.skipped:,} other "
                f"file{'s' if self.skipped != 1 else ''} skipped, {self.hidden:,} hidden left "
                f"out{where})"
            )
        return self


def walk_images(folder: Path | str, *, recursive: bool = True, follow_links: bool = False) -> Walk:
    """List the image files under ``folder`` (or ``folder`` itself when it is one image file).

    Each real folder is entered once (so link loops end); broken links with an image extension
    are kept (their row reports the broken link). A link leading outside ``folder`` is only
    followed with ``follow_links``. A glob pattern (``'digits/[0-4]'``; taken when no file has
    that exact name) walks every match in sorted order and merges them, each row's path relative
    to the part before the first wildcard; a file reached through two matches is listed once.
    InputError when ``folder`` does not exist or is neither a folder nor a regular file.
    """
    text = os.fspath(folder)
    if not (_GLOB_CHARS & set(text)) or os.path.lexists(text):
        return _walk(Path(text), recursive, follow_links)
    matches = sorted(glob.glob(text, recursive=True))
    if not matches:
        raise InputError(f"nothing matches {text}")
    parts = Path(text).parts
    first = next(i for i, p in enumerate(parts) if _GLOB_CHARS & set(p))
    base = Path(*parts[:first]) if first else Path(".")
    merged = Walk(root=base, recursive=recursive)
    rows: dict[str, tuple[str, str | None]] = {}  # name -> (path, refused)
    for match in matches:
        part = _walk(Path(match), recursive, follow_links)
        prefix = Path(os.path.relpath(match, base)).as_posix()
        single = Path(match).is_file()
        for i, (path, name) in enumerate(zip(part.paths, part.names, strict=True)):
            rows.setdefault(prefix if single else f"{prefix}/{name}", (path, part.refused.get(i)))
        merged.skipped += part.skipped
        merged.hidden += part.hidden
        merged.unreadable += [f"{prefix}/{u}" for u in part.unreadable]
    for name in sorted(rows, key=lambda n: n.split("/")):
        path, refused = rows[name]
        if refused is not None:
            merged.refused[len(merged.paths)] = refused
        merged.paths.append(path)
        merged.names.append(name)
    return merged


def _walk(root: Path, recursive: bool, follow_links: bool) -> Walk:
    try:
        mode = os.stat(root).st_mode
    except FileNotFoundError:
        raise InputError(f"folder {root} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read {root}: {exc.strerror or exc}") from exc
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise InputError(f"{root} is {file_kind(mode)}, not a folder nor an image file")
    result = Walk(root=root, recursive=recursive)
    if stat.S_ISREG(mode):
        if not is_image_name(root.name):
            raise InputError(f"{root} is not a folder nor a file with an image extension")
        result.paths.append(str(root))
        result.names.append(root.name)
        return result
    inside = os.path.join(os.path.realpath(root), "")  # with the trailing separator

    def leaves(entry: os.DirEntry[str]) -> str | None:
        """The target of a link out of the folder (None: not a link, or it stays inside)."""
        if follow_links or not entry.is_symlink():
            return None
        target = os.path.realpath(entry.path)
        return None if os.path.join(target, "").startswith(inside) else target

    # Depth first, each folder's entries sorted by name: the same order as sorting every
    # relative path by its parts, without building and sorting them all at the end.
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Iterator[os.DirEntry[str]], str]] = []

    def enter(directory: str, prefix: str) -> None:
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen:
                log.info("not entering %s again (symbolic link loop or second link)", directory)
                return
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            result.unreadable.append(f"{prefix.rstrip('/') or '.'}: {exc.strerror or exc}")
            return
        stack.append((iter(entries), prefix))

    enter(str(root), "")
    while stack:
        entries, prefix = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            result.hidden += 1
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError:
            is_dir = False
        target = leaves(entry)
        if is_dir and recursive and target is not None:
            note = f"symbolic link to {target}, outside the folder: not followed"
            result.unreadable.append(f"{prefix}{entry.name}: {note}")
        elif is_dir and recursive:
            enter(entry.path, f"{prefix}{entry.name}/")
        elif is_dir:
            continue
        elif is_image_name(entry.name):
            if target is not None:
                result.refused[len(result.paths)] = _outside(entry.path, target)
            result.paths.append(entry.path)
            result.names.append(prefix + entry.name)
        else:
            result.skipped += 1
    for problem in result.unreadable:  # the run's summary lists them too
        log.info("folder not read: %s", problem)
    return result


def _outside(path: str, target: str) -> str:
    """The error of a file reached through a link that leaves the folder (never opened)."""
    try:
        mode = os.stat(path).st_mode
        kind = "" if stat.S_ISREG(mode) else f", which is {file_kind(mode)}, not a regular file"
    except OSError:
        kind = ", which does not exist"
    return f"symbolic link to {target}{kind}, outside the folder: not followed"
