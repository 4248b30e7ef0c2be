"""Folder walking: what is found, what is skipped, in which order, and that loops end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lstm_export.errors import InputError
from lstm_export.infer.walk import walk_images


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def _relative(root: Path, recursive: bool = True) -> list[str]:
    return walk_images(root, recursive=recursive).names


def test_nested_spaces_non_ascii_and_upper_case_extensions(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "b.png",
        "A.PNG",
        "sub folder/ünïcödé.JpG",
        "sub folder/deeper/still/x.tiff",
        "sub folder/deeper/y.WebP",
        "z/1.gif",
        "z/2.bmp",
        "notes.txt",
        "z/model.onnx",
        "z/README",
    )
    walk = walk_images(tmp_path)
    assert walk.names == [
        "A.PNG",
        "b.png",
        "sub folder/deeper/still/x.tiff",
        "sub folder/deeper/y.WebP",
        "sub folder/ünïcödé.JpG",
        "z/1.gif",
        "z/2.bmp",
    ]
    assert walk.skipped == 3 and walk.hidden == 0 and walk.unreadable == []


def test_order_is_by_path_parts_and_stable(tmp_path: Path) -> None:
    """Sorted by path parts: a folder's files stay together ('a/...' before 'a b.png')."""
    _touch(tmp_path, "a.png", "a b.png", "a/z.png", "a/b/c.png", "a-/d.png")
    expected = ["a/b/c.png", "a/z.png", "a b.png", "a-/d.png", "a.png"]
    assert _relative(tmp_path) == expected
    assert _relative(tmp_path) == expected


def test_hidden_files_and_folders_are_left_out(tmp_path: Path) -> None:
    _touch(tmp_path, "ok.png", ".hidden.png", ".git/objects/x.png", "d/.DS_Store", "d/.cache/y.png")
    walk = walk_images(tmp_path)
    assert walk.names == ["ok.png"]
    assert walk.hidden == 4  # .hidden.png, .git, .DS_Store, .cache (folders counted once)
    assert walk.skipped == 0


def test_not_recursive_stays_at_the_top(tmp_path: Path) -> None:
    _touch(tmp_path, "top.png", "sub/inner.png")
    assert _relative(tmp_path, recursive=False) == ["top.png"]
    assert _relative(tmp_path) == ["sub/inner.png", "top.png"]


def test_symlink_loops_end_and_each_real_folder_is_walked_once(tmp_path: Path) -> None:
    _touch(tmp_path, "a/x.png", "b/y.png")
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)  # a/loop -> root
    (tmp_path / "b" / "self").symlink_to(tmp_path / "b", target_is_directory=True)
    (tmp_path / "alias").symlink_to(tmp_path / "a", target_is_directory=True)
    files = _relative(tmp_path)
    assert sorted(files) == files
    assert {f.rsplit("/", 1)[-1] for f in files} == {"x.png", "y.png"}
    assert len(files) == 2  # each real file once, whichever route reached it first


