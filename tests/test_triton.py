"""``lstm-export triton`` and the repository reader: configs re-parsed with Triton's own protobuf,
stateful exports, refusals, and a smoke run of benchmarks/serve_load.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _cli_helpers import one_line_error
from _model_helpers import tiny_checkpoint
from lstm_export.errors import ConfigError, ModelLoadError, OutputError

CLASSES = [str(i) for i in range(10)]


def run_cli(*args: Any) -> Any:
    from typer.testing import CliRunner

    from lstm_export.cli import app

    return CliRunner().invoke(app, ["triton", *(str(a) for a in args)])


def parse(path: Path) -> Any:
    """``config.pbtxt`` parsed with Triton's ModelConfig (tritonclient)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run folders of one tiny checkpoint: ``plain`` (fixed 28 rows), ``seq`` (--dynamic-seq),
    ``state`` (--with-state), each with model.onnx and model.ts (state: --with-state too)."""
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.export.to_torchscript import export_torchscript

    root = tmp_path_factory.mktemp("triton_runs")
    checkpoint = tiny_checkpoint(root)
    out = {}
    for kind, flags in (
        ("plain", {}),
        ("seq", {"dynamic_seq": True}),
        ("state", {"with_state": True}),
    ):
        run = root / kind
        run.mkdir()
        shutil.copy(checkpoint, run / "model.pt")
        export_onnx(run, validate=False, **flags)
        ts_flags = {"with_state": True} if kind == "state" else {}
        export_torchscript(run, validate=False, **ts_flags)
        out[kind] = run
    return out


def write(model: Path, repo: Path, **options: Any) -> Any:
    from lstm_export.serve.triton_config import TritonOptions, write_repository

    return write_repository(model, repo, TritonOptions(**options))


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and "tmp" in p.name)


# -- written configs -------------------------------------------------------------------------------
def test_cli_writes_onnx_torchscript_and_openvino_models(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    repo = tmp_path / "repo"
    result = run_cli(runs["plain"], "-o", repo, "--name", "mnist", "--torchscript", "--openvino")
    assert result.exit_code == 0, result.output
    assert "mnist_torchscript" in result.output

    onnx = parse(repo / "mnist" / "config.pbtxt")
    assert (onnx.name, onnx.platform, onnx.max_batch_size) == ("mnist", "onnxruntime_onnx", 256)
    assert [(t.name, t.data_type, list(t.dims)) for t in onnx.input] == [
        ("pixels", mc.TYPE_FP32, [28, 28])
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in onnx.output] == [
        ("logits", mc.TYPE_FP32, [10])
    ]
    assert onnx.output[0].label_filename == "labels.txt"
    assert (repo / "mnist" / "labels.txt").read_text().split() == CLASSES
    assert onnx.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(g.count, g.kind) for g in onnx.instance_group] == [(1, mc.ModelInstanceGroup.KIND_CPU)]
    assert onnx.version_policy.WhichOneof("policy_choice") == "all"
    assert not onnx.HasField("sequence_batching")
    # the model file is the run's, byte for byte
    assert (repo / "mnist/1/model.onnx").read_bytes() == (runs["plain"] / "model.onnx").read_bytes()

    ts = parse(repo / "mnist_torchscript" / "config.pbtxt")
    assert ts.platform == "pytorch_libtorch"
    assert [(t.name, list(t.dims)) for t in ts.input] == [("INPUT__0", [-1, 28])]
    assert [(t.name, list(t.dims)) for t in ts.output] == [("OUTPUT__0", [10])]
    assert (repo / "mnist_torchscript/1/model.pt").is_file()

    ov = parse(repo / "mnist_openvino" / "config.pbtxt")
    assert (ov.backend, ov.platform) == ("openvino", "")
    assert {p.name for p in (repo / "mnist_openvino/1").iterdir()} == {"model.xml", "model.bin"}
    assert leftovers(tmp_path) == []
    assert oct(repo.stat().st_mode & 0o777) != oct(0o700)  # not left private as mkdtemp made it


def test_dynamic_seq_gets_a_variable_time_axis_and_options_are_written(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    write(runs["seq"] / "model.onnx", tmp_path / "r", max_batch_size=1, instances=2, kind="gpu")
    config = parse(tmp_path / "r" / "model" / "config.pbtxt")  # a file: named after its stem
    assert list(config.input[0].dims) == [-1, 28]
    assert config.max_batch_size == 1
    assert not config.HasField("dynamic_batching")  # batches of one: nothing to batch
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (2, mc.ModelInstanceGroup.KIND_GPU)
    ]


def test_stateful_export_gets_sequence_batching_with_implicit_state(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    from lstm_export.serve.repository import read_repository

    report = write(runs["state"], tmp_path / "r", name="s", torchscript=True, max_sequences=7)
    assert report.notes and "sequence" in report.notes[0]
    config = parse(tmp_path / "r" / "s" / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in config.input] == [("pixels", [1, -1, 28])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("logits", [1, 10])]
    seq = config.sequence_batching
    assert seq.oldest.max_candidate_sequences == 7
    assert seq.max_sequence_idle_microseconds == 60_000_000
    states = [(s.input_name, s.output_name, s.data_type, list(s.dims)) for s in seq.state]
    assert states == [
        ("h_0", "h_n", mc.TYPE_FP32, [1, 1, 16]),
        ("c_0", "c_n", mc.TYPE_FP32, [1, 1, 16]),
    ]
    assert all(s.initial_state[0].zero_data for s in seq.state)
    ts = parse(tmp_path / "r" / "s_torchscript" / "config.pbtxt")
    assert [(s.input_name, s.output_name) for s in ts.sequence_batching.state] == [
        ("INPUT__1", "OUTPUT__1"),
        ("INPUT__2", "OUTPUT__2"),
    ]
    models = {m.name: m for m in read_repository(tmp_path / "r")}
    assert models["s"].sequence is not None and models["s"].sequence.max_sequences == 7
    assert models["s_torchscript"].sequence == models["s"].sequence


def test_read_repository_round_trip(runs: dict[str, Path], tmp_path: Path) -> None:
    from lstm_export.infer.registry import load_runner
    from lstm_export.serve.repository import read_repository

    repo = tmp_path / "r"
    write(runs["plain"], repo, name="m", torchscript=True, max_queue_delay_us=250)
    write(runs["plain"], repo, name="m", torchscript=True, max_queue_delay_us=250, version=3)
    models = read_repository(repo)
    assert [(m.name, m.version, m.backend) for m in models] == [
        ("m", 1, "onnxruntime"),
        ("m", 3, "onnxruntime"),
        ("m_torchscript", 1, "torchscript"),
        ("m_torchscript", 3, "torchscript"),
    ]
    m = models[0]
    assert (m.max_batch_size, m.max_queue_delay_us, m.kind) == (256, 250, "cpu")
    assert [(t.name, t.datatype, t.shape) for t in m.inputs] == [("pixels", "FP32", (28, 28))]
    assert [(t.name, t.datatype, t.shape) for t in m.outputs] == [("logits", "FP32", (10,))]
    assert m.labels == tuple(CLASSES) and m.sequence is None
    assert m.path == (repo / "m" / "1" / "model.onnx").resolve()
    x = np.random.default_rng(1).random((3, 28, 28), dtype=np.float32)
    with load_runner(runs["plain"] / "model.onnx", device="cpu") as src:
        expected = src.infer(x)
    with load_runner(m.path, m.backend, "cpu") as got:
        np.testing.assert_array_equal(got.infer(x), expected)
    with load_runner(
        models[2].path, models[2].backend, "cpu"
    ) as ts:  # model.pt read as TorchScript
        np.testing.assert_allclose(ts.infer(x), expected, atol=1e-4)


def test_cli_json_names_what_it_wrote(runs: dict[str, Path], tmp_path: Path) -> None:
    import json

    result = run_cli(runs["seq"], "-o", tmp_path / "r", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["created"] is True
    assert [(m["name"], m["version"], m["backend"]) for m in payload["models"]] == [
        ("seq", 1, "onnxruntime")
    ]


# -- refusals --------------------------------------------------------------------------------------
def test_cli_refuses_a_folder_that_is_not_a_repository(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "notes"
    target.mkdir()
    (target / "todo.txt").write_text("keep me")
    line = one_line_error(run_cli(runs["plain"], "-o", target))
    assert "not a Triton model repository" in line
    assert [p.name for p in target.iterdir()] == ["todo.txt"]
    line = one_line_error(run_cli(runs["plain"], "-o", target / "todo.txt"))
    assert "not a folder" in line
    assert leftovers(tmp_path) == []


def test_without_grpcio_the_repository_commands_say_which_extra(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tritonclient.grpc (Triton's ModelConfig) imports grpcio, which only the serve extra brings."""
    import sys

    for name in [m for m in sys.modules if m.startswith("tritonclient.grpc")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "grpc", None)  # import grpc now raises ImportError
    line = one_line_error(run_cli(runs["plain"], "-o", tmp_path / "r"))
    assert line == (
        "error: a Triton model repository needs the serve extra: pip install 'lstm-export[serve]'"
    )
    assert leftovers(tmp_path) == [] and not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", "..", "x\x1b[31m", "-rf", "a" * 129])
def test_cli_refuses_hostile_names(runs: dict[str, Path], tmp_path: Path, name: str) -> None:
    line = one_line_error(run_cli(runs["plain"], "-o", tmp_path / "r", "--name", name))
    assert "is not allowed" in line and "\x1b" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _edit_metadata(src: Path, dst: Path, **changes: str) -> Path:
    import onnx

    from lstm_export.export.metadata import set_onnx_metadata

    model = onnx.load(str(src))
    set_onnx_metadata(model, changes)
    onnx.save_model(model, str(dst))
    return dst


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"class_names": "a,b,c"}, "metadata names 3 classes but the model returns 10"),
        ({"seq_len": "any"}, "seq_len 'any' but the session's time axis is 28"),
        ({"state_inputs": "h_0: float32"}, "state inputs the session does not take"),
        ({"class_names": "0,1,2,3,4,5,6,7,8,\x1b[2J"}, "control characters"),
    ],
)
def test_a_model_whose_session_disagrees_is_refused(
    runs: dict[str, Path], tmp_path: Path, changes: dict[str, str], message: str
) -> None:
    bad = _edit_metadata(runs["plain"] / "model.onnx", tmp_path / "bad.onnx", **changes)
    with pytest.raises(ModelLoadError, match="bad.onnx: .*" + message.replace("(", r"\(")):
        write(bad, tmp_path / "r")
    assert not (tmp_path / "r").exists() and leftovers(tmp_path) == []


