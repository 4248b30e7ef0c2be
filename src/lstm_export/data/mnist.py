"""Find, verify and load the four official MNIST IDX files.

Search order: an explicit ``data_dir``, then ``$LSTM_EXPORT_DATA_DIR``, then the cache
``${XDG_CACHE_HOME:-~/.cache}/lstm-export/mnist``. Only the cache is ever fetched into, and only
when the caller asks for it (``fetch=True``): a library call never downloads on its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from lstm_export.data.files import find_file, has_any, verify_dir
from lstm_export.data.idx import parse_idx, read_idx_bytes
from lstm_export.errors import DataError

log = logging.getLogger(__name__)

ENV_VAR = "LSTM_EXPORT_DATA_DIR"
CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))

#: on_fetch(cache): called just before MNIST is downloaded into ``cache``
FetchCallback = Callable[[Path], None]


class CorruptCacheError(DataError):
    """The cache holds MNIST files, but not the four verified ones (fetching again fixes it)."""


class Split(str, Enum):
    """Which half of MNIST."""

    train = "train"
    test = "test"


_FILES = {
    Split.train: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    Split.test: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/lstm-export/mnist``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lstm-export" / "mnist"


def locate(data_dir: Path | None = None) -> tuple[Path, str]:
    """Pick the folder to read MNIST from and say where the choice came from.

    Returns ``(folder, source)``; the folder may still need fetching if it is the cache.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser(), "--data-dir"
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser(), f"${ENV_VAR}"
    return cache_dir(), "cache"


def ensure_mnist(
    data_dir: Path | None = None,
    *,
    fetch: bool = False,
    force: bool = False,
    on_fetch: FetchCallback | None = None,
) -> Path:
    """Return a folder holding the four verified MNIST files.

    An explicit folder (``data_dir`` or ``$LSTM_EXPORT_DATA_DIR``) is only verified, never
    written. The cache is downloaded into only when the caller asks: ``fetch=True`` fills an empty
    cache, ``force=True`` fetches it again even if it is complete (and implies ``fetch``).
    ``on_fetch(cache)`` is called just before a download starts. A cache holding some files but
    not the four verified ones raises :class:`CorruptCacheError` rather than being re-fetched.
    """
    directory, source = locate(data_dir)
    if source != "cache":
        verify_dir(directory)
        return directory
    if has_any(directory) and not force:
        try:
            verify_dir(directory)
        except DataError as exc:
            raise CorruptCacheError(f"the MNIST cache is unusable: {exc}") from exc
        return directory
    if not (fetch or force):
        raise DataError(
            f"MNIST not found in the cache {directory} (and fetching was not asked for)"
        )
    from lstm_export.data.fetch import fetch_into

    if on_fetch is not None:
        on_fetch(directory)
    log.info("fetching MNIST into %s", directory)
    fetch_into(directory)
    verify_dir(directory)
    return directory


@dataclass(frozen=True)
class MnistSplit:
    """One split as uint8 arrays: images ``(N, 28, 28)``, labels ``(N,)``."""

    images: np.ndarray
    labels: np.ndarray


def load_split(directory: Path, split: Split | str) -> MnistSplit:
    """Load one split from a verified folder (see :func:`ensure_mnist`)."""
    split, directory = Split(split), Path(directory)
    images_name, labels_name = _FILES[split]
    arrays = []
    for name in (images_name, labels_name):
        path = find_file(directory, name)
        if path is None:
            raise DataError(f"MNIST folder {directory} is missing {name} (or {name}.gz)")
        arrays.append(parse_idx(read_idx_bytes(path), name=str(path)))
    images, labels = arrays
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise DataError(f"{directory}: unexpected shapes {images.shape} and {labels.shape}")
    return MnistSplit(images=images.astype(np.uint8), labels=labels.astype(np.int64))


def load_mnist(
    split: Split | str, data_dir: Path | None = None, *, fetch: bool = False
) -> MnistSplit:
    """Find, verify and load one split; download into the cache only if ``fetch`` is true."""
    return load_split(ensure_mnist(data_dir, fetch=fetch), split)