def test_symlinked_files_and_broken_links_are_listed(tmp_path: Path) -> None:
    _touch(tmp_path, "real/x.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "real" / "x.png")
    (tmp_path / "broken.png").symlink_to(tmp_path / "gone.png")
    assert _relative(tmp_path) == ["broken.png", "link.png", "real/x.png"]


def test_unreadable_folder_is_reported_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _touch(tmp_path, "ok.png", "locked/x.png")
    real_scandir = os.scandir

    def scandir(path: str | os.PathLike[str]) -> object:
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr("lstm_export.infer.walk.os.scandir", scandir)
    walk = walk_images(tmp_path)
    assert walk.names == ["ok.png"]
    assert walk.unreadable == ["locked: Permission denied"]


def test_a_single_image_file_and_missing_folders(tmp_path: Path) -> None:
    _touch(tmp_path, "one.png", "notes.txt")
    walk = walk_images(tmp_path / "one.png")
    assert walk.names == ["one.png"] and walk.paths == [str(tmp_path / "one.png")]
    with pytest.raises(InputError, match="does not exist"):
        walk_images(tmp_path / "nope")
    with pytest.raises(InputError, match="image extension"):
        walk_images(tmp_path / "notes.txt")


def test_empty_folder_finds_nothing(tmp_path: Path) -> None:
    walk = walk_images(tmp_path)
    assert walk.paths == [] and walk.skipped == 0


def test_folder_must_be_a_folder_or_a_regular_file(tmp_path: Path) -> None:
    """A FIFO, device or socket as FOLDER: one error naming what it is, no warning first."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"pipe.png is a FIFO \(named pipe\), not a folder"):
        walk_images(fifo)
    zero = tmp_path / "zero.png"
    zero.symlink_to("/dev/zero")
    with pytest.raises(InputError, match=r"zero\.png is a character device, not a folder"):
        walk_images(zero)


def test_fifos_devices_and_odd_names_inside_the_folder_are_listed(tmp_path: Path) -> None:
    """They get rows (with their error from decoding); any bytes in a name are kept."""
    _touch(tmp_path, "ok.png")
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")  # out of the folder: a row, never read
    odd = [b"caf\xe9.png", b"cr\rname.png", b"=1+1.png", b"n" * 251 + b".png"]
    for name in odd:
        with open(os.path.join(os.fsencode(tmp_path), name), "wb") as f:
            f.write(b"x")
    walk = walk_images(tmp_path)
    assert sorted(os.fsencode(n) for n in walk.names) == sorted(
        [b"ok.png", b"fifo.png", b"zero.png", *odd]
    )
    assert walk.skipped == 0 and walk.unreadable == []
    zero = walk.names.index("zero.png")
    assert set(walk.refused) == {zero}
    assert walk.refused[zero] == (
        "symbolic link to /dev/zero, which is a character device, not a regular file, outside "
        "the folder: not followed"
    )


def test_links_out_of_the_folder_are_not_followed(tmp_path: Path) -> None:
    """A link to ``/`` is reported, never walked; a file link out is a refused row; inside links
    are followed; ``follow_links`` follows them all (loops still end)."""
    import time

    root, outside = tmp_path / "digits", tmp_path / "elsewhere"
    _touch(root, "a/x.png")
    _touch(outside, "secret.png", "deep/y.png")
    (root / "everything").symlink_to("/", target_is_directory=True)
    (root / "away").symlink_to(outside, target_is_directory=True)
    (root / "stolen.png").symlink_to(outside / "secret.png")
    (root / "here.png").symlink_to(root / "a" / "x.png")  # inside: followed
    started = time.perf_counter()
    walk = walk_images(root)
    assert time.perf_counter() - started < 5
    assert walk.names == ["a/x.png", "here.png", "stolen.png"]
    assert walk.refused == {
        2: f"symbolic link to {outside / 'secret.png'}, outside the folder: not followed"
    }
    assert walk.unreadable == [
        f"away: symbolic link to {outside}, outside the folder: not followed",
        "everything: symbolic link to /, outside the folder: not followed",
    ]
    followed = walk_images(root / "away", follow_links=False)  # a link as FOLDER is the folder
    assert followed.names == ["deep/y.png", "secret.png"]
    (root / "everything").unlink()
    walk = walk_images(root, follow_links=True)
    assert walk.names == ["a/x.png", "away/deep/y.png", "away/secret.png", "here.png", "stolen.png"]
    assert walk.refused == {} and walk.unreadable == []


def test_glob_patterns_are_walked_and_merged(tmp_path: Path) -> None:
    _touch(tmp_path, "0/a.png", "3/b.png", "3/c.png", "7/d.png", "notes.txt")
    (tmp_path / "5").mkdir()
    (tmp_path / "5" / "out.png").symlink_to("/dev/zero")
    whole = walk_images(tmp_path)
    part = walk_images(str(tmp_path / "[0-5]"))
    assert part.root == tmp_path
    assert part.names == ["0/a.png", "3/b.png", "3/c.png", "5/out.png"]
    assert part.paths == [
        p for p, n in zip(whole.paths, whole.names, strict=True) if n in part.names
    ]
    assert list(part.refused) == [3] and "outside the folder" in part.refused[3]
    assert walk_images(str(tmp_path / "*" / "c.png")).names == ["3/c.png"]
    with pytest.raises(InputError, match="nothing matches"):
        walk_images(str(tmp_path / "nope-*"))