def test_torchscript_from_another_checkpoint_is_refused(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    from lstm_export.errors import ValidationError
    from lstm_export.export.to_torchscript import export_torchscript

    run = tmp_path / "mixed"
    shutil.copytree(runs["plain"], run)
    other = tiny_checkpoint(tmp_path / "other", hidden_size=8)
    export_torchscript(other, run / "model.ts", validate=False)
    with pytest.raises(ValidationError, match=r"model\.ts does not give the ONNX model's answers"):
        write(run, tmp_path / "r", torchscript=True)
    assert not (tmp_path / "r").exists() and leftovers(tmp_path) == []


def test_versions_and_other_refusals(runs: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "r"
    write(runs["plain"], repo, name="m")
    with pytest.raises(OutputError, match="version 1 of model m already exists"):
        write(runs["plain"], repo, name="m")
    with pytest.raises(OutputError, match="another configuration"):
        write(runs["plain"], repo, name="m", version=2, max_batch_size=8)
    write(runs["plain"], repo, name="m", version=2)
    assert sorted(p.name for p in (repo / "m").iterdir()) == [
        "1",
        "2",
        "config.pbtxt",
        "labels.txt",
    ]
    with pytest.raises(ConfigError, match="OpenVINO backend keeps no sequence state"):
        write(runs["state"], repo, name="s", openvino=True)
    with pytest.raises(ModelLoadError, match="not an ONNX file"):
        write(runs["plain"] / "model.pt", repo)
    with pytest.raises(ModelLoadError, match="no TorchScript file"):
        write(
            _edit_metadata(runs["plain"] / "model.onnx", tmp_path / "x.onnx"),
            repo,
            torchscript=True,
        )
    with pytest.raises(ConfigError, match="OpenVINO runs on the CPU only"):
        write(runs["plain"], repo, openvino=True, kind="gpu")
    assert sorted(p.name for p in repo.iterdir()) == ["m"] and leftovers(tmp_path) == []


# -- the reader on repositories from strangers -----------------------------------------------------
@pytest.fixture
def repo(runs: dict[str, Path], tmp_path: Path) -> Path:
    out = tmp_path / "repo"
    write(runs["plain"], out, name="m")
    return out


def _config(repo: Path, old: str, new: str) -> None:
    path = repo / "m" / "config.pbtxt"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name: "m"', 'name: "m"\ndefault_model_filename: "../../secret.onnx"', "is not allowed"),
        ('name: "m"', 'name: "other"', "is not its folder's"),
        ('platform: "onnxruntime_onnx"', 'platform: "tensorflow_savedmodel"', "are not supported"),
        (
            'platform: "onnxruntime_onnx"',
            'platform: "onnxruntime_onnx"\nbackend: "pytorch"',
            "disagree",
        ),
        ('label_filename: "labels.txt"', 'label_filename: "../../etc/passwd"', "is not allowed"),
        (
            "max_batch_size: 256",
            "max_batch_size: 256 bogus_field: 1",
            "not a Triton model configuration",
        ),
        ("dims: 10", "dims: 0", "each -1 or >= 1"),
        ('name: "logits"', 'name: "lo\\033[2Jgits"', "tensor name"),
        (
            "version_policy {\n  all {\n  }\n}",
            "version_policy { specific { versions: 4 } }",
            "missing",
        ),
    ],
)
def test_reader_refuses_bad_configs(repo: Path, old: str, new: str, message: str) -> None:
    from lstm_export.serve.repository import read_repository

    _config(repo, old, new)
    with pytest.raises(ModelLoadError, match=message):
        read_repository(repo)


