"""The four official MNIST IDX files: their names, their md5, finding and verifying them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from lstm_export.data.idx import idx_md5
from lstm_export.errors import DataError

# md5 of each file's uncompressed bytes (the values torchvision and the original site publish).
MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def find_file(directory: Path, name: str) -> Path | None:
    """The raw or ``.gz`` copy of ``name`` in ``directory``, raw preferred."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_files(directory: Path, names: Iterable[str] = MD5) -> dict[str, Path]:
    """The named files of ``directory``; DataError naming the folder or the first missing file."""
    if not directory.is_dir():
        raise DataError(f"MNIST folder {directory} does not exist")
    paths = {}
    for name in names:
        path = find_file(directory, name)
        if path is None:
            raise DataError(f"MNIST folder {directory} is missing {name} (or {name}.gz)")
        paths[name] = path
    return paths


def verify_dir(directory: Path) -> None:
    """Check that all four files are present and match the official md5; raise DataError if not."""
    for check in check_dir(directory):
        if not check.md5_ok:
            raise DataError(
                f"{check.path} is corrupt: md5 {check.md5} is not the official {check.expected_md5}"
            )


@dataclass(frozen=True)
class FileCheck:
    """One MNIST file as found on disk: its size and whether its md5 is the official one."""

    name: str
    path: Path
    size: int  # bytes on disk (compressed size for a .gz copy)
    md5: str  # of the uncompressed bytes
    expected_md5: str

    @property
    def md5_ok(self) -> bool:
        return self.md5 == self.expected_md5

    def to_dict(self) -> dict[str, object]:
        found = {"path": str(self.path), "compressed": self.path.suffix == ".gz"}
        return {**asdict(self), **found, "md5_ok": self.md5_ok}


def check_dir(directory: Path) -> list[FileCheck]:
    """Size and md5 of each of the four files; DataError if one is missing or unreadable."""
    return [
        FileCheck(name, path, path.stat().st_size, idx_md5(path), MD5[name])
        for name, path in find_files(Path(directory)).items()
    ]
