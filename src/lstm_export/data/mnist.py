"""Find, verify and load the four official MNIST IDX files.

Search order: an explicit ``data_dir``, then ``$LSTM_EXPORT_DATA_DIR``, then the cache
``${XDG_CACHE_HOME:-~/.cache}/lstm-export/mnist``. Only the cache is ever fetched into.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from lstm_export.data.idx import parse_idx, read_idx_bytes
from lstm_export.errors import DataError

log = logging.getLogger(__name__)

ENV_VAR = "LSTM_EXPORT_DATA_DIR"
CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))

# md5 of each file's uncompressed bytes (the values torchvision and the original site publish).
MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


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


def find_file(directory: Path, name: str) -> Path | None:
    """The raw or ``.gz`` copy of ``name`` in ``directory``, raw preferred."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def verify_dir(directory: Path) -> None:
    """Check that all four files are present and match the official md5; raise DataError if not."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"MNIST folder {directory} does not exist")
    paths = {}
    for name in MD5:
        path = find_file(directory, name)
        if path is None:
            raise DataError(f"MNIST folder {directory} is missing {name} (or {name}.gz)")
        paths[name] = path
    for name, md5 in MD5.items():
        path = paths[name]
        digest = hashlib.md5(read_idx_bytes(path)).hexdigest()
        if digest != md5:
            raise DataError(f"{path} is corrupt: md5 {digest} is not the official {md5}")


def _has_any(directory: Path) -> bool:
    return directory.is_dir() and any(find_file(directory, n) for n in MD5)


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


def ensure_mnist(data_dir: Path | None = None, *, fetch: bool = True, force: bool = False) -> Path:
    """Return a folder holding the four verified MNIST files, fetching into the cache if needed.

    An explicit folder (``data_dir`` or the environment variable) is only verified, never written.
    """
    directory, source = locate(data_dir)
    if source != "cache":
        verify_dir(directory)
        return directory
    if _has_any(directory) and not force:
        try:
            verify_dir(directory)
        except DataError as exc:
            raise DataError(f"{exc} (run `lstm-export data --force` to fetch it again)") from exc
        return directory
    if not fetch:
        raise DataError(f"MNIST not found in {directory}; run `lstm-export data` to fetch it")
    from lstm_export.data.fetch import fetch_into

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
    split: Split | str, data_dir: Path | None = None, *, fetch: bool = True
) -> MnistSplit:
    """Find (fetching if needed), verify and load one split."""
    return load_split(ensure_mnist(data_dir, fetch=fetch), split)
