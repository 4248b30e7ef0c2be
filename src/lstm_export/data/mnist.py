"""Find, verify and load the four official MNIST IDX files: in ``data_dir``, else
``$LSTM_EXPORT_DATA_DIR``, else the cache (fetched into only when the caller asks)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from lstm_export.data.files import MD5, find_file, find_files, verify_dir
from lstm_export.data.idx import read_idx
from lstm_export.errors import DataError

log = logging.getLogger(__name__)

ENV_VAR = "LSTM_EXPORT_DATA_DIR"
CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))


class CorruptCacheError(DataError):
    """The cache holds MNIST files, but not the four verified ones (fetching again fixes it)."""


#: each split's (images, labels) files
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def locate(data_dir: Path | None = None) -> tuple[Path, str]:
    """``(folder, source)``: the folder to read MNIST from (the cache,
    ``${XDG_CACHE_HOME:-~/.cache}/lstm-export/mnist``, may still need fetching)."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "--data-dir"
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser(), f"${ENV_VAR}"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lstm-export" / "mnist", "cache"


def ensure_mnist(
    data_dir: Path | None = None,
    *,
    fetch: bool = False,
    force: bool = False,
    on_fetch: Callable[[Path], None] | None = None,
) -> Path:
    """A folder holding the four verified MNIST files. An explicit folder is only verified; the
    cache is fetched into when empty and ``fetch``, or always with ``force`` (``on_fetch(cache)``
    first); a cache with some files but not the four verified ones raises CorruptCacheError."""
    directory, source = locate(data_dir)
    if source != "cache":
        verify_dir(directory)
        return directory
    if any(find_file(directory, name) for name in MD5) and not force:
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


def load_split(directory: Path, split: Literal["train", "test"]) -> MnistSplit:
    """One split, ``"train"`` or ``"test"``, from a verified folder (see :func:`ensure_mnist`)."""
    directory = Path(directory)
    images, labels = map(read_idx, find_files(directory, _FILES[split]).values())
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise DataError(f"{directory}: unexpected shapes {images.shape} and {labels.shape}")
    return MnistSplit(images=images.astype(np.uint8), labels=labels.astype(np.int64))


def load_mnist(split: Literal["train", "test"], data_dir: Path | None = None) -> MnistSplit:
    """Find, verify and load one split (never downloads)."""
    return load_split(ensure_mnist(data_dir), split)