def test_reader_refuses_anything_pointing_outside(repo: Path, tmp_path: Path) -> None:
    from lstm_export.serve.repository import read_repository

    outside = tmp_path / "outside"
    (outside / "1").mkdir(parents=True)
    shutil.copy(repo / "m/1/model.onnx", outside / "1" / "model.onnx")
    model_file = repo / "m/1/model.onnx"
    model_file.unlink()
    model_file.symlink_to(outside / "1" / "model.onnx")
    with pytest.raises(ModelLoadError, match="points outside the model repository"):
        read_repository(repo)
    model_file.unlink()
    shutil.rmtree(repo / "m/1")
    (repo / "m/1").symlink_to(outside / "1")
    with pytest.raises(ModelLoadError, match="points outside the model repository"):
        read_repository(repo)
    os.unlink(repo / "m/1")
    (repo / "m/1").mkdir()
    os.mkfifo(repo / "m/1/model.onnx")
    with pytest.raises(ModelLoadError):
        read_repository(repo)


def test_reader_versions_follow_the_policy_as_triton_does(repo: Path) -> None:
    from lstm_export.serve.repository import read_repository

    for name in ("2", "10", "01", "0", "latest"):  # "01", "0" and "latest" are not versions
        shutil.copytree(repo / "m/1", repo / "m" / name)
    assert [m.version for m in read_repository(repo)] == [1, 2, 10]
    _config(repo, "version_policy {\n  all {\n  }\n}\n", "")
    assert [m.version for m in read_repository(repo)] == [10]  # Triton's default: the latest
    (repo / "m/config.pbtxt").write_text(
        (repo / "m/config.pbtxt").read_text() + "version_policy { latest { num_versions: 2 } }\n"
    )
    assert [m.version for m in read_repository(repo)] == [2, 10]


