"""Hostile inputs (issue 9): no hang, no unbounded memory, no file lost, every row intact.

The cases that could hang or eat the machine on a regression (FIFOs, devices, gzip bombs) run in
a child process under a time limit and a memory limit (:func:`run_limited`), so a regression fails
the test instead of blocking the suite or swapping. The memory limit is ``RLIMIT_DATA`` (every heap
allocation, Linux >= 4.7): ``RLIMIT_AS`` would have to allow the ~4 GiB of address space torch's
libraries map at import, far above what a runaway read needs to be caught.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import pickle
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lstm_export.errors import CheckpointError, DataError, OutputError
from lstm_export.infer.writers import decode_cell, encode_cell, escape_text, unescape_text

#: memory limit of every child process (RLIMIT_DATA); the CLI needs about 1 GiB of it
MEMORY_LIMIT = 2 * 2**30
#: seconds a CLI run may take (a tiny model on a handful of files: a few seconds)
CLI_TIMEOUT = 180
CLI = "from lstm_export.cli import main; main()"


# -- helpers -------------------------------------------------------------------------------------
def _limits(memory: int, file_size: int | None = None) -> Callable[[], None]:
    """Limits of a child: heap ``memory``, no core file, and with ``file_size`` a file-size limit
    past which write(2) fails with EFBIG (SIGXFSZ ignored, else the kernel kills the writer)."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    return apply


