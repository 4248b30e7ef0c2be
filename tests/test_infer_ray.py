"""``lstm-export infer --engine ray``: the same rows as the in-process engine, on Ray Data.

The runs that start Ray go through the CLI in a subprocess with a timeout, so a hang fails the
test instead of stalling the suite, and every cluster is this test's own: a local Ray the run
starts and stops, or a two-node ``ray.cluster_utils.Cluster`` torn down at the end. All of them
listen on the loopback address only.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from _cli_helpers import one_line_error
from _infer_helpers import png_bytes, uint8_test_set, write_digits
from lstm_export.cli import app

# Clusters made here (and the local Ray of the runs, which inherit it) bind 127.0.0.1 only.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

N = 240  # digits in the labelled folder (plus broken and odd files)
RUN_TIMEOUT_S = 420  # one CLI run on Ray, start-up included, on a loaded 2-core machine


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded, untrained model exported to ONNX (parity needs no accuracy; it is quick)."""
    import torch

    from lstm_export.checkpoint import make_checkpoint, save_checkpoint
    from lstm_export.config import ModelConfig
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.model import build_model

    out = tmp_path_factory.mktemp("ray-model")
    torch.manual_seed(0)
    model = build_model(ModelConfig()).eval()
    save_checkpoint(make_checkpoint(model, metrics={"test_accuracy": 0.0}), out / "model.pt")
    return Path(export_onnx(out / "model.pt", out / "model.onnx", validate=False).path)


@pytest.fixture(scope="module")
def folder(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N test digits in class folders, plus files that cannot be classified and odd names."""
    images, labels = uint8_test_set(mnist_dir)
    root = tmp_path_factory.mktemp("ray-digits")
    write_digits(root, images[:N], labels[:N])
    (root / "5" / "truncated.png").write_bytes(png_bytes(images[0])[:60])
    (root / "5" / "empty.png").write_bytes(b"")
    (root / "7" / "not-an-image.jpg").write_bytes(b"text, not a JPEG\n")
    (root / "7" / "notes.txt").write_text("skipped")
    (root / "2" / "=sum(1,2) ünï.png").write_bytes(png_bytes(images[1]))
    latin1 = os.path.join(os.fsencode(root / "3"), b"caf\xe9.png")  # not UTF-8
    with open(latin1, "wb") as f:
        f.write(png_bytes(images[2]))
    return root


@pytest.fixture(scope="module")
def in_process(onnx_model: Path, folder: Path) -> Any:
    """The in-process engine's result on ``folder`` (batch 16, the size the Ray runs use)."""
    from lstm_export.infer.classify import classify_folder

    return classify_folder(onnx_model, folder, batch_size=16, probabilities=True)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short folder for Ray's sockets (a pytest tmp_path can exceed the 107-byte limit)."""
    path = Path(tempfile.mkdtemp(prefix="lxr-", dir="/tmp"))
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# -- helpers ---------------------------------------------------------------------------------------
def _cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``lstm-export ARGS`` in a subprocess; a run that hangs fails the test after the timeout."""
    cmd = [sys.executable, "-m", "lstm_export", *[str(a) for a in args]]
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=full_env
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} did not finish in {RUN_TIMEOUT_S} s: {exc.stderr!r}")


def _csv_rows(path: Path) -> dict[str, dict[str, str]]:
    """``{path: row}`` of a CSV written by infer (path cells decoded back to the file's name)."""
    from lstm_export.infer.writers import decode_cell

    with open(path, encoding="utf-8", newline="") as f:
        return {decode_cell(r["path"], "csv"): r for r in csv.DictReader(f)}


def _assert_same_rows(rows: dict[str, dict[str, Any]], expected: Any, *, digits: int = 6) -> None:
    """``rows`` (path -> cells) are the in-process rows: same paths, predictions and errors."""
    want = {r.path: r for r in expected.rows}
    assert set(rows) == set(want)
    for path, row in rows.items():
        ref = want[path]
        assert (row["error"] or None) == ref.error, path
        assert (row["prediction"] or None) == ref.prediction, path
        assert (row.get("label") or None) == ref.label, path
        if ref.error is None:
            assert float(row["confidence"]) == pytest.approx(ref.confidence, abs=10**-digits)
        for name, p in zip(expected.summary.class_names, ref.probabilities or (), strict=False):
            assert float(row[f"p_{name}"]) == pytest.approx(p, abs=10**-digits)


#: set in the environment of every Ray this module starts: its processes (raylet, GCS, the
#: workers, whose command lines ray renames) inherit it, so they can be found, and only they
MARKER = "LSTM_EXPORT_RAY_TEST"


def _processes_marked(tag: str, wait_s: float = 20.0) -> list[int]:
    """Pids of live processes whose environment holds ``MARKER=tag``, once those still stopping
    had ``wait_s`` seconds to go."""
    needle = f"{MARKER}={tag}".encode() + b"\0"
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                if needle in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
        found = [pid for pid in found if pid != os.getpid()]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _kill(pids: list[int]) -> None:
    import signal

    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


# -- without Ray running ---------------------------------------------------------------------------
def test_cli_and_in_process_engine_never_import_ray() -> None:
    code = (
        "import sys, lstm_export.cli, lstm_export.infer.cli, lstm_export.infer.ray_engine, "
        "lstm_export.infer.classify; print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout


def test_ray_options_need_engine_ray(onnx_model: Path, folder: Path, tmp_path: Path) -> None:
    for extra in (["--address", "auto"], ["--actors", "2"], ["--output-dir", str(tmp_path)]):
        result = CliRunner().invoke(app, ["infer", str(onnx_model), str(folder), *extra])
        assert "only work with --engine ray" in one_line_error(result)
    ray = ["--engine", "ray"]
    for extra in (["--workers", "2"], ["--streams", "1"]):  # never passed on to the Ray run
        result = CliRunner().invoke(app, ["infer", str(onnx_model), str(folder), *ray, *extra])
        assert "only work with --engine in-process" in one_line_error(result)


def test_ray_engine_refuses_what_it_cannot_honour(
    onnx_model: Path, folder: Path, tmp_path: Path
) -> None:
    """Checked before Ray starts: -o with --output-dir, old shards, an unknown suffix."""
    base = ["infer", str(onnx_model), str(folder), "--engine", "ray"]
    out = ["-o", str(tmp_path / "r.csv"), "--output-dir", str(tmp_path / "shards")]
    assert "choose one" in one_line_error(CliRunner().invoke(app, [*base, *out]))
    shards = tmp_path / "old"
    shards.mkdir()
    (shards / "part-000000000000.parquet").write_bytes(b"x")
    result = CliRunner().invoke(app, [*base, "--output-dir", str(shards)])
    assert "already holds part-*.parquet files" in one_line_error(result)
    result = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "r.txt")])
    assert "cannot tell the format" in one_line_error(result)


