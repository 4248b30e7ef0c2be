"""Write MNIST test digits as PNG files in ImageFolder layout (``<class>/<index>.png``)."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import numpy as np

from lstm_export.fileio import ensure_writable_dir


def write_sample_folder(
    images: np.ndarray, labels: np.ndarray, folder: Path, *, count: int = 1000
) -> Path:
    """Save the first ``count`` images (uint8 (N, 28, 28)) as ``folder/<label>/<index>.png``,
    built beside ``folder`` and renamed into place (replacing an older copy)."""
    from PIL import Image

    ensure_writable_dir(folder.parent)
    staging = folder.parent / f".{folder.name}.{secrets.token_hex(6)}"
    staging.mkdir()  # as any folder: 0777 less the umask (a temporary folder would stay 0700)
    try:
        for index in range(min(count, len(images))):
            target = staging / str(int(labels[index]))
            target.mkdir(exist_ok=True)
            Image.fromarray(images[index], mode="L").save(target / f"{index:05d}.png")
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
