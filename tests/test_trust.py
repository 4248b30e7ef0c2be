"""Model files from elsewhere (issue 18): a file that would run code is refused before it runs, and
a model whose outputs are not logits is one error line at load, never a traceback or wrong rows."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lstm_export.errors import InferenceError, ModelLoadError
from lstm_export.infer.registry import load_runner

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

VICTIM = b"the user's own file\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file of the user's that a hostile model tries to overwrite."""
    path = tmp_path / "notes.txt"
    path.write_bytes(VICTIM)
    return path


# -- TorchScript: a program --------------------------------------------------------------------------
class WritesAFile(torch.nn.Module):
    """A forward that maps a file of the user's into memory and writes over it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        data = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8).fill_(65)
        return x.sum(1)[:, :10] + data.float().sum()


class WritesWhileLoading(torch.nn.Module):
    """A ``__setstate__``, which ``torch.jit.load`` runs, that writes over a file."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(1)[:, :10]

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.path = state[0]
        written = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8).fill_(66)
        self.training = bool(written.sum() < 0)


def _script(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_a_torchscript_file_that_writes_files_is_refused_untouched(
    tmp_path: Path, victim: Path
) -> None:
    model = _script(WritesAFile(str(victim)), tmp_path / "hostile.ts")
    with pytest.raises(ModelLoadError) as info:
        load_runner(model, device="cpu")
    message = str(info.value)
    assert "aten::from_file" in message and "\n" not in message, message
    assert victim.read_bytes() == VICTIM
    # The user who trusts the file says so, and it runs as it is (here: it writes the file).
    with load_runner(model, device="cpu", trusted=True) as runner:
        assert runner.infer(np.zeros((2, 28, 28), np.float32)).shape == (2, 10)
    assert victim.read_bytes().startswith(b"AAAA")


def test_a_torchscript_file_that_runs_code_while_loading_is_refused_before_it_loads(
    tmp_path: Path, victim: Path
) -> None:
    model = _script(WritesWhileLoading(str(victim)), tmp_path / "hostile.ts")
    victim.write_bytes(VICTIM)  # saving it ran nothing; make sure
    for backend in ("torchscript", "inspect"):
        with pytest.raises(ModelLoadError, match="__setstate__, code that runs while the file"):
            if backend == "inspect":
                from lstm_export.export.inspect_model import inspect_model

                inspect_model(model)
            else:
                load_runner(model, device="cpu")
        assert victim.read_bytes() == VICTIM


@pytest.mark.parametrize(
    "config, with_state",
    [
        ({"hidden_size": 8}, False),
        ({"hidden_size": 8}, True),
        ({"hidden_size": 5, "num_layers": 1, "bidirectional": True}, False),
        ({"hidden_size": 3, "num_layers": 3, "bias": False, "batch_first": False}, True),
        ({"hidden_size": 6, "input_mean": 0.1307, "input_std": 0.3081}, True),  # the best preset
        ({"hidden_size": 8, "proj_size": 3}, True),
    ],
)
def test_every_torchscript_export_of_ours_passes_the_check(
    config: dict[str, Any], with_state: bool, make_checkpoint: Callable[..., Path]
) -> None:
    from lstm_export.export.to_torchscript import export_torchscript

    ts = export_torchscript(make_checkpoint(**config), validate=False, with_state=with_state).path
    with load_runner(ts, device="cpu") as runner:
        assert runner.infer(np.zeros((3, 28, 28), np.float32)).shape == (3, 10)


# -- what a model gives back -------------------------------------------------------------------------
class Rank1(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum((1, 2))


class Rank3(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class NoClasses(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, :0]


class Integers(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(1).long()


class NotANumber(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(1)[:, :10] * float("nan")


@pytest.mark.parametrize("module", [Rank1, Rank3, NoClasses, Integers])
def test_a_torchscript_file_without_logits_is_refused_at_load(
    module: type[torch.nn.Module], tmp_path: Path
) -> None:
    path = _script(module(), tmp_path / "odd.ts")
    with pytest.raises(ModelLoadError, match=r"does not score classes: its output is") as info:
        load_runner(path, device="cpu")
    assert "\n" not in str(info.value)


def test_nan_logits_come_back_as_they_are(tmp_path: Path) -> None:
    with load_runner(_script(NotANumber(), tmp_path / "nan.ts"), device="cpu") as runner:
        assert np.isnan(runner.infer(np.ones((2, 28, 28), np.float32))).all()


def _onnx(
    path: Path,
    nodes: list[Any],
    out_dims: list[Any] | None,
    *,
    out_type: int = 1,
    domains: tuple[str, ...] = (),
    initializers: tuple[Any, ...] = (),
    metadata: dict[str, str] | None = None,
) -> Path:
    """A tiny ONNX file reading ``x`` (N, T, 28) float and giving ``y`` of ``out_dims``."""
    import onnx
    from onnx import helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", "T", 28])],
        [helper.make_tensor_value_info("y", out_type, out_dims)],
        list(initializers),
    )
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in domains)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=9)
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def _sum_rows(path: Path, **kwargs: Any) -> Path:
    """Logits (N, 28): each column's sum over the rows."""
    from onnx import helper, numpy_helper

    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)
    return _onnx(path, [node], ["N", 28], initializers=(axes,), **kwargs)


def _bad_outputs(folder: Path) -> dict[str, Path]:
    from onnx import TensorProto, helper, numpy_helper

    def axes(*values: int) -> Any:
        return numpy_helper.from_array(np.array(values, np.int64), "axes")

    total = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)
    summed = helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0)
    empty = helper.make_node("Slice", ["x", "zero", "zero", "two"], ["e"])  # (N, T, 0)
    consts = tuple(
        numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("zero", 0), ("two", 2))
    )
    return {
        "rank 1": _onnx(folder / "rank1.onnx", [total], ["N"], initializers=(axes(1, 2),)),
        "rank 3": _onnx(
            folder / "rank3.onnx", [helper.make_node("Identity", ["x"], ["y"])], ["N", "T", 28]
        ),
        "integers": _onnx(
            folder / "int.onnx",
            [summed, helper.make_node("Cast", ["s"], ["y"], to=TensorProto.INT64)],
            ["N", 28],
            out_type=TensorProto.INT64,
            initializers=(axes(1),),
        ),
        "no classes": _onnx(
            folder / "none.onnx",
            [empty, helper.make_node("ReduceSum", ["e", "axes"], ["y"], keepdims=0)],
            ["N", 0],
            initializers=(axes(1), *consts),
        ),
    }


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_an_onnx_file_without_logits_is_refused_at_load(backend: str, tmp_path: Path) -> None:
    if backend == "openvino":
        pytest.importorskip("openvino")
    for case, path in _bad_outputs(tmp_path).items():
        with pytest.raises(ModelLoadError, match="does not score classes") as info:
            load_runner(path, backend, device="cpu")
        assert "\n" not in str(info.value), case
    with load_runner(_sum_rows(tmp_path / "ok.onnx"), backend, device="cpu") as runner:
        assert runner.infer(np.ones((2, 28, 28), np.float32)).tolist() == [[28.0] * 28] * 2