def test_an_address_that_does_not_answer_fails_at_once(onnx_model: Path, folder: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["infer", str(onnx_model), str(folder), "--engine", "ray", "--address"]
    started = time.perf_counter()
    line = one_line_error(CliRunner().invoke(app, [*args, f"127.0.0.1:{port}"]))
    assert line.startswith(f"error: cannot reach the Ray cluster at 127.0.0.1:{port}")
    assert time.perf_counter() - started < 60


def test_device_cuda_without_cuda_is_todays_error(onnx_model: Path, folder: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    base = ["infer", str(onnx_model), str(folder), "--device", "cuda"]
    today = one_line_error(CliRunner().invoke(app, base))
    assert one_line_error(CliRunner().invoke(app, [*base, "--engine", "ray"])) == today


def test_plan_never_gives_every_cpu_to_the_actors() -> None:
    """Ray Data starves (and hangs) when an actor pool holds every CPU: some always stays free."""
    from lstm_export.infer.ray_engine import plan_actors

    for cpus in (1.0, 2.0, 3.0, 4.0, 16.0, 64.0):
        for actors in (None, 1, 2, 3, 8, 100):
            plan = plan_actors(cpus=cpus, gpus=0.0, device="cpu", actors=actors, images=10_000)
            most = max(1, int(2 * (cpus - (0.5 if cpus < 4 else 1.0))))  # one per half CPU
            assert plan.actors >= 1 and (actors is None or plan.actors == min(actors, most))
            assert plan.actors * plan.cpus_per_actor <= cpus - 0.5 + 1e-6, (cpus, actors)
            assert plan.threads == 1 and plan.batch_size == 64
            assert plan.block_rows % plan.batch_size == 0
    # two actors on two CPUs: three quarters of a CPU each (and one per node on 2 x 1 CPU)
    plan = plan_actors(cpus=2.0, gpus=0.0, device="cpu", actors=2, batch_size=16, images=300)
    assert (plan.actors, plan.cpus_per_actor) == (2, 0.75)
    # CUDA: one actor per GPU by default
    plan = plan_actors(cpus=16.0, gpus=4.0, device="cuda", images=10_000)
    assert (plan.actors, plan.cpus_per_actor, plan.gpus_per_actor) == (4, 1.0, 1.0)


def test_actors_are_capped_at_the_cpus_and_the_batches(caplog: pytest.LogCaptureFixture) -> None:
    """20 actors for 200 images on 2 CPUs (each a process holding the model) were 5.4 GB: the
    pool is capped at one actor per half of a free CPU and per batch, with a warning."""
    from lstm_export.infer.ray_engine import plan_actors

    with caplog.at_level("WARNING"):
        plan = plan_actors(cpus=2.0, gpus=0.0, device="cpu", actors=20, images=200)
    assert plan.actors == 3 and "20 actors asked for, 3 used" in caplog.text
    assert plan_actors(cpus=64.0, gpus=0.0, device="cpu", actors=20, images=100).actors == 2
    assert plan_actors(cpus=16.0, gpus=2.0, device="cuda", actors=8, images=10_000).actors == 2


def test_actor_pool_arguments_follow_the_ray_version() -> None:
    from ray.data import ActorPoolStrategy

    from lstm_export.infer.ray_engine import actor_pool_args

    assert actor_pool_args(3, "2.40.0") == {"concurrency": 3}
    assert actor_pool_args(3, "2.50.1", in_flight=2) == {"concurrency": 3}
    compute = actor_pool_args(3, "2.51.0", in_flight=2)["compute"]
    assert isinstance(compute, ActorPoolStrategy)
    assert (compute.min_size, compute.max_size) == (3, 3)


def test_parquet_rows_keep_every_name(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from lstm_export.infer.rows import Prediction
    from lstm_export.infer.writers import open_rows, unescape_text

    rows = [
        Prediction("3/caf\udce9.png", "3", 0.5, None, "3", (0.5,) + (0.05,) * 9),
        Prediction("=1+2.png", None, None, "empty file (0 bytes)", "4"),
    ]
    names = [str(i) for i in range(10)]
    out = tmp_path / "rows.parquet"
    with open_rows(out, labelled=True, class_names=names) as writer:
        writer.write(rows)
    table = pq.read_table(out)
    assert table.column_names[:5] == ["path", "label", "prediction", "confidence", "error"]
    assert table.column_names[5:] == [f"p_{n}" for n in names]
    got = table.to_pylist()
    assert [unescape_text(r["path"]) for r in got] == [r.path for r in rows]
    assert got[0]["p_0"] == 0.5 and got[1]["p_0"] is None and got[1]["prediction"] is None


# -- local Ray, started and stopped by the run -----------------------------------------------------
@pytest.mark.ray
def test_local_two_cpu_run_finishes_with_the_in_process_rows(
    onnx_model: Path, folder: Path, in_process: Any, tmp_path: Path, short_tmp: Path
) -> None:
    """2 CPUs, 2 actors: it finishes (the pool never holds every CPU), with the same rows, in
    the same order, the same accuracy and confusion; the local Ray is gone afterwards."""
    out, summary = tmp_path / "rows.csv", tmp_path / "summary.json"
    tag = uuid.uuid4().hex
    started = time.perf_counter()
    result = _cli(
        "infer", onnx_model, folder, "-o", out, "--engine", "ray", "--actors", "2",
        "--batch-size", "16", "--probabilities", "--summary-json", summary, "--no-progress",
        env={"LSTM_EXPORT_RAY_CPUS": "2", "RAY_TMPDIR": str(short_tmp), MARKER: tag},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    seconds = time.perf_counter() - started
    rows = _csv_rows(out)
    _assert_same_rows(rows, in_process)
    assert list(rows) == [r.path for r in in_process.rows]  # the folder's order too
    info = json.loads(summary.read_text())
    want = in_process.summary.to_dict()
    for key in ("images", "classified", "errors", "skipped", "accuracy", "confusion_matrix"):
        assert info[key] == want[key], key
    assert info["ray"]["cpus"] == 2 and info["ray"]["actors"] == 2 and info["ray"]["nodes"] == 1
    assert info["ray"]["cluster"].startswith("local (started for this run")
    assert sum(info["ray"]["rows_per_node"].values()) == want["images"]
    assert "ray local (started for this run, stopped after it): 1 node, 2 CPUs" in result.stderr
    assert f"classified {want['classified']:,} of {want['images']:,} images" in result.stdout
    assert "accuracy" in result.stdout
    # Ray's own log lines (Python's and its C++ core's) go to the log, not the terminal
    for noise in (" INFO ", " WARNING ", "core_worker.cc", "Token authentication", "[state-dump]"):
        assert noise not in result.stderr + result.stdout, noise
    left = _processes_marked(tag)
    _kill(left)
    assert not left, f"processes of the local Ray outlived the run: {left}"
    print(f"local 2-CPU run: {seconds:.1f} s")


# -- a two-node cluster on this machine ------------------------------------------------------------
@pytest.fixture
def two_nodes() -> Iterator[Any]:
    """A Ray cluster of two nodes of 1 CPU each on this machine (loopback), torn down after."""
    from ray.cluster_utils import Cluster

    tag = uuid.uuid4().hex
    os.environ[MARKER] = tag  # inherited by every process of both nodes
    try:
        cluster = Cluster(
            initialize_head=True,
            connect=False,
            head_node_args={"num_cpus": 1, "include_dashboard": False},
        )
    finally:
        del os.environ[MARKER]
    try:
        os.environ[MARKER] = tag
        try:
            cluster.add_node(num_cpus=1)
        finally:
            del os.environ[MARKER]
        cluster.wait_for_nodes()
        cluster.test_marker = tag
        yield cluster
    finally:
        cluster.shutdown()
        # a worker ray left behind when its node stopped (it happens): ours, so stopped by pid
        _kill(_processes_marked(tag, wait_s=10.0))


@pytest.mark.ray
def test_two_node_cluster_classifies_on_both_nodes(
    onnx_model: Path, folder: Path, in_process: Any, tmp_path: Path, two_nodes: Any
) -> None:
    """Joined with --address: rows from both nodes, complete and the in-process engine's; the
    cluster keeps running for a second run, which writes Parquet shards from the workers."""
    import pyarrow.parquet as pq

    from lstm_export.infer.classify import classify_folder
    from lstm_export.infer.writers import unescape_text

    out, summary = tmp_path / "rows.csv", tmp_path / "summary.json"
    args = ["--engine", "ray", "--address", two_nodes.address, "--actors", "2"]
    result = _cli(
        "infer", onnx_model, folder, "-o", out, *args, "--batch-size", "16",
        "--probabilities", "--summary-json", summary, "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    _assert_same_rows(_csv_rows(out), in_process)
    info = json.loads(summary.read_text())
    per_node = info["ray"]["rows_per_node"]
    assert info["ray"]["nodes"] == 2 and len(per_node) == 2, per_node
    assert all(count > 0 for count in per_node.values()), per_node
    assert sum(per_node.values()) == info["images"] == in_process.summary.images
    assert info["accuracy"] == in_process.summary.accuracy
    assert f"cluster at {two_nodes.address} (joined; left running): 2 nodes" in result.stderr
    assert two_nodes.remaining_processes_alive(), "joining must leave the cluster running"
    assert len(_processes_marked(two_nodes.test_marker, wait_s=0)) >= 4  # 2 raylets, GCS, ...

    # the same cluster again: --output-dir, with --fit and --invert yes
    shards = tmp_path / "shards"
    result = _cli(
        "infer", onnx_model, folder, "--output-dir", shards, *args, "--batch-size", "16",
        "--fit", "--invert", "yes", "--summary-json", summary, "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = classify_folder(onnx_model, folder, batch_size=16, fit=True, invert="yes")
    files = sorted(shards.glob("part-*.parquet"))
    assert len(files) > 1
    table = pq.read_table(files).to_pylist()  # sorted shard names: the folder's order
    assert [unescape_text(r["path"]) for r in table] == [r.path for r in expected.rows]
    _assert_same_rows({unescape_text(r["path"]): r for r in table}, expected, digits=9)
    info = json.loads(summary.read_text())
    assert info["classified"] == expected.summary.classified
    assert info["errors"] == expected.summary.errors == 3
    assert info["confusion_matrix"] == expected.summary.to_dict()["confusion_matrix"]
    assert f"predictions: {shards}/part-*.parquet" in result.stdout
    assert "error 5/empty.png: empty file (0 bytes)" in result.stderr
    assert two_nodes.remaining_processes_alive()


# -- failures inside the actors --------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.slow
def test_an_actor_that_cannot_load_fails_the_run_with_its_error(
    onnx_model: Path, folder: Path, short_tmp: Path
) -> None:
    """A cluster that claims a GPU this machine does not have: the actors' DeviceError ends the
    run (one line, exit 1) instead of a hang."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    script = f"""
import ray, sys
ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False)
from lstm_export.errors import DeviceError
from lstm_export.infer.ray_engine import RayRun
try:
    with RayRun({str(onnx_model)!r}, {str(folder)!r}, device="cuda", progress=False) as run:
        list(run.batches())
except DeviceError as exc:
    print("DeviceError:", exc)
    sys.exit(3)
"""
    tag = uuid.uuid4().hex
    env = {**os.environ, "RAY_TMPDIR": str(short_tmp), MARKER: tag}
    try:
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True,
            timeout=RUN_TIMEOUT_S, env=env,
        )  # fmt: skip
    finally:
        _kill(_processes_marked(tag, wait_s=10.0))
    assert result.returncode == 3, result.stderr[-3000:]
    assert "DeviceError: CUDA was asked for, but" in result.stdout


def test_block_sizes_cover_every_image_once() -> None:
    """Blocks are whole inference batches (so batches match the in-process engine's)."""
    from lstm_export.infer.ray_engine import MAX_BLOCKS, plan_actors

    for images in (1, 15, 16, 17, 300, 10_000, 100_000_000):
        plan = plan_actors(cpus=2.0, gpus=0.0, device="cpu", actors=2, batch_size=16, images=images)
        assert plan.block_rows % 16 == 0 and plan.block_rows >= 16
        assert -(-images // plan.block_rows) <= MAX_BLOCKS


@pytest.mark.ray
def test_external_data_and_40000_classes_give_the_in_process_rows(
    make_checkpoint: Any, mnist_dir: Path, tmp_path: Path, short_tmp: Path
) -> None:
    """An ONNX file whose weights are in a file beside it, scoring 40,000 classes (more than a
    16-bit integer holds): the actors get every file the model needs, and the same rows."""
    import onnx

    from lstm_export.checkpoint import load_checkpoint, save_checkpoint
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.infer.classify import classify_folder

    path = make_checkpoint(hidden_size=16, num_layers=1, num_classes=40_000)
    ckpt = load_checkpoint(path)
    ckpt["class_names"] = [f"c{i}" for i in range(40_000)]
    ckpt["state_dict"]["fc.bias"][[35_000, 39_999]] += 5.0  # where int16 would overflow
    save_checkpoint(ckpt, path)
    exported = Path(export_onnx(path, tmp_path / "tmp.onnx", validate=False).path)
    onnx_model = tmp_path / "wide" / "model.onnx"
    onnx_model.parent.mkdir()
    onnx.save(onnx.load(str(exported)), str(onnx_model), save_as_external_data=True,
              location="weights.bin", size_threshold=0)  # fmt: skip
    assert (onnx_model.parent / "weights.bin").stat().st_size > 40_000 * 16 * 4
    folder = tmp_path / "digits"
    write_digits(folder, uint8_test_set(mnist_dir)[0][:40], None)
    expected = classify_folder(onnx_model, folder, batch_size=16)
    assert {r.prediction for r in expected.rows} <= {"c35000", "c39999"}
    out = tmp_path / "rows.csv"
    result = _cli(
        "infer", onnx_model, folder, "-o", out, "--engine", "ray", "--actors", "1",
        "--batch-size", "16", "--no-progress",
        env={"LSTM_EXPORT_RAY_CPUS": "2", "RAY_TMPDIR": str(short_tmp)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = _csv_rows(out)
    assert list(rows) == [r.path for r in expected.rows]
    _assert_same_rows(rows, expected)
