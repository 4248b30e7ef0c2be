"""Read and write IDX files (the MNIST container format), raw or gzip-compressed.

Reading is streamed and bounded: a ``.gz`` file is decompressed chunk by chunk, and reading stops
(with a DataError) as soon as the data passes the size its own IDX header declares or
:data:`MAX_IDX_BYTES`, so a small ``.gz`` that expands to gigabytes costs at most that much memory
and time. An expected md5 is checked on the same stream. Only regular files are read (a FIFO or a
device named like an MNIST file is refused, never opened for a blocking read).
"""

from __future__ import annotations

import gzip
import hashlib
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
    """The total size (header included) an IDX header declares, or None if not an IDX header yet.

    ``header``: the first bytes of the file (at least ``4 + 4 * ndim`` for an answer).
    """
    if len(header) < 4:
        return None
    zero, code, ndim = struct.unpack(">HBB", header[:4])
    if zero != 0 or code not in _DTYPES or ndim == 0 or len(header) < 4 + 4 * ndim:
        return None
    shape = struct.unpack(f">{ndim}I", header[4 : 4 + 4 * ndim])
    count = 1
    for dim in shape:
        count *= dim
    return 4 + 4 * ndim + count * _DTYPES[code].itemsize


def iter_idx_chunks(path: Path, *, max_bytes: int = MAX_IDX_BYTES) -> Iterator[bytes]:
    """The uncompressed bytes of an IDX file (raw or ``.gz``), chunk by chunk, bounded.

    Raises DataError as soon as the data passes the size its header declares (an oversized or
    padded file, a decompression bomb behind a real header) or ``max_bytes`` (one without a usable
    header), and for a file that is missing, not a regular file, or not readable gzip.
    """
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
                if total > min(max_bytes, declared or max_bytes):
                    raise DataError(_too_long(path, declared, max_bytes))
                yield chunk
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc


def _too_long(path: Path, declared: int | None, max_bytes: int) -> str:
    if declared is not None and declared <= max_bytes:
        return f"{path}: oversized: more than the {declared:,} bytes its IDX header declares"
    return f"{path}: larger than the {max_bytes:,}-byte limit for IDX files (uncompressed)"


def read_idx_bytes(path: Path, *, max_bytes: int = MAX_IDX_BYTES, md5: str | None = None) -> bytes:
    """The uncompressed bytes of an IDX file (``.gz`` decompressed), read as a bounded stream.

    See :func:`iter_idx_chunks` for the limits. ``md5``: the expected md5 of the uncompressed
    bytes, checked as they stream (DataError naming both digests when it differs).
    """
    digest = hashlib.md5(usedforsecurity=False) if md5 is not None else None
    chunks = []
    for chunk in iter_idx_chunks(path, max_bytes=max_bytes):
        if digest is not None:
            digest.update(chunk)
        chunks.append(chunk)
    if digest is not None and md5 is not None:
        _check_md5(path, digest.hexdigest(), md5)
    return b"".join(chunks)


def idx_md5(path: Path, *, max_bytes: int = MAX_IDX_BYTES) -> str:
    """md5 of an IDX file's uncompressed bytes, streamed (memory: one chunk)."""
    digest = hashlib.md5(usedforsecurity=False)
    for chunk in iter_idx_chunks(path, max_bytes=max_bytes):
        digest.update(chunk)
    return digest.hexdigest()


def _check_md5(path: Path, digest: str, expected: str) -> None:
    if digest != expected:
        raise DataError(f"{path} is corrupt: md5 {digest} is not the official {expected}")


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


def read_idx(path: Path, *, max_bytes: int = MAX_IDX_BYTES, md5: str | None = None) -> np.ndarray:
    """Read an IDX file (raw or ``.gz``), bounded and optionally md5-checked (see above)."""
    return parse_idx(read_idx_bytes(path, max_bytes=max_bytes, md5=md5), name=str(path))


def encode_idx(arr: np.ndarray) -> bytes:
    """Encode an array as IDX bytes."""
    dtype = np.dtype(arr.dtype).newbyteorder("=")
    if dtype not in _CODES:
        raise DataError(f"dtype {arr.dtype} cannot be stored in IDX")
    code = _CODES[dtype]
    header = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=_DTYPES[code]).tobytes()
