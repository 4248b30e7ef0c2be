"""Image preprocessing: decoding, polarity, alpha, sizes, ``fit``, and every kind of bad file."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _infer_helpers import png_bytes, uint8_test_set
from lstm_export.data.preprocess import describe, to_model_input
from lstm_export.errors import InputError
from lstm_export.infer.images import (
    FIT_BOX,
    MAX_FILE_BYTES,
    ImageError,
    Invert,
    decode_files,
    fit_mnist,
    is_image_name,
    load_digit,
    load_digits,
    max_file_bytes,
    read_bytes,
)


@pytest.fixture(scope="module")
def digits(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = uint8_test_set(mnist_dir)
    return images[:50], labels[:50]


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)  # type: ignore[arg-type]
    return buf.getvalue()


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


def _similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Best correlation over shifts of up to one pixel (centring rounds to whole pixels)."""
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return max(_correlation(np.roll(a, s, axis=(0, 1)), b) for s in shifts)


# -- the MNIST path is exact -----------------------------------------------------------------
def test_mnist_png_is_bit_exact_and_scaled_as_in_training(
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    images, _ = digits
    for img in images[:20]:
        assert np.array_equal(load_digit(png_bytes(img)), img)


def test_load_digits_gives_model_input(
    tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = digits
    paths = []
    for i, img in enumerate(images[:4]):
        p = tmp_path / f"{i}.png"
        p.write_bytes(png_bytes(img))
        paths.append(p)
    x = load_digits(paths)
    assert x.dtype == np.float32 and x.shape == (4, 28, 28)
    np.testing.assert_array_equal(x, to_model_input(images[:4]))


# -- polarity ----------------------------------------------------------------------------------
def test_black_on_white_is_inverted_automatically(digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = digits
    for img in images[:10]:
        assert np.array_equal(load_digit(png_bytes(255 - img)), img)


def test_invert_yes_and_no_override_the_guess(digits: tuple[np.ndarray, np.ndarray]) -> None:
    img = digits[0][0]
    assert np.array_equal(load_digit(png_bytes(img), invert=Invert.yes), 255 - img)
    assert np.array_equal(load_digit(png_bytes(255 - img), invert="no"), 255 - img)
    assert np.array_equal(load_digit(png_bytes(img), invert="no"), img)
    with pytest.raises(ValueError):
        load_digit(png_bytes(img), invert="sometimes")


def test_polarity_follows_the_border_not_the_ink_amount() -> None:
    """A bold dark digit covering most of a white card is still inverted (border decides)."""
    card = np.full((28, 28), 250, np.uint8)
    card[2:26, 3:25] = 10  # a huge dark blob: most pixels are dark, the border is light
    out = load_digit(png_bytes(card))
    assert out[0, 0] == 5 and out[14, 14] == 245


# -- colour, alpha, formats, sizes ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "mode", "kw", "tolerance"),
    [
        ("PNG", "RGB", {}, 1),
        ("BMP", "L", {}, 0),
        ("TIFF", "L", {}, 0),
        ("GIF", "L", {}, 0),
        ("WEBP", "L", {"lossless": True}, 0),
        ("JPEG", "RGB", {"quality": 95}, 40),
        ("PPM", "RGB", {}, 1),
    ],
)
def test_formats_decode_to_the_same_digit(
    fmt: str,
    mode: str,
    kw: dict[str, object],
    tolerance: int,
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    img = digits[0][1]
    out = load_digit(_encode(Image.fromarray(img).convert(mode), fmt, **kw))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img.astype(int)).max() <= tolerance
    assert _correlation(out, img) > 0.99


def test_gif_uses_the_first_frame(digits: tuple[np.ndarray, np.ndarray]) -> None:
    first, second = (Image.fromarray(d).convert("P") for d in digits[0][:2])
    data = _encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    assert np.array_equal(load_digit(data), digits[0][0])


def test_sixteen_bit_png_is_scaled_down(digits: tuple[np.ndarray, np.ndarray]) -> None:
    img = digits[0][2]
    deep = Image.fromarray(img.astype(np.uint16) * 257)  # full 16-bit range
    out = load_digit(_encode(deep, "PNG"))
    assert np.abs(out.astype(int) - img.astype(int)).max() <= 1


@pytest.mark.parametrize("ink", ["dark", "light"])
def test_alpha_is_composited_onto_the_contrasting_background(
    ink: str, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """A pen stroke on a transparent sheet: the shape is in alpha, the colour is uniform."""
    img = digits[0][3]
    colour = 0 if ink == "dark" else 255
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = img  # opaque where the digit is
    out = load_digit(png_bytes(rgba))
    assert np.abs(out.astype(int) - img.astype(int)).max() <= 1


def test_palette_transparency_and_la_mode(digits: tuple[np.ndarray, np.ndarray]) -> None:
    img = digits[0][4]
    la = np.stack([np.zeros_like(img), img], axis=-1)  # black ink, alpha = digit
    out = load_digit(_encode(Image.fromarray(la, mode="LA"), "PNG"))
    assert _correlation(out, img) > 0.99
    pal = Image.fromarray(255 - img).convert("P")
    pal.info["transparency"] = 255  # the white paper is transparent
    out = load_digit(_encode(pal, "PNG", transparency=255))
    assert _correlation(out, img) > 0.95


@pytest.mark.parametrize(
    "shape", [(56, 56), (112, 112), (27, 31), (31, 27), (14, 14), (300, 17), (1, 1)]
)
def test_odd_sizes_become_28x28(
    shape: tuple[int, int], digits: tuple[np.ndarray, np.ndarray]
) -> None:
    img = digits[0][5]
    h, w = shape
    resized = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BICUBIC))
    out = load_digit(png_bytes(resized))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    if shape in ((56, 56), (112, 112)):
        assert _correlation(out, img) > 0.97  # a square enlargement comes back close


def test_non_square_keeps_the_aspect_ratio() -> None:
    """A tall white bar on black, 56x28: padded to a square, so it stays a tall bar."""
    bar = np.zeros((56, 28), np.uint8)
    bar[4:52, 10:18] = 255
    out = load_digit(png_bytes(bar))
    rows = np.flatnonzero(out.max(axis=1) > 128)
    cols = np.flatnonzero(out.max(axis=0) > 128)
    assert rows.size > 2 * cols.size  # still about 6 times taller than wide
    assert cols.min() >= 9 and cols.max() <= 18  # centred, padding on both sides


# -- fit ----------------------------------------------------------------------------------------
def _photo(
    img: np.ndarray, scale: float, top: int, left: int, size: int, seed: int = 0
) -> np.ndarray:
    """Dark ink, digit cropped and scaled ``scale`` times, at (top, left) on noisy light paper."""
    rng = np.random.default_rng(seed)
    rows, cols = np.flatnonzero(img.any(1)), np.flatnonzero(img.any(0))
    crop = img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    big = (
        np.asarray(
            Image.fromarray(crop).resize(
                (round(w * scale), round(h * scale)), Image.Resampling.BICUBIC
            ),
            np.float32,
        )
        / 255.0
    )
    paper = 215 + rng.normal(0, 8, (size, size))
    alpha = np.zeros((size, size), np.float32)
    alpha[top : top + big.shape[0], left : left + big.shape[1]] = big
    return np.clip(paper * (1 - alpha) + 40 * alpha, 0, 255).astype(np.uint8)


def test_fit_recovers_an_off_centre_enlarged_digit_on_noisy_paper(
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    images, _ = digits
    for k, img in enumerate(images[:10]):
        photo = _photo(img, scale=2.5, top=5 + k, left=40 - k, size=96, seed=k)
        plain = load_digit(png_bytes(photo))  # no fit: a small shifted digit, far from MNIST
        fitted = load_digit(png_bytes(photo), fit=True)
        assert _similarity(fitted, img) > 0.85, k
        assert _similarity(fitted, img) > _similarity(plain, img) + 0.3, k
        # MNIST layout: box longer side 20 px, centre of mass at the centre, clean background.
        on = fitted > 0
        rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
        assert max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) == FIT_BOX
        ys, xs = np.indices(fitted.shape)
        mass = fitted.astype(float).sum()
        assert abs((ys * fitted).sum() / mass - 14) < 1.0
        assert abs((xs * fitted).sum() / mass - 14) < 1.0
        # The noisy paper is gone: no speckle in the corners, most of the field is 0.
        assert max(fitted[:2, :2].max(), fitted[:2, -2:].max(), fitted[-2:, :2].max()) == 0
        assert (fitted > 0).mean() < 0.5


def test_fit_keeps_an_mnist_digit_nearly_unchanged(digits: tuple[np.ndarray, np.ndarray]) -> None:
    for img in digits[0][:10]:
        assert _correlation(load_digit(png_bytes(img), fit=True), img) > 0.9


def test_fit_on_a_blank_or_flat_image_gives_a_blank_digit() -> None:
    assert not fit_mnist(np.zeros((40, 40), np.uint8)).any()
    assert not fit_mnist(np.full((40, 40), 200, np.uint8)).any()
    assert load_digit(png_bytes(np.full((28, 28), 255, np.uint8)), fit=True).max() == 0


# -- bad files -------------------------------------------------------------------------------------
def _huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` (valid CRC), with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"hello, I am text\n", "not a recognised image"),
        ("truncated", "truncated"),
        ("header-only", "corrupt or truncated PNG"),
        (_huge_png_header(20000, 20000), "too large"),  # Pillow's own limit
        (_huge_png_header(9000, 9000), r"too large: 9000x9000 pixels \(limit"),  # ours
    ],
)
def test_bad_files_raise_image_errors_with_a_reason(
    content: bytes | str, reason: str, tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    good = png_bytes(digits[0][0])
    if content == "truncated":
        content = good[: len(good) // 2]
    elif content == "header-only":
        content = good[:40]
    path = tmp_path / "bad.png"
    path.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(ImageError, match=reason) as info:
        load_digit(path)
    assert "\n" not in str(info.value)


def test_unreadable_paths_raise_image_errors(tmp_path: Path) -> None:
    link = tmp_path / "broken.png"
    link.symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(ImageError, match="broken symbolic link"):
        load_digit(link)
    with pytest.raises(ImageError, match="not found"):
        load_digit(tmp_path / "missing.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageError, match="folder"):
        load_digit(tmp_path / "folder.png")


def test_unreadable_file_is_an_image_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked.png"
    locked.write_bytes(b"x")

    real_open = os.open

    def denied(path: object, *args: object, **kwargs: object) -> object:
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("lstm_export.fileio.os.open", denied)
    with pytest.raises(ImageError, match="cannot read: Permission denied"):
        load_digit(locked)


def test_decode_files_reports_each_file_and_never_raises(
    tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    img = digits[0][0]
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes(img))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    out, errors = decode_files([str(good), str(empty), str(good)])
    assert out.shape == (3, 28, 28) and out.dtype == np.uint8
    assert errors[0] is None and errors[2] is None and "empty" in (errors[1] or "")
    assert np.array_equal(out[0], img) and not out[1].any()


def test_image_extensions_are_case_insensitive() -> None:
    for name in ("a.png", "b.PNG", "c.JpEg", "d.tif", "e.webp", "f.bmp", "g.gif"):
        assert is_image_name(name), name
    for name in ("notes.txt", "model.onnx", "png", "archive.png.zip"):
        assert not is_image_name(name), name


def test_preprocessing_description_is_recorded_for_checkpoints() -> None:
    desc = describe()
    assert desc["scale"] == "uint8 / 255"
    assert "image_files" in desc and "polarity" in desc["image_files"]


# -- hostile files (issue 9) -----------------------------------------------------------------------
def test_exif_orientation_of_a_png_is_applied() -> None:
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:15] = 255  # a vertical bar with a foot: not symmetric under rotation
    digit[21:24, 12:22] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored = Image.fromarray(np.rot90(digit, k=1))  # stored turned a quarter counter-clockwise
    data = _encode(stored, "PNG", exif=exif.tobytes())
    assert np.array_equal(load_digit(data), digit)
    assert np.array_equal(load_digit(png_bytes(digit)), digit)  # no EXIF: as it is


def test_read_bytes_refuses_fifos_devices_and_sockets_without_blocking(tmp_path: Path) -> None:
    """Each is refused after a stat, never opened for a blocking read (SIGALRM guards a hang)."""
    import signal
    import socket

    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.png"
    zero.symlink_to("/dev/zero")
    cases = [
        (fifo, r"a FIFO \(named pipe\)"),
        (zero, "a character device"),
        (Path("/dev/null"), "a character device"),
    ]
    sock = socket.socket(socket.AF_UNIX)
    if len(str(tmp_path / "s.png")) < 100:  # AF_UNIX path length limit
        sock.bind(str(tmp_path / "s.png"))
        cases.append((tmp_path / "s.png", "a socket"))

    def hung(signum: int, frame: object) -> None:
        raise TimeoutError("read_bytes blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        for path, kind in cases:
            with pytest.raises(ImageError, match=f"^is {kind}, not a regular file$"):
                read_bytes(path, max_bytes=1 << 20)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        sock.close()


def test_no_file_is_read_past_the_size_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 5000)
    with pytest.raises(ImageError, match=r"file too large: 5,008 bytes \(limit 4,096\)"):
        read_bytes(path, max_bytes=4096)
    assert len(read_bytes(path, max_bytes=5008)) == 5008
    assert max_file_bytes() == MAX_FILE_BYTES
    monkeypatch.setenv("LSTM_EXPORT_MAX_IMAGE_BYTES", "4096")
    assert max_file_bytes() == 4096
    _, errors = decode_files([str(path)])
    assert "file too large" in (errors[0] or "") and "LSTM_EXPORT_MAX_IMAGE_BYTES" in errors[0]
    monkeypatch.setenv("LSTM_EXPORT_MAX_IMAGE_BYTES", "lots")
    with pytest.raises(InputError, match="LSTM_EXPORT_MAX_IMAGE_BYTES must be a positive"):
        max_file_bytes()


def test_a_file_that_grows_while_read_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone still writing the file: its size at open and what was read differ."""
    path = tmp_path / "growing.png"
    path.write_bytes(b"x" * 100)
    real_fstat = os.fstat
    size_at_open = 60

    def fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        return os.stat_result((*st[:6], size_at_open, *st[7:10]))

    monkeypatch.setattr("lstm_export.fileio.os.fstat", fstat)
    with pytest.raises(ImageError, match=r"changed size while being read \(60 bytes"):
        read_bytes(path, max_bytes=1000)
    size_at_open = 0  # a size the file system does not know (like /proc): read up to the limit
    with pytest.raises(ImageError, match="file too large: over 80 bytes"):
        read_bytes(path, max_bytes=80)
    assert len(read_bytes(path, max_bytes=100)) == 100


@pytest.mark.parametrize("mode, fill", [("RGBA", (30, 30, 30, 128)), ("I;16", 40000)])
def test_a_huge_image_decodes_in_bounded_memory(mode: str, fill: object, tmp_path: Path) -> None:
    """An 8000x8000 PNG of a few hundred KB (it took 1.6-1.8 GB) decodes in under 1 GB: it is
    reduced in Pillow's integer modes before any float copy. The peak is the child's VmHWM:
    ``ru_maxrss`` would carry the forking test process's own peak across exec."""
    import subprocess
    import sys

    path = tmp_path / "huge.png"
    Image.new(mode, (8000, 8000), fill).save(path)  # type: ignore[arg-type]
    assert path.stat().st_size < 2**20
    code = (
        "import re, sys\n"
        "from lstm_export.infer.images import decode_files\n"
        "digits, errors = decode_files([sys.argv[1]], 'no')\n"
        "status = open('/proc/self/status').read()\n"
        "peak = int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)) * 1024\n"
        "print(errors[0], int(digits.mean()), peak)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    error, level, peak = done.stdout.split()
    assert error == "None" and int(level) > 0, done.stdout + done.stderr
    assert int(peak) < 2**30, f"peak RSS {int(peak) / 2**20:.0f} MiB"
