"""Read and write IDX files (the MNIST container format), raw or gzip-compressed.

Reading is streamed and bounded by the size the IDX header declares and :data:`MAX_IDX_BYTES`
(a decompression bomb costs at most that much); only regular files are opened.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lstm_export.errors import DataError

# Third byte of the magic number -> numpy dtype (big-endian where it matters).
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items()}

#: no IDX file is read past this many uncompressed bytes (MNIST's largest is 47,040,016)
MAX_IDX_BYTES = 256 * 2**20
_CHUNK = 1 << 20
_MAX_HEADER = 4 + 4 * 255  # magic number and up to 255 dimensions


def declared_size(header: bytes) -> int | None:
    """The total size an IDX header (the file's first bytes) declares, or None (not one, yet)."""
    if len(header) < 4:
        return None
    zero, code, ndim = struct.unpack(">HBB", header[:4])
    if zero != 0 or code not in _DTYPES or ndim == 0 or len(header) < 4 + 4 * ndim:
        return None
    shape = struct.unpack(f">{ndim}I", header[4 : 4 + 4 * ndim])
    return 4 + 4 * ndim + math.prod(shape) * _DTYPES[code].itemsize


def iter_idx_chunks(path: Path) -> Iterator[bytes]:
    """The uncompressed bytes of an IDX file (raw or ``.gz``), chunk by chunk; DataError as soon
    as they pass the size the header declares or :data:`MAX_IDX_BYTES`, or the file is missing,
    not a regular file, or not readable gzip."""
    from lstm_export.fileio import open_regular

    path = Path(path)
    try:
        f = open_regular(path)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    head = b""
    declared: int | None = None
    total = 0
    try:
        with f:
            stream = gzip.GzipFile(fileobj=f, mode="rb") if path.suffix == ".gz" else f
            while chunk := stream.read(_CHUNK):
                if declared is None and len(head) < _MAX_HEADER:
                    head += chunk[:_MAX_HEADER]
                    declared = declared_size(head)
                total += len(chunk)
                if total > min(MAX_IDX_BYTES, declared or MAX_IDX_BYTES):
                    raise DataError(_too_long(path, declared))
                yield chunk
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc


def _too_long(path: Path, declared: int | None) -> str:
    if declared is not None and declared <= MAX_IDX_BYTES:
        return f"{path}: oversized: more than the {declared:,} bytes its IDX header declares"
    return f"{path}: larger than the {MAX_IDX_BYTES:,}-byte limit for IDX files (uncompressed)"


def idx_md5(path: Path) -> str:
    """md5 of an IDX file's uncompressed bytes, streamed (memory: one chunk)."""
    digest = hashlib.md5(usedforsecurity=False)
    for chunk in iter_idx_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into an array of the stored dtype and shape."""
    expected = declared_size(data[:_MAX_HEADER])
    if expected is None:
        raise DataError(f"{name}: not an IDX file (magic number 0x{data[:4].hex()}, or truncated)")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    if len(data) != expected:
        raise DataError(
            f"{name}: truncated or oversized: {len(data)} bytes, expected {expected} "
            f"for shape {tuple(shape)}"
        )
    dtype = _DTYPES[data[2]]
    arr = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (raw or ``.gz``), bounded (see :func:`iter_idx_chunks`)."""
    return parse_idx(b"".join(iter_idx_chunks(path)), name=str(path))


def encode_idx(arr: np.ndarray) -> bytes:
    """Encode an array as IDX bytes."""
    dtype = np.dtype(arr.dtype).newbyteorder("=")
    if dtype not in _CODES:
        raise DataError(f"dtype {arr.dtype} cannot be stored in IDX")
    code = _CODES[dtype]
    header = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=_DTYPES[code]).tobytes()