def test_an_output_that_is_not_logits_at_run_time_is_an_inference_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with load_runner(_sum_rows(tmp_path / "ok.onnx"), device="cpu") as runner:
        monkeypatch.setattr(runner, "fetch", lambda result: np.zeros((5, 28), np.float32))
        with pytest.raises(InferenceError, match=r"output of shape \(5, 28\) for 2 image"):
            runner.infer(np.ones((2, 28, 28), np.float32))


@pytest.mark.parametrize("names", ["a,b,a", '["x", "y", "x"]'])
def test_a_class_named_twice_is_refused_at_load(names: str, tmp_path: Path) -> None:
    path = _sum_rows(tmp_path / "dup.onnx", metadata={"class_names": names})
    with pytest.raises(ModelLoadError, match=r"names the class '[ax]' more than once"):
        load_runner(path, device="cpu")


# -- ONNX: operator domains and external data ---------------------------------------------------------
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_an_unknown_onnx_operator_domain_is_refused_unless_trusted(
    backend: str, tmp_path: Path
) -> None:
    from onnx import helper

    if backend == "openvino":
        pytest.importorskip("openvino")
    node = helper.make_node("Exfiltrate", ["x"], ["y"], domain="evil.ops")
    path = _onnx(tmp_path / "custom.onnx", [node], ["N", 10], domains=("evil.ops",))
    with pytest.raises(
        ModelLoadError, match=r"refused: it uses operators of the domain\(s\) 'evil.ops'"
    ):
        load_runner(path, backend, device="cpu")
    with pytest.raises(ModelLoadError) as info:  # trusted: the runtime itself has no such op
        load_runner(path, backend, device="cpu", trusted=True)
    assert "refused" not in str(info.value)


