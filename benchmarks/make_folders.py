"""Write sample image folders from the MNIST test set, ImageFolder style (``<class>/<n>.<ext>``).

Variants (each a folder under OUT):

- ``mnist``: the digits as they are, 28x28 grayscale PNG;
- ``inverted``: black digit on white, PNG;
- ``rgb``: RGB PNG;  ``jpeg``: RGB JPEG (quality 90);  ``bmp``: grayscale BMP;
- ``large``: 112x112 PNG (4x, bicubic);
- ``photo``: photo-like: the digit 2-3x larger, off-centre, dark ink on a light, unevenly lit,
  noisy background of 64-100 px, saved as RGB JPEG (quality 85);
- ``messy``: 100 digits as PNG in nested folders with spaces and non-ASCII names, upper-case
  extensions, plus broken files (empty, truncated, not an image), a hidden file and a text file.

    python benchmarks/make_folders.py OUT [--count 10000] [--variants mnist,photo,...]

MNIST comes from --data-dir, $LSTM_EXPORT_DATA_DIR or the cache (fetched into when missing).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from lstm_export.data.cli import require_mnist
from lstm_export.data.mnist import load_split
from lstm_export.errors import LstmExportError

VARIANTS = ("mnist", "inverted", "rgb", "jpeg", "bmp", "large", "photo", "messy")


def _png(img: np.ndarray) -> tuple[Image.Image, str, dict[str, object]]:
    return Image.fromarray(img), "png", {}


def _inverted(img: np.ndarray) -> tuple[Image.Image, str, dict[str, object]]:
    return Image.fromarray(255 - img), "png", {}


def _rgb(img: np.ndarray) -> tuple[Image.Image, str, dict[str, object]]:
    return Image.fromarray(img).convert("RGB"), "png", {}


def _jpeg(img: np.ndarray) -> tuple[Image.Image, str, dict[str, object]]:
    return Image.fromarray(img).convert("RGB"), "jpg", {"quality": 90}


def _bmp(img: np.ndarray) -> tuple[Image.Image, str, dict[str, object]]:
    return Image.fromarray(img), "bmp", {}


def _large(img: np.ndarray) -> tuple[Image.Image, str, dict[str, object]]:
    return Image.fromarray(img).resize((112, 112), Image.Resampling.BICUBIC), "png", {}


def photo_like(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 MNIST digit (28, 28) -> uint8 RGB photo-like image (S, S, 3), S in 64..100."""
    rows = np.flatnonzero(img.any(axis=1))
    cols = np.flatnonzero(img.any(axis=0))
    digit = img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = rng.uniform(2.0, 3.0)
    h, w = digit.shape
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    big = np.asarray(Image.fromarray(digit).resize((nw, nh), Image.Resampling.BICUBIC), np.float32)
    size = int(rng.integers(max(64, nh + 6, nw + 6), 101))
    size = max(size, nh + 6, nw + 6)
    # Paper: light, a lighting gradient, noise; ink: dark and a little blurred by the scaling.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    paper = rng.uniform(195, 235) + rng.uniform(-15, 15) * xx + rng.uniform(-15, 15) * yy
    paper = paper + rng.normal(0, rng.uniform(4, 10), (size, size))
    ink = rng.uniform(20, 70)
    alpha = np.zeros((size, size), np.float32)
    top = int(rng.integers(2, size - nh - 2)) if size - nh - 2 > 2 else 2
    left = int(rng.integers(2, size - nw - 2)) if size - nw - 2 > 2 else 2
    alpha[top : top + nh, left : left + nw] = np.clip(big / 255.0, 0, 1)
    gray = paper * (1 - alpha) + ink * alpha
    tint = rng.uniform(0.93, 1.0, 3).astype(np.float32)
    rgb = np.clip(gray[..., None] * tint, 0, 255).astype(np.uint8)
    return rgb


def write_variant(
    out: Path, images: np.ndarray, labels: np.ndarray, variant: str, seed: int = 0
) -> int:
    """Write one variant folder; return the number of files written."""
    encoders: dict[str, Callable[[np.ndarray], tuple[Image.Image, str, dict[str, object]]]] = {
        "mnist": _png,
        "inverted": _inverted,
        "rgb": _rgb,
        "jpeg": _jpeg,
        "bmp": _bmp,
        "large": _large,
    }
    rng = np.random.default_rng(seed)
    folder = out / variant
    if variant == "messy":
        return _messy(folder, images[:100], labels[:100])
    for c in range(10):
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
    pil: Image.Image
    ext: str
    kw: dict[str, object]
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        if variant == "photo":
            pil, ext, kw = Image.fromarray(photo_like(img, rng)), "jpg", {"quality": 85}
        else:
            pil, ext, kw = encoders[variant](img)
        pil.save(folder / str(int(label)) / f"{i:05d}.{ext}", **kw)  # type: ignore[arg-type]
    return len(images)


def mnist_folder(root: Path, count: int, data_dir: Path | None) -> Path:
    """``count`` test digits as 28x28 PNGs in ``root/mnist/<class>/`` (fetching MNIST if needed)."""
    split = load_split(require_mnist(data_dir), "test")
    write_variant(root, split.images[:count], split.labels[:count], "mnist")
    return root / "mnist"


def _messy(folder: Path, images: np.ndarray, labels: np.ndarray) -> int:
    """Digits in awkward places and names, and every kind of bad file."""
    names = ["plain", "with space", "ünïcödé", "deep/er/still"]
    count = 0
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        sub = folder / str(int(label)) / names[i % len(names)]
        sub.mkdir(parents=True, exist_ok=True)
        ext = ".PNG" if i % 3 == 0 else ".png"
        Image.fromarray(img).save(sub / f"digit {i:03d}{ext}", format="PNG")
        count += 1
    bad = folder / "3"
    bad.mkdir(parents=True, exist_ok=True)  # with fewer than 19 digits no 3 is among them
    buf = io.BytesIO()
    Image.fromarray(images[0]).save(buf, format="PNG")
    (bad / "empty.png").write_bytes(b"")
    (bad / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (bad / "not-an-image.jpg").write_bytes(b"this is text, not a JPEG\n")
    (bad / "notes.txt").write_text("not an image: skipped\n")
    (bad / ".hidden.png").write_bytes(buf.getvalue())
    return count + 3  # files with an image extension that are not hidden: one row each


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=10000, help="first N test digits")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    for variant in variants:
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    split = load_split(require_mnist(args.data_dir), "test")
    images, labels = split.images[: args.count], split.labels[: args.count]
    for variant in variants:
        n = write_variant(args.out, images, labels, variant)
        print(f"{args.out / variant}: {n} image files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LstmExportError as exc:  # one line, as the lstm-export commands print it
        sys.exit(f"error: {exc}")
