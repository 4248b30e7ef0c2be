"""Find the image files under a folder (or a glob pattern's matches): stable order, hidden entries
left out, link loops safe, never a step outside the folder. Every entry with an image extension
is listed, whatever it is (a FIFO named ``x.png`` gets an error row). A link out of the folder is
followed only if asked: a file becomes an error row (never read), a folder is reported not read.
"""

from __future__ import annotations

import glob
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from lstm_export.console import count
from lstm_export.errors import InputError
from lstm_export.fileio import file_kind
from lstm_export.infer.images import is_image_name

log = logging.getLogger(__name__)

_GLOB_CHARS = frozenset("*?[")


@dataclass
class Walk:
    """What a folder holds: the image ``paths`` in a stable order (sorted by their relative
    path's parts) and their ``names`` relative to ``root`` (``/``-separated); ``refused``:
    position -> why that file is not read (a link out of the folder); files without an image
    extension ``skipped``; ``hidden`` entries (``.name``) left out; folders ``unreadable`` (or
    not entered), as ``"relative/path: reason"``."""

    root: Path
    recursive: bool = True
    paths: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)
    skipped: int = 0
    hidden: int = 0
    unreadable: list[str] = field(default_factory=list)

    def require_images(self) -> None:
        """InputError when the folder holds no image file (a run over it would do nothing)."""
        if not self.paths:
            where = "" if self.recursive else "; subfolders not searched"
            raise InputError(
                f"no image files in {self.root} ({count(self.skipped, 'other file')} skipped, "
                f"{self.hidden:,} hidden left out{where})"
            )


def walk_images(folder: Path | str, *, recursive: bool = True, follow_links: bool = False) -> Walk:
    """List the image files under ``folder`` (or ``folder`` itself when it is one image file);
    each real folder entered once, a broken link kept (its row says so). A glob pattern
    (``'digits/[0-4]'``, when no file has that name) walks every match and merges them, names
    relative to the part before the first wildcard, a file reached twice listed once.
    InputError when ``folder`` does not exist or is neither a folder nor a regular file."""
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
    if stat.S_ISREG(mode):
        if not is_image_name(root.name):
            raise InputError(f"{root} is not a folder nor a file with an image extension")
        return Walk(root, recursive, paths=[str(root)], names=[root.name])
    result = Walk(root=root, recursive=recursive)
    inside = os.path.join(os.path.realpath(root), "")  # with the trailing separator
    # depth first, each folder's entries sorted: the order of every relative path's parts
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[os.DirEntry[str], str]] = []  # popped in name order

    def enter(directory: str, prefix: str) -> None:
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen:
                log.info("not entering %s again (symbolic link loop or second link)", directory)
                return
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as it:
                stack.extend((e, prefix) for e in sorted(it, key=lambda e: e.name, reverse=True))
        except OSError as exc:
            result.unreadable.append(f"{prefix.rstrip('/') or '.'}: {exc.strerror or exc}")

    enter(str(root), "")
    while stack:
        entry, prefix = stack.pop()
        if entry.name.startswith("."):
            result.hidden += 1
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError:
            is_dir = False
        target = None
        if not follow_links and entry.is_symlink():
            target = os.path.realpath(entry.path)
            target = None if os.path.join(target, "").startswith(inside) else target
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
