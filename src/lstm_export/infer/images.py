"""Image files -> MNIST-like uint8 digits ``(28, 28)``: read (bounded), decode, alpha, grayscale,
polarity, pad and resize (or ``fit``), the steps docs/stages.md lists; they are recorded in
checkpoints and exports as ``preprocess.describe()["image_files"]`` (keep the three in step).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lstm_export.data.preprocess import IMAGE_SIZE, to_model_input
from lstm_export.errors import InputError, first_line
from lstm_export.fileio import (
    FileChangedError,
    FileTooLargeError,
    NotRegularFileError,
    read_regular_file,
)

if TYPE_CHECKING:
    from PIL import Image as PILImage

#: suffixes (lower case) treated as images; anything else is counted as skipped
IMAGE_EXTENSIONS = frozenset(
    ".png .jpg .jpeg .jpe .jfif .bmp .dib .gif .tif .tiff .webp .pgm .ppm .pbm .pnm".split()  # noqa: SIM905
)

#: decode at no more than this size (JPEG draft mode), enough for ``fit`` to find the digit
_DRAFT_SIZE = 4 * IMAGE_SIZE
#: ``fit``: the longer side of the digit's box, and the point its centre of mass lands on
FIT_BOX = 20
FIT_CENTRE = (14.0, 14.0)  # measured on MNIST test: (13.99, 14.01) in (row, column) pixel indices
#: images above this many pixels (decompression bombs) are refused before they are decoded
MAX_PIXELS = 64_000_000
#: larger images are reduced to under twice this many pixels a side before any float copy
_WORK_SIDE = 1024
#: no image file is read past this many bytes, so memory stays bounded whatever a folder holds
MAX_FILE_BYTES = 64 * 2**20
#: environment variable that overrides :data:`MAX_FILE_BYTES` (a number of bytes)
MAX_FILE_BYTES_ENV = "LSTM_EXPORT_MAX_IMAGE_BYTES"


class Invert(str, Enum):
    """Polarity: ``auto`` inverts images whose border is light (dark digit on paper)."""

    auto = "auto"
    yes = "yes"
    no = "no"


class ImageError(InputError):
    """One image file cannot be used; its message becomes the ``error`` column of its row."""


def is_image_name(name: str) -> bool:
    """True when ``name`` has an image extension (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def max_file_bytes() -> int:
    """The size limit of image files: ``$LSTM_EXPORT_MAX_IMAGE_BYTES`` or :data:`MAX_FILE_BYTES`."""
    raw = os.environ.get(MAX_FILE_BYTES_ENV, "").strip()
    if not raw:
        return MAX_FILE_BYTES
    if not raw.replace("_", "").isdigit() or int(raw) < 1:
        raise InputError(f"${MAX_FILE_BYTES_ENV} must be a positive number of bytes, not {raw!r}")
    return int(raw)


def read_bytes(path: Path | str, max_bytes: int | None = None) -> bytes:
    """The file's bytes, up to ``max_bytes`` (default :func:`max_file_bytes`); ImageError for
    anything but a readable, non-empty regular file (a FIFO or device is refused, not opened)."""
    limit = max_file_bytes() if max_bytes is None else max_bytes
    try:
        data = read_regular_file(path, limit)
    except FileNotFoundError as exc:
        gone = "file not found (removed during the run?)"
        raise ImageError("broken symbolic link" if os.path.islink(path) else gone) from exc
    except FileTooLargeError as exc:
        raise ImageError(f"{exc}; raise it with ${MAX_FILE_BYTES_ENV}") from exc
    except (NotRegularFileError, FileChangedError) as exc:
        raise ImageError("is a folder, not a file" if "folder" in str(exc) else str(exc)) from exc
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from exc
    if not data:
        raise ImageError("empty file (0 bytes)")
    return data


@functools.cache
def _quiet_bomb_warning() -> None:
    """Silence Pillow's DecompressionBombWarning (about 89M pixels): :data:`MAX_PIXELS` refuses
    such images first. Process-wide, since ``warnings.catch_warnings`` is not thread-safe."""
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning, module=r"PIL\.")