def run_limited(
    argv: list[Any],
    *,
    timeout: float = CLI_TIMEOUT,
    memory: int = MEMORY_LIMIT,
    file_size: int | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` under :func:`_limits`; fail the test (killing its process group) on timeout."""
    argv = [a if isinstance(a, (str, bytes, os.PathLike)) else str(a) for a in argv]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_limits(memory, file_size),
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"still running after {timeout} s (hung?): {argv}\n{err.decode()[-3000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def cli(*args: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """``lstm-export ARGS`` as a user runs it, in a limited child process."""
    return run_limited([sys.executable, "-c", CLI, *args], env=env)


def python(code: str, *args: Any, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Python ``code`` in a limited child process."""
    return run_limited([sys.executable, "-c", textwrap.dedent(code), *args], timeout=timeout)


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _digit() -> bytes:
    img = np.zeros((28, 28), np.uint8)
    img[5:23, 12:16] = 255
    return _png(img)


def _huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` (valid CRC), with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _write(folder: Path, name: bytes, data: bytes) -> None:
    with open(os.path.join(os.fsencode(folder), name), "wb") as f:
        f.write(data)


@pytest.fixture
def model(make_checkpoint: Callable[..., Path]) -> Path:
    """A tiny untrained checkpoint (eager backend)."""
    return make_checkpoint(hidden_size=8, num_layers=1)


# -- the hostile folder, run as a user would ---------------------------------------------------------
#: names that must classify, whatever their bytes (formula-like, quotes, \r, \n, not UTF-8, long)
GOOD = [
    b"good.png",
    b"caf\xe9.png",
    b"cr\rname.png",
    b"nl\nname.png",
    b'=HYPERLINK("x","y").png',
    b"+1.png",
    b"-2.png",
    b"@sum.png",
    b"'quoted.png",
    b"back\\x41slash.png",
    b"d" * 251 + b".png",
]
#: names that must get an error row, and what it says
BAD = {
    b"fifo.png": r"is a FIFO \(named pipe\), not a regular file",
    b"zero.png": "is a character device, not a regular file",
    b"urandom.png": "is a character device, not a regular file",
    b"sock.png": "is a socket, not a regular file",
    b"huge.png": r"image too large: 10000x10000 pixels",
    b"big.png": r"file too large: 100,008 bytes \(limit 65,536\)",
}
FORMULAS = [name for name in GOOD if name[:1] in b"=+-@'"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder of everything issue 9 lists: FIFO, devices, socket, odd names, huge images."""
    folder = tmp_path_factory.mktemp("hostile")
    for name in GOOD:
        _write(folder, name, _digit())
    os.mkfifo(folder / "fifo.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "urandom.png").symlink_to("/dev/urandom")
    sock = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(folder)  # AF_UNIX paths are limited to ~108 bytes: bind by a relative name
    try:
        sock.bind("sock.png")
    finally:
        os.chdir(cwd)
    _write(folder, b"huge.png", _huge_png_header(10000, 10000))  # also Pillow's bomb warning
    _write(folder, b"big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 100_000)
    yield folder
    sock.close()


def _rows(result: subprocess.CompletedProcess[bytes], out: Path | None, fmt: str) -> dict:
    """``{name bytes: row}`` from the output, parsed strictly (UTF-8, CSV or JSON)."""
    if fmt == "jsonl":
        assert out is not None
        lines = out.read_bytes().decode("utf-8").splitlines()
        records = [json.loads(line) for line in lines]
    else:
        text = (out.read_bytes() if out is not None else result.stdout).decode("utf-8")
        records = list(csv.DictReader(io.StringIO(text, newline="")))
        for record in records:  # no cell a spreadsheet would run as a formula
            for value in record.values():
                assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), record
    rows = {os.fsencode(decode_cell(r["path"], fmt)): r for r in records}
    assert len(rows) == len(records) == len(GOOD) + len(BAD)
    return rows


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "stdout"])
def test_hostile_folder_every_file_one_intact_row_no_hang(
    fmt: str, hostile: Path, model: Path, tmp_path: Path
) -> None:
    """Cases 1, 2, 5, 6, 7 and 11 of issue 9 (and a socket, a 255-byte name, a file over the
    size limit) through ``lstm-export infer``, under a time and a memory limit."""
    out = None if fmt == "stdout" else tmp_path / f"rows.{fmt}"
    args = ["infer", model, hostile, "--no-progress", *(["-o", out] if out else [])]
    result = cli(*args, env={"LSTM_EXPORT_MAX_IMAGE_BYTES": "65536"})
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0, stderr
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr
    rows = _rows(result, out, "csv" if fmt == "stdout" else fmt)
    assert set(rows) == set(GOOD) | set(BAD)
    for name in GOOD:
        assert not rows[name]["error"] and rows[name]["prediction"] not in ("", None), name
    for name, reason in BAD.items():
        assert rows[name]["prediction"] in ("", None), name
        assert re.search(reason, rows[name]["error"]), (name, rows[name]["error"])
    for name in FORMULAS:
        cell = rows[name]["path"]
        assert cell == ("'" if fmt != "jsonl" else "") + name.decode()


def test_fifo_as_folder_is_one_error_line(model: Path, tmp_path: Path) -> None:
    """Case 11: a FIFO given as FOLDER is one error line, no warning before it, no hang."""
    fifo = tmp_path / "digits"
    os.mkfifo(fifo)
    result = cli("infer", model, fifo, "--no-progress")
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, lines
    assert lines[0] == f"error: {fifo} is a FIFO (named pipe), not a folder nor an image file"


# -- writers: any bytes, formulas -----------------------------------------------------------------
def test_every_name_round_trips_through_both_formats() -> None:
    """Case 5: escaping is reversible for any bytes; the output is always valid UTF-8."""
    rng = np.random.default_rng(9)
    names = [
        bytes(rng.integers(1, 256, size=int(rng.integers(1, 40)), dtype=np.uint8))
        for _ in range(3000)
    ]
    names += [b"caf\xe9", b"a\\b", b"a\\xe9", b"\\\\", b"'", b"''x", b"=1", b"\xed\xb3\xa9"]
    for raw in names:
        name = os.fsdecode(raw.replace(b"/", b"_"))
        for fmt in ("csv", "jsonl"):
            cell = encode_cell(name, fmt)
            cell.encode("utf-8")  # no lone surrogate left
            assert decode_cell(cell, fmt) == name, (raw, cell)
        assert unescape_text(escape_text(name)) == name
    assert escape_text("caf\udce9.png") == "caf\\xe9.png"
    assert escape_text("a\\b") == "a\\\\b" and escape_text("plain ünï.png") == "plain ünï.png"
    assert encode_cell("=1+1", "csv") == "'=1+1" and encode_cell("=1+1", "jsonl") == "=1+1"
    assert encode_cell("'x", "csv") == "''x" and decode_cell("''x", "csv") == "'x"


def test_names_printed_on_a_terminal_cannot_drive_it() -> None:
    """A neighbour of cases 5-7: escape sequences, CR and bidi overrides in a name, on stderr."""
    from lstm_export.infer.writers import printable_text

    for name in ["a\x1b]0;pwned\x07b", "cr\rx", "caf\udce9", "rlo\u202egnp.exe", "c1\x85", "ok ü"]:
        shown = printable_text(name)
        assert shown.isprintable() and "\u202e" not in shown, shown
        assert unescape_text(shown) == name
    assert printable_text("a\x1b[31mb") == "a\\x1b[31mb" and printable_text("ok ü") == "ok ü"


def test_rows_with_odd_names_survive_csv_and_jsonl(tmp_path: Path) -> None:
    """Cases 5, 6, 7 at the writer: non-UTF-8, \\r, formulas; the temp file never lingers."""
    from lstm_export.infer.classify import Prediction
    from lstm_export.infer.writers import open_rows

    names = ["caf\udce9.png", "cr\rx.png", "lf\nx.png", "=cmd|' /C calc'!A0.png", "-1.png", "ok"]
    rows = [Prediction(n, "3", 0.5, None, "3", None) for n in names]
    rows.append(Prediction("@err.png", None, None, "=not a formula", "1", None))
    for fmt in ("csv", "jsonl"):
        out = tmp_path / f"p.{fmt}"
        with open_rows(out, labelled=True) as writer:
            writer.write(rows)
        text = out.read_bytes().decode("utf-8")  # strict: valid UTF-8
        if fmt == "csv":
            table = list(csv.DictReader(io.StringIO(text, newline="")))
        else:
            table = [json.loads(line) for line in text.splitlines()]
        assert [decode_cell(r["path"], fmt) for r in table] == [r.path for r in rows]
        assert decode_cell(table[-1]["error"], fmt) == "=not a formula"
        if fmt == "csv":
            assert table[3]["path"].startswith("'=") and table[-1]["error"].startswith("'=")
        else:
            assert table[3]["path"] == names[3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "p.jsonl"]


# -- outputs: never an input, never a device, long names, read-only places --------------------------
def test_an_output_may_not_be_an_input(tmp_path: Path, model: Path) -> None:
    """Case 4 (the check; infer's CLI calls it before any work)."""
    from lstm_export.fileio import check_outputs_against_inputs
    from lstm_export.infer.walk import walk_images

    folder = tmp_path / "digits"
    (folder / "3").mkdir(parents=True)
    (folder / "3" / "a.png").write_bytes(_digit())
    (tmp_path / "alias").symlink_to(folder, target_is_directory=True)
    inputs = [str(model), *walk_images(folder).paths]
    for out in (
        folder / "3" / "a.png",
        folder / "3" / ".." / "3" / "a.png",
        tmp_path / "alias" / "3" / "a.png",
        model,
        model.parent / "." / model.name,
    ):
        with pytest.raises(OutputError, match=r"is the input file .*refusing to overwrite"):
            check_outputs_against_inputs([out, None], inputs)
    summary = tmp_path / "s.json"
    with pytest.raises(OutputError, match="given as two outputs"):
        check_outputs_against_inputs([summary, tmp_path / "." / "s.json"], inputs)
    (tmp_path / "old.csv").write_text("previous run")
    check_outputs_against_inputs([tmp_path / "new.csv", tmp_path / "old.csv", summary], inputs)
    with pytest.raises(OutputError, match="is a folder"):
        check_outputs_against_inputs([folder], inputs)
    assert (folder / "3" / "a.png").read_bytes() == _digit()


def test_infer_refuses_to_write_over_an_input(tmp_path: Path, model: Path) -> None:
    """Case 4 through the CLI: -o on an input image or on the model is refused, both intact."""
    folder = tmp_path / "digits"
    folder.mkdir()
    (folder / "a.png").write_bytes(_digit())
    before = model.read_bytes()
    for out in (folder / "a.png", model):
        result = cli("infer", model, folder, "-o", out, "--format", "csv", "--no-progress")
        assert result.returncode == 1, result.stderr.decode()
        assert b"refusing to overwrite an input" in result.stderr
    assert (folder / "a.png").read_bytes() == _digit() and model.read_bytes() == before


def test_devices_and_fifos_are_never_replaced_by_an_output(tmp_path: Path) -> None:
    """As root, renaming a temporary file onto ``-o /dev/null`` would replace the device."""
    from lstm_export.fileio import atomic_open, check_writable_file

    fifo = tmp_path / "out.csv"
    os.mkfifo(fifo)
    for target, kind in ((Path("/dev/null"), "a character device"), (fifo, "a FIFO")):
        with pytest.raises(OutputError, match=f"is {kind}.*not a regular file"):
            check_writable_file(target)
        with pytest.raises(OutputError, match=f"is {kind}"), atomic_open(target) as f:
            f.write("x")
    assert Path("/dev/null").is_char_device()


def test_output_names_of_255_bytes(tmp_path: Path) -> None:
    """The temporary name beside a 255-byte target keeps only part of it (else ENAMETOOLONG)."""
    from lstm_export.fileio import atomic_open, write_text_atomic

    for i, write in enumerate((write_text_atomic, None)):
        target = tmp_path / (str(i) * 251 + ".csv")
        if write is not None:
            write(target, "x\n")
        else:
            with atomic_open(target) as f:
                f.write("x\n")
        assert target.read_text() == "x\n"
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_output_in_a_place_that_takes_no_files(fmt: str, tmp_path: Path) -> None:
    """/proc accepts no new files, even for root: one clear error before any row is written."""
    from lstm_export.infer.writers import open_rows

    with (
        pytest.raises(OutputError, match="not writable"),
        open_rows(Path(f"/proc/rows.{fmt}"), labelled=False),
    ):
        pytest.fail("the writer opened")


_WRITE_INTO = """
    import os, sys
    from pathlib import Path
    from lstm_export.errors import OutputError
    from lstm_export.infer.writers import open_rows  # imported first: nobody cannot read /root
    if os.geteuid() == 0:  # root writes into read-only folders anyway: be nobody
        os.setgid(65534)
        os.setuid(65534)
    try:
        with open_rows(Path(sys.argv[1]), labelled=False):
            print("opened")
    except OutputError as exc:
        print("OutputError:", exc)
"""


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_output_in_a_read_only_folder(fmt: str) -> None:
    """A folder the user may not write into: one clear error, nothing written (run as an
    unprivileged user, also when the tests run as root)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="read-only-"))  # in /tmp, reachable by any user
    try:
        folder.chmod(0o555)
        result = python(_WRITE_INTO, folder / f"rows.{fmt}")
        said = result.stdout.decode().strip()
        assert said.startswith("OutputError:") and "not writable" in said, result.stderr.decode()
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


# -- signals: complete output or none, never a temporary file ---------------------------------------
_WRITE_THEN_SIGNAL = """
    import os, signal, sys, time
    from pathlib import Path
    from types import SimpleNamespace
    from lstm_export import fileio
    from lstm_export.infer.writers import open_rows

    out, signum, unnamed = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    if not unnamed:
        fileio._unnamed_file = lambda directory: None  # the named temporary file
    row = SimpleNamespace(path="a.png", label=None, prediction="1", confidence=0.5, error=None,
                          probabilities=None)
    try:
        with open_rows(out, labelled=False) as writer:
            writer.write([row] * 1000)
            writer.stream.flush()
            print("writing", flush=True)
            os.kill(os.getpid(), signum)
            time.sleep(30)
        print("finished", flush=True)
    except KeyboardInterrupt:  # Terminated for SIGTERM and SIGHUP
        print("stopped by", fileio.terminated_by(), flush=True)
        sys.exit(128 + (fileio.terminated_by() or signal.SIGINT))
"""


def _unnamed_files_work(folder: Path) -> bool:
    from lstm_export.fileio import _unnamed_file

    fd = _unnamed_file(folder)
    if fd is None:
        return False
    os.close(fd)
    return True


#: (signal, rows file unnamed): a named temporary file is removed on every signal but SIGKILL,
#: which nothing can catch; there only the unnamed (O_TMPFILE) file leaves nothing behind
_SIGNAL_CASES = [
    (sig, unnamed)
    for sig in ("SIGTERM", "SIGHUP", "SIGINT", "SIGKILL")
    for unnamed in (True, False)
    if unnamed or sig != "SIGKILL"
]


@pytest.mark.parametrize(
    ("sig", "unnamed"),
    _SIGNAL_CASES,
    ids=[f"{sig}-{'O_TMPFILE' if unnamed else 'named-temp'}" for sig, unnamed in _SIGNAL_CASES],
)
def test_a_signal_mid_write_leaves_the_old_output_and_no_temporary_file(
    sig: str, unnamed: bool, tmp_path: Path
) -> None:
    """Case 8 at the writer: the previous output survives, and nothing else is left."""
    if unnamed and not _unnamed_files_work(tmp_path):
        pytest.skip("no O_TMPFILE on this file system")
    out = tmp_path / "rows.csv"
    out.write_text("previous run\n")
    signum = int(getattr(signal, sig))
    result = python(_WRITE_THEN_SIGNAL, out, signum, int(unnamed))
    said = result.stdout.decode().splitlines()
    if sig == "SIGKILL":
        assert said == ["writing"] and result.returncode == -signum
    else:
        by = None if sig == "SIGINT" else signum
        assert said == ["writing", f"stopped by {by}"], result.stderr.decode()
        assert result.returncode == 128 + signum
    assert out.read_text() == "previous run\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rows.csv"]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_infer_killed_mid_run_leaves_the_old_output_and_no_temporary_file(
    sig: str, model: Path, tmp_path: Path
) -> None:
    """Case 8 through the CLI: a run stopped by SIGTERM (or SIGKILL) half way through."""
    if not _unnamed_files_work(tmp_path) and sig == "SIGKILL":
        pytest.skip("no O_TMPFILE on this file system")
    folder = tmp_path / "digits"
    folder.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, size=(512, 512), dtype=np.uint8)
    (folder / "0.png").write_bytes(_png(noise))  # about 2 ms to decode
    for i in range(1, 3000):
        os.link(folder / "0.png", folder / f"{i}.png")
    outputs = tmp_path / "out"
    outputs.mkdir()
    out = outputs / "rows.csv"
    out.write_text("previous run\n")
    argv = [sys.executable, "-c", CLI, "infer", model, folder, "-o", out, "--no-progress"]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_limits(MEMORY_LIMIT),
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the run has started once its plan is printed
            if line.startswith(b"plan"):
                break
        time.sleep(1.0)
        still_running = proc.poll() is None
        proc.send_signal(getattr(signal, sig))
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert still_running, "the run ended before the signal: make the folder bigger"
    if sig == "SIGTERM":  # as a shell expects: 128 + 15, and one line saying why
        assert proc.returncode == 128 + signal.SIGTERM
        assert stderr.decode().strip().splitlines()[-1] == "error: terminated by SIGTERM"
    else:
        assert proc.returncode == -signal.SIGKILL
    assert out.read_text() == "previous run\n"
    assert [p.name for p in outputs.iterdir()] == ["rows.csv"]


# -- MNIST files: streamed, bounded, checked as they stream ----------------------------------------
def _gzip_bomb(path: Path, header: bytes, gib: int) -> None:
    """A ``.gz`` of a few MB that expands to ``gib`` GiB (``header`` then zeros)."""
    block = 64 * 2**20
    zeros = gzip.compress(b"\0" * block, compresslevel=1)
    with open(path, "wb") as f:
        f.write(gzip.compress(header + b"\0" * (block - len(header)), compresslevel=1))
        for _ in range(gib * 1024 // 64 - 1):
            f.write(zeros)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (struct.pack(">HBBIII", 0, 8, 3, 60000, 28, 28), "more than the 47,040,016 bytes its IDX"),
        (b"\0" * 16, "larger than the 268,435,456-byte limit"),
    ],
    ids=["mnist-header", "no-header"],
)
def test_gzip_bomb_is_stopped_while_streaming(header: bytes, reason: str, tmp_path: Path) -> None:
    """Case 3: a .gz that expands to 6 GiB is refused after at most 256 MiB, in bounded memory."""
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    _gzip_bomb(bomb, header, 6)
    result = python(
        """
        import sys
        from pathlib import Path
        from lstm_export.data.idx import read_idx
        from lstm_export.errors import DataError
        try:
            read_idx(Path(sys.argv[1]))
        except DataError as exc:
            print(exc)
        """,
        bomb,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert reason in result.stdout.decode()


def test_idx_md5_is_taken_as_it_streams(tmp_path: Path) -> None:
    """The md5 of the uncompressed bytes, streamed; a wrong one is test_data's corrupt file."""
    from lstm_export.data.idx import encode_idx, idx_md5, iter_idx_chunks, read_idx

    data = encode_idx(np.arange(600, dtype=np.uint8).reshape(6, 10, 10))
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(data))
    assert idx_md5(path) == hashlib.md5(data).hexdigest()
    assert b"".join(iter_idx_chunks(path)) == data
    assert read_idx(path).shape == (6, 10, 10)
    padded = tmp_path / "p-idx3-ubyte"
    padded.write_bytes(data + b"\0")
    with pytest.raises(DataError, match="oversized: more than the 616 bytes"):
        read_idx(padded)


def test_idx_files_that_are_fifos_or_devices_are_refused(tmp_path: Path) -> None:
    """A FIFO or /dev/zero named like an MNIST file: an error, no hang, no endless read."""
    fifo = tmp_path / "t10k-labels-idx1-ubyte"
    os.mkfifo(fifo)
    zero = tmp_path / "t10k-images-idx3-ubyte.gz"
    zero.symlink_to("/dev/zero")
    result = python(
        """
        import sys
        from pathlib import Path
        from lstm_export.data.idx import read_idx
        from lstm_export.errors import DataError
        for name in sys.argv[1:]:
            try:
                read_idx(Path(name))
            except DataError as exc:
                print(exc)
        """,
        fifo,
        zero,
    )
    lines = result.stdout.decode().splitlines()
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert lines == [
        f"{fifo}: cannot read (is a FIFO (named pipe), not a regular file)",
        f"{zero}: cannot read (is a character device, not a regular file)",
    ]


# -- checkpoints: clear refusals --------------------------------------------------------------------
class _Payload:
    """Unpickling this runs ``os.system``: what a malicious checkpoint carries."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_a_checkpoint_with_code_says_so(tmp_path: Path) -> None:
    """Case 9: refused, and the message says the file holds code that may not load."""
    import torch

    from lstm_export.checkpoint import load_checkpoint

    zipped = tmp_path / "zip.pt"
    torch.save({"format": "lstm-export/checkpoint", "payload": _Payload()}, zipped)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"payload": _Payload()}, protocol=4))
    for path in (zipped, raw):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert "holds code (posix.system) that is not allowed to load" in message, message
        assert "not a PyTorch file" not in message
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(junk)


def test_weights_that_do_not_fit_the_config_name_the_tensor(
    make_checkpoint: Callable[..., Path],
) -> None:
    """Case 9: which tensor, which shape in the file and which the config wants."""
    import torch

    from lstm_export.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(make_checkpoint(hidden_size=8, num_layers=1))
    ckpt["model_config"]["hidden_size"] = 16
    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(ckpt)
    message = str(info.value)
    assert "hidden_size 16" in message
    assert "lstm.weight_ih_l0 has shape (32, 28) in the file, (64, 28) for the config" in message
    ckpt["model_config"]["hidden_size"] = 8
    ckpt["state_dict"]["extra.weight"] = torch.zeros(1)
    del ckpt["state_dict"]["fc.bias"]
    with pytest.raises(
        CheckpointError, match=r"fc\.bias is missing; extra\.weight is not a weight"
    ):
        model_from_checkpoint(ckpt)


@pytest.mark.parametrize("command", ["onnx", "torchscript", "bench"])
def test_export_and_bench_outputs_may_not_replace_their_inputs(command: str, model: Path) -> None:
    """-o naming the checkpoint (or, for the bench, an exported file) is refused before any work."""
    before = model.read_bytes()
    result = subprocess.run(
        [sys.executable, "-c", CLI, command, model, "-o", model, "--no-validate"][
            : 7 if command == "bench" else 8
        ],
        capture_output=True,
        timeout=180,
        preexec_fn=_limits(MEMORY_LIMIT),
    )
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr.decode()
    assert lines[-1].startswith("error: ") and "input" in lines[-1]
    assert model.read_bytes() == before


def test_a_failed_train_leaves_no_empty_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "new-run"
    result = subprocess.run(
        [sys.executable, "-c", CLI, "train", "--out", out, "--data-dir", tmp_path / "no-mnist"],
        capture_output=True,
        timeout=180,
    )
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    assert not out.exists()
    kept = tmp_path / "existing"
    kept.mkdir()
    subprocess.run(
        [sys.executable, "-c", CLI, "train", "--out", kept, "--data-dir", tmp_path / "no-mnist"],
        capture_output=True,
        timeout=180,
    )
    assert kept.is_dir()  # a folder the user made is never removed


# -- a write that fails half way (a full disk) -----------------------------------------------------
#: file-size limit of the child: write(2) then fails with EFBIG part way through every output,
#: the same failing write a full disk (ENOSPC) gives, without needing a small file system
_WRITE_LIMIT = 2048


@pytest.mark.parametrize("case", ["infer-csv", "infer-jsonl", "onnx", "torchscript", "train"])
def test_a_write_that_fails_half_way_keeps_the_previous_file(
    case: str, model: Path, tmp_path: Path, mnist_dir: Path
) -> None:
    """Every writer, when the disk fills part way: one line naming the file, exit 1, the previous
    file intact and no temporary file left (torch's own writers abort or fail obscurely there, so
    checkpoints and TorchScript files are serialised in memory and written by Python)."""
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    if case.startswith("infer"):
        folder = tmp_path / "digits"
        folder.mkdir()
        (folder / "0.png").write_bytes(_digit())
        for i in range(1, 300):  # about 10 KB of rows
            os.link(folder / "0.png", folder / f"{i}.png")
        target = outputs / f"rows.{case.split('-')[1]}"
        args = ["infer", model, folder, "-o", target, "--no-progress"]
    elif case == "train":
        target = outputs / "model.pt"
        args = ["train", "--out", outputs, "--subset", 200, "--test-subset", 200, "--epochs", 1]
        args += ["--hidden-size", 8, "--data-dir", mnist_dir]
    else:
        target = outputs / ("model.onnx" if case == "onnx" else "model.ts")
        args = [case, model, "-o", target, "--no-validate"]
    target.write_bytes(b"previous")
    proc = run_limited([sys.executable, "-c", CLI, *args], file_size=_WRITE_LIMIT)
    stderr = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == f"error: cannot write {target}: File too large"
    assert target.read_bytes() == b"previous"
    assert [p.name for p in outputs.iterdir()] == [target.name]