def _external(path: Path, location: str) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros(28, np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=location)
    node = helper.make_node("Add", ["x", "w"], ["y"])
    return _onnx(path, [node], ["N", "T", 28], initializers=(weight,))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_external_data_must_be_a_regular_file_in_the_model_folder(
    backend: str, tmp_path: Path, victim: Path
) -> None:
    if backend == "openvino":
        pytest.importorskip("openvino")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "link.bin").symlink_to(victim)
    os.mkfifo(folder / "fifo.bin")
    cases = {
        "../notes.txt": "outside the model's folder",
        str(victim): "outside the model's folder",
        "link.bin": "outside the model's folder",
        "fifo.bin": "is not a regular file",  # reading it would block forever
        "missing.bin": "is not a regular file",
    }
    for location, why in cases.items():
        path = _external(folder / "model.onnx", location)
        for trusted in (False, True):
            with pytest.raises(ModelLoadError, match=f"its external data .* {why}"):
                load_runner(path, backend, device="cpu", trusted=trusted)


# -- inspect: looks, never runs --------------------------------------------------------------------
def test_inspect_reports_a_hostile_graph_without_running_it(tmp_path: Path, victim: Path) -> None:
    from lstm_export.export.inspect_model import inspect_model

    info = inspect_model(_script(WritesAFile(str(victim)), tmp_path / "hostile.ts"))
    assert "aten::from_file" in info.details["trust"]
    assert victim.read_bytes() == VICTIM


def test_inspect_keeps_text_from_the_file_as_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lstm_export.export.inspect_model import inspect_model

    title = "\x1b]0;pwned\x07\x1b[2J[bold]x[/]"
    info = inspect_model(_sum_rows(tmp_path / "m.onnx", metadata={"class_names": title}))
    assert info.metadata["class_names"] == title  # as it is: escaping is the printer's job
    assert capsys.readouterr() == ("", "")


def test_inspect_counts_parameters_alike_in_every_format(
    make_checkpoint: Callable[..., Path],
) -> None:
    import onnx

    from lstm_export.export.audit import audit_onnx
    from lstm_export.export.inspect_model import inspect_model
    from lstm_export.export.quantize import to_int8
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.export.to_torchscript import export_torchscript

    checkpoint = make_checkpoint(hidden_size=8)
    fp32 = export_onnx(checkpoint, validate=False).path
    int8 = fp32.with_suffix(".int8.onnx")
    model = onnx.load(str(fp32))
    onnx.save(to_int8(model, audit_onnx(model)), str(int8))
    ts = export_torchscript(checkpoint, validate=False).path
    infos = {p.name: inspect_model(p) for p in (checkpoint, fp32, int8, ts)}
    counts = {name: info.parameters for name, info in infos.items()}
    assert set(counts.values()) == {sum(p.numel() for p in _model(checkpoint).parameters())}
    for name in (fp32.name, int8.name):  # the numbers the file stores differ, and it says why
        assert "scale and zero point" in infos[name].details["parameters"]
    assert infos[ts.name].details["trust"] == "pure tensor operations only"


def _model(checkpoint: Path) -> torch.nn.Module:
    from lstm_export.checkpoint import load_model

    return load_model(checkpoint)[0]


def test_infer_refuses_a_hostile_torchscript_file_unless_trusted(
    tmp_path: Path, victim: Path
) -> None:
    """From the shell: `infer` on a `.ts` that writes a file is one error line and the file is
    untouched; `--trust-model` runs it (in process and, through the same options, on Ray)."""
    from PIL import Image
    from typer.testing import CliRunner

    from lstm_export.cli import app

    model = _script(WritesAFile(str(victim)), tmp_path / "hostile.ts")
    folder = tmp_path / "digits"
    folder.mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "a.png")
    refused = CliRunner().invoke(app, ["infer", str(model), str(folder)])
    assert refused.exit_code == 1 and "aten::from_file" in refused.output, refused.output
    assert victim.read_bytes() == VICTIM
    trusted = CliRunner().invoke(app, ["infer", str(model), str(folder), "--trust-model"])
    assert trusted.exit_code == 0, trusted.output
    assert victim.read_bytes().startswith(b"AAAA")


def test_runner_options_pass_trust_only_to_backends_that_check_files() -> None:
    from lstm_export.infer.registry import RUNNERS

    assert RUNNERS["torchscript"].planned_options(1, trusted=True)["trusted"] is True
    assert RUNNERS["onnxruntime"].planned_options(1, trusted=True)["trusted"] is True
    assert "trusted" not in RUNNERS["eager"].planned_options(1, trusted=True)
    assert "trusted" not in RUNNERS["torchscript"].planned_options(1)