def open_image(data: bytes) -> PILImage.Image:
    """Decode encoded bytes into a loaded Pillow image (first frame, EXIF orientation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    _quiet_bomb_warning()
    try:
        # only the header is read here: anything over MAX_PIXELS stops before decoding
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise ImageError(
                f"image too large: {img.width}x{img.height} pixels (limit {MAX_PIXELS:,})"
            )
        if img.format == "JPEG":
            img.draft("L", (_DRAFT_SIZE, _DRAFT_SIZE))  # decode at a reduced scale
        img.load()
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        kind = sniff_format(data)
        why = f"corrupt or truncated {kind} file" if kind else "not a recognised image format"
        raise ImageError(why) from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large: {first_line(exc, 200)}") from exc
    except Exception as exc:  # OSError (truncated), SyntaxError, ValueError, EOFError, ...
        message = first_line(exc, 200)
        if "truncated" in message.lower() or isinstance(exc, EOFError):
            detail = message.replace("image file is truncated", "").strip(" ()")
            suffix = f" ({detail})" if detail else ""
            raise ImageError(f"truncated {sniff_format(data) or 'image'} file{suffix}") from exc
        raise ImageError(f"cannot decode image: {message}") from exc
    exif = ("exif", "Raw profile type exif", "XML:com.adobe.xmp")  # may hold an orientation
    if img.format in ("JPEG", "MPO", "TIFF", "WEBP") or any(k in img.info for k in exif):
        with contextlib.suppress(Exception):  # a broken EXIF block is no reason to drop pixels
            ImageOps.exif_transpose(img, in_place=True)
    if img.width < 1 or img.height < 1:
        raise ImageError(f"image has no pixels ({img.width}x{img.height})")
    return _shrink(img)


#: modes whose bands Pillow's ``reduce`` may average (not palette indices, not 16-bit)
_REDUCIBLE = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "F"})


def _shrink(img: PILImage.Image) -> PILImage.Image:
    """An image of over ``2 * _WORK_SIDE`` pixels a side reduced by an integer factor (box
    averaging, in the image's own integer mode), so no full-size float copy is ever made."""
    factor = max(img.size) // _WORK_SIDE
    if factor < 2:
        return img
    if img.mode not in _REDUCIBLE or "transparency" in img.info:
        alpha = "A" in img.mode or "transparency" in img.info
        img = img.convert("I" if img.mode.startswith("I;16") else "RGBA" if alpha else "L")
    return img.reduce(factor)


_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP"}
_MAGIC |= {b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def sniff_format(data: bytes) -> str | None:
    """The image format ``data`` starts like (by its magic bytes), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _MAGIC.items() if data.startswith(magic)), None)


def to_gray(img: PILImage.Image) -> np.ndarray:
    """Pillow image -> uint8 grayscale ``(H, W)``: a 16-bit, 32-bit or float one scaled by its
    nominal range; alpha composited over the background the visible ink contrasts with (dark ink,
    a pen on a transparent sheet, onto white; light ink onto black)."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        deep = np.asarray(img)
        top = float(deep.max())
        if img.mode == "F" and top <= 1.0 and deep.min() >= 0.0:
            scale = 255.0  # float image in [0, 1]
        else:
            scale = 1.0 if top <= 255 else 255.0 / (65535.0 if top <= 65535 else top)
        out = deep.astype(np.float64) * scale
    elif img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        la = np.asarray(img.convert("RGBA").convert("LA"), dtype=np.float32)
        gray, alpha = la[..., 0], la[..., 1] / 255.0
        if alpha.min() >= 1.0:
            return gray.astype(np.uint8)
        ink = float(np.average(gray, weights=alpha)) if alpha.any() else 0.0
        out = gray * alpha + (255.0 if ink < 127.5 else 0.0) * (1.0 - alpha)
    else:
        return np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def border_ring(gray: np.ndarray) -> np.ndarray:
    """The one-pixel border of ``gray`` ``(H, W)`` as a flat array."""
    if gray.shape[0] <= 2 or gray.shape[1] <= 2:
        return gray.ravel()
    return np.concatenate((gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]))


def apply_polarity(gray: np.ndarray, invert: Invert | str = Invert.auto) -> np.ndarray:
    """uint8 ``(H, W)`` -> light digit on dark background: with ``auto``, inverted when most of
    the one-pixel border is light (> 127), a dark digit on paper."""
    ring = border_ring(gray)
    light = 2 * int(np.count_nonzero(ring > 127)) > ring.size
    return 255 - gray if invert == Invert.yes or (invert != Invert.no and light) else gray


def resize_square(gray: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 ``(H, W)`` -> uint8 ``(size, size)``: pad to a square with the border value, resize."""
    from PIL import Image

    h, w = gray.shape
    if (h, w) == (size, size):
        return gray
    if h != w:
        side = max(h, w)
        fill = round(float(np.median(border_ring(gray))))  # the background's brightness
        square = np.full((side, side), fill, dtype=np.uint8)
        top, left = (side - h) // 2, (side - w) // 2
        square[top : top + h, left : left + w] = gray
        gray = square
    resample = Image.Resampling.BOX if gray.shape[0] > size else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(gray).resize((size, size), resample), dtype=np.uint8)


def fit_mnist(gray: np.ndarray) -> np.ndarray:
    """Photo-like digit, uint8 ``(H, W)`` light on a darker background -> uint8 ``(28, 28)``, the
    way MNIST was made (docs/stages.md); a blank image gives a blank digit."""
    from PIL import Image, ImageFilter

    blank = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    radius = max(0.5, min(gray.shape) / 56.0)
    blurred = np.asarray(Image.fromarray(gray).filter(ImageFilter.GaussianBlur(radius)))
    threshold = _otsu(blurred)
    if threshold is None:
        return blank
    mask = blurred > threshold
    inside, outside = gray[mask], gray[~mask]
    if not inside.size or inside.size > 0.9 * gray.size:
        return blank
    # levels: the background (its noise included) -> 0, the strokes' cores -> 1
    low = min(_quantile(outside, 0.99), threshold) if outside.size else 0.0
    high = _quantile(inside, 0.90)
    if high - low < 1.0:
        return blank
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32)
    crop = np.clip((crop - low) / (high - low), 0.0, 1.0)
    ch, cw = crop.shape
    scale = FIT_BOX / max(ch, cw)
    nh, nw = max(1, round(ch * scale)), max(1, round(cw * scale))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC
    patch = np.clip(np.asarray(Image.fromarray(crop).resize((nw, nh), resample)), 0.0, 1.0)
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    mass = float(patch.sum())
    if mass > 0:
        cy = float(patch.sum(axis=1) @ np.arange(nh, dtype=np.float32)) / mass
        cx = float(patch.sum(axis=0) @ np.arange(nw, dtype=np.float32)) / mass
    else:
        cy, cx = (nh - 1) / 2, (nw - 1) / 2
    y0 = int(np.clip(round(FIT_CENTRE[0] - cy), 0, IMAGE_SIZE - nh))
    x0 = int(np.clip(round(FIT_CENTRE[1] - cx), 0, IMAGE_SIZE - nw))
    out[y0 : y0 + nh, x0 : x0 + nw] = patch
    return np.rint(out * 255.0).astype(np.uint8)


def _otsu(values: np.ndarray) -> float | None:
    """Otsu's threshold of a uint8 image (pixels above it are foreground); None when flat."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * np.arange(256))
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    between[(w0 == 0) | (w1 == 0)] = 0
    return float(np.argmax(between)) if between.any() else None


def _quantile(values: np.ndarray, q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``: the least value with at least that share below."""
    return float(np.quantile(values, q, method="inverted_cdf"))


def load_digit(
    source: Path | str | bytes,
    *,
    invert: Invert | str = Invert.auto,
    fit: bool = False,
    max_bytes: int | None = None,
) -> np.ndarray:
    """An image file (path or its bytes) -> uint8 digit ``(28, 28)``; ImageError when unusable
    (``max_bytes``: see :func:`read_bytes`)."""
    data = source if isinstance(source, bytes) else read_bytes(source, max_bytes)
    if not data:  # bytes given as they are
        raise ImageError("empty file (0 bytes)")
    gray = apply_polarity(to_gray(open_image(data)), Invert(invert))
    return fit_mnist(gray) if fit else resize_square(gray)


def load_digits(
    sources: list[Path] | list[str], *, invert: Invert | str = Invert.auto, fit: bool = False
) -> np.ndarray:
    """Several image files -> float32 model input ``(N, 28, 28)`` in [0, 1] (raises on any bad)."""
    return to_batch([load_digit(s, invert=invert, fit=fit) for s in sources])


def to_batch(digits: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """uint8 digits ``(N, 28, 28)`` -> float32 model input ``(N, 28, 28)``, as in training."""
    stack = np.asarray(digits, dtype=np.uint8)
    if stack.ndim != 3 or stack.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise InputError(f"expected digits of shape (N, 28, 28), got {stack.shape}")
    return to_model_input(stack)


def decode_files(
    paths: Sequence[str], invert: str = Invert.auto.value, fit: bool = False
) -> tuple[np.ndarray, list[str | None]]:
    """Decode a chunk of files (in a decode thread or process; arguments are picklable): uint8
    digits ``(N, 28, 28)`` (zeros where a file failed) and, per file, None or why it failed."""
    digits = np.zeros((len(paths), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    errors: list[str | None] = [None] * len(paths)
    mode = Invert(invert)
    limit = max_file_bytes()
    for i, path in enumerate(paths):
        try:
            digits[i] = load_digit(path, invert=mode, fit=fit, max_bytes=limit)
        except ImageError as exc:
            errors[i] = str(exc)
        except Exception as exc:  # a decoder bug must not stop the run either
            errors[i] = f"cannot decode image: {first_line(exc, 200)}"
    return digits, errors