def test_reader_refuses_empty_and_missing(tmp_path: Path) -> None:
    from lstm_export.serve.repository import read_repository

    with pytest.raises(ModelLoadError, match="not a folder"):
        read_repository(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="holds no model"):
        read_repository(tmp_path)
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelLoadError, match=r"has no config\.pbtxt"):
        read_repository(tmp_path)


# -- benchmarks/serve_load.py ----------------------------------------------------------------------
def test_serve_load_smoke(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load script end to end with tiny counts: both lstm-export servers, no peer."""
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    monkeypatch.setattr(sys, "argv", ["serve_load.py"])
    import serve_load

    out = tmp_path / "load.json"
    result = serve_load.main(
        ["--model", str(runs["plain"] / "model.onnx"), "--requests", "12", "--warmup", "2",
         "--concurrency", "1,4", "--time-cap", "20", "--json", str(out), "--md", str(tmp_path / "load.md")]
    )  # fmt: skip
    rows = result["rows"]
    assert [(r["server"], r["concurrency"]) for r in rows] == [
        ("serve (batching)", 1),
        ("serve (batching)", 4),
        ("serve (no batching)", 1),
        ("serve (no batching)", 4),
    ]
    for r in rows:
        assert r["answers_match"] and r["requests"] == 12 and r["p99_ms"] >= r["p50_ms"] > 0
    assert rows[2]["batching"].startswith("max batch 1")
    assert all(r["mean_batch"] == 1.0 for r in rows[2:])  # batching off: one request per run
    assert result["perf_analyzer"] == "not given (--perf-analyzer)"
    assert "batching_speedup" in result["targets"]
    assert out.is_file() and "| serve (batching) |" in (tmp_path / "load.md").read_text()


def test_labels_are_read_as_every_runner_reads_them() -> None:
    """Class names in the metadata as a JSON list or comma-separated, none twice, one per class."""
    from lstm_export.serve.triton_config import _labels

    assert _labels({"class_names": '["zero", "one, or two"]'}, 2, "m") == ("zero", "one, or two")
    assert _labels({"class_names": "a, b"}, 2, "m") == ("a", "b")
    with pytest.raises(ModelLoadError, match="more than once"):
        _labels({"class_names": "a,a"}, 2, "m")
    with pytest.raises(ModelLoadError, match="names 3 classes"):
        _labels({"class_names": "a,b,c"}, 2, "m")
