"""Every nn.LSTM configuration the model supports, exported three ways and validated.

Untrained tiny models (parity does not need training): 1-3 layers, uni- and bidirectional,
hidden sizes 3-8, bias off, dropout (inactive once exported), time-major (``batch_first=False``)
and input normalisation. Each is exported with the dynamo and legacy ONNX exporters and to
TorchScript; the export's own validation proves it against eager PyTorch at 1, 7, 28 and 100
rows and several batch sizes, and unidirectional ones are exported ``--with-state`` and proven
fed in chunks. The ONNX files are also quantized to int8 (DynamicQuantizeLSTM, bidirectional
included) and run at several lengths. ``proj_size`` has no ONNX equivalent and is refused.

``pytest -s tests/test_export_matrix.py`` prints the matrix of max logit differences.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lstm_export.config import ModelConfig
from lstm_export.errors import ConfigError, ExportError

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

#: name -> (ModelConfig fields, exported --with-state)
CONFIGS: dict[str, tuple[dict[str, Any], bool]] = {
    "1L-uni-h4": ({"num_layers": 1, "hidden_size": 4}, True),
    "2L-uni-h8-nobias-dropout-tmajor": (
        {"num_layers": 2, "hidden_size": 8, "bias": False, "dropout": 0.25, "batch_first": False},
        True,
    ),
    "3L-uni-h6-normalised": (
        {"num_layers": 3, "hidden_size": 6, "input_mean": 0.13, "input_std": 0.3},
        True,
    ),
    "1L-bi-h5": ({"num_layers": 1, "hidden_size": 5, "bidirectional": True}, False),
    "3L-bi-h3-nobias-dropout": (
        {"num_layers": 3, "hidden_size": 3, "bidirectional": True, "bias": False, "dropout": 0.1},
        False,
    ),
}
BACKENDS = ("dynamo", "legacy", "torchscript")
#: max |logit diff| of int8 vs fp32 on these untrained models (measured: below 0.01)
INT8_BOUND = 0.05
#: int8, 28 rows as 14 + 14 with the state carried vs at once (per-call activation scales)
INT8_STREAM_BOUND = 2e-3

#: (config, backend) -> max |logit diff| of the export's validation, for the printed matrix
#: (None: the export was refused)
RESULTS: dict[tuple[str, str], float | None] = {}


def _dynamo_fixes_the_time_axis() -> bool:
    """torch < 2.14's dynamo exporter unrolls the LSTM over 28 fixed steps (seen on 2.11)."""
    import torch

    return tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < (2, 14)


def _refused(report: Any, name: str, backend: str) -> bool:
    """True (and recorded) when ``report`` is the documented refusal of an older dynamo."""
    if not isinstance(report, ExportError):
        return False
    assert backend.startswith("dynamo") and _dynamo_fixes_the_time_axis(), report
    assert "specialises the time axis" in str(report) and "legacy exporter" in str(report)
    RESULTS[name, backend] = None
    return True


def _save(folder: Path, **config: Any) -> Path:
    import torch

    from lstm_export.checkpoint import make_checkpoint, save_checkpoint
    from lstm_export.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(**config)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.pt"
    save_checkpoint(make_checkpoint(model), path)
    return path


@pytest.fixture(scope="module")
def export_cell(
    tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path
) -> Callable[[str, str], Any]:
    """``(config name, backend) -> export report``, each exported (and validated) once."""
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.export.to_torchscript import export_torchscript

    reports: dict[tuple[str, str], Any] = {}
    checkpoints: dict[str, Path] = {}

    def get(name: str, backend: str) -> Any:
        if (name, backend) not in reports:
            fields, stateful = CONFIGS[name]
            if name not in checkpoints:
                checkpoints[name] = _save(tmp_path_factory.mktemp(name), **fields)
            ckpt = checkpoints[name]
            if backend == "torchscript":
                report = export_torchscript(ckpt, data_dir=mnist_dir, with_state=stateful)
            else:
                try:
                    report = export_onnx(
                        ckpt,
                        ckpt.with_name(f"model.{backend}.onnx"),
                        legacy=backend == "legacy",
                        opset=17 if backend == "legacy" else None,
                        dynamic_seq=True,
                        with_state=stateful,
                        data_dir=mnist_dir,
                    )
                except ExportError as exc:
                    if backend == "legacy" or not _dynamo_fixes_the_time_axis():
                        raise
                    report = exc
            reports[name, backend] = report
        return reports[name, backend]

    return get


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_export_and_validate(
    export_cell: Callable[[str, str], Any], name: str, backend: str
) -> None:
    fields, stateful = CONFIGS[name]
    config = ModelConfig(**fields)
    report = export_cell(name, backend)
    if _refused(report, name, backend):
        return
    v = report.validation
    lengths = [(c.seq_len, c.batch) for c in v.checks]
    assert lengths == [
        (t, n) for t in (1, 7, 28, 100) for n in ((1, 7, 512) if t == 28 else (1, 7, 64))
    ]
    assert all(c.max_abs_diff <= 1e-4 and c.agree == c.batch for c in v.checks)
    if stateful:
        assert [s.batch for s in v.streams] == [1, 64]
        assert all(s.chunks == (7, 7, 14) and s.max_abs_diff <= 1e-4 for s in v.streams)
    else:
        assert v.streams == []
    RESULTS[name, backend] = max([v.max_abs_diff, *(s.max_abs_diff for s in v.streams)])
    if backend == "torchscript":
        assert report.op_counts.get("aten::lstm") == 1
        return
    audit = report.audit
    assert audit.op_counts.get("LSTM") == config.num_layers and not audit.control_flow
    want_dir = "bidirectional" if config.bidirectional else "forward"
    assert [n.direction for n in audit.lstm_nodes] == [want_dir] * config.num_layers
    # the symbolic time axis reaches every LSTM node: none sees a fixed number of steps
    assert [n.time_axis for n in audit.lstm_nodes] == ["time"] * config.num_layers
    assert str(audit.inputs[0]) == "pixels: float32 [batch, time, 28]"
    if stateful:
        h = f"[{config.state_layers}, batch, {config.output_size}]"
        c = f"[{config.state_layers}, batch, {config.hidden_size}]"
        assert [str(t) for t in audit.inputs][1:] == [f"h_0: float32 {h}", f"c_0: float32 {c}"]
        assert [str(t) for t in audit.outputs][1:] == [f"h_n: float32 {h}", f"c_n: float32 {c}"]


def _lstm_weight_constants(path: Path) -> list[Any]:
    """The tensors a saved TorchScript file feeds its ``aten::lstm`` as weights, in order."""
    import torch

    graph = torch.jit.load(str(path)).graph
    (lstm,) = [n for n in graph.nodes() if n.kind() == "aten::lstm"]
    source = list(lstm.inputs())[2].node()
    if source.kind() == "prim::ListConstruct":
        return [value.toIValue() for value in source.inputs()]
    return list(source.output().toIValue())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_torchscript_lstm_weights_are_one_buffer(
    export_cell: Callable[[str, str], Any], name: str
) -> None:
    """cuDNN copies an LSTM's weights into one buffer on every call unless they already are one
    (frozen constants keep the storage they had when saved): the file holds them as dense views
    of one storage, in ``all_weights`` order from offset 0, with nothing else in it."""
    weights = _lstm_weight_constants(export_cell(name, "torchscript").path)
    storage = weights[0].untyped_storage()
    assert all(w.untyped_storage().data_ptr() == storage.data_ptr() for w in weights)
    offsets = [w.storage_offset() for w in weights]
    sizes = [w.numel() for w in weights]
    assert offsets == [sum(sizes[:i]) for i in range(len(sizes))]
    assert storage.nbytes() == sum(sizes) * weights[0].element_size()
    assert all(w.is_contiguous() for w in weights)


@pytest.mark.parametrize("backend", ["dynamo", "legacy"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_int8(
    export_cell: Callable[[str, str], Any],
    mnist_test: tuple[np.ndarray, np.ndarray],
    name: str,
    backend: str,
    tmp_path: Path,
) -> None:
    """Every LSTM (bidirectional too) becomes DynamicQuantizeLSTM and runs at any length."""
    import onnx

    from lstm_export.export.audit import audit_onnx
    from lstm_export.export.quantize import to_int8
    from lstm_export.export.validate import length_batches
    from lstm_export.infer.registry import load_runner

    fields, stateful = CONFIGS[name]
    report = export_cell(name, backend)
    if _refused(report, name, f"{backend}-int8"):
        return
    fp32 = report.path
    model = to_int8(onnx.load(str(fp32)), audit_onnx(onnx.load(str(fp32))))
    after = audit_onnx(model)
    assert after.op_counts.get("DynamicQuantizeLSTM") == fields["num_layers"]
    assert "LSTM" not in after.op_counts
    path = tmp_path / "model.int8.onnx"
    onnx.save(model, str(path))
    worst = 0.0
    batches = length_batches(mnist_test[0], other_sizes=(1, 64))
    with load_runner(fp32, device="cpu") as ref, load_runner(path, device="cpu") as q:
        for batch in batches:
            diff = np.abs(q.infer(batch.images) - ref.infer(batch.images)).max()
            worst = max(worst, float(diff))
        if stateful:
            # The quantized graph streams too, nearly exactly: DynamicQuantizeLSTM quantizes its
            # input per call, so each chunk gets its own activation scale (measured: ~1e-4).
            x = batches[-1].images[:, :28]
            whole, _ = q.step(x)
            _, mid = q.step(x[:, :14])
            end, _ = q.step(x[:, 14:], mid)
            np.testing.assert_allclose(end, whole, atol=INT8_STREAM_BOUND, rtol=0)
            RESULTS[name, f"{backend}-int8-stream"] = float(np.abs(end - whole).max())
    assert worst < INT8_BOUND
    RESULTS[name, f"{backend}-int8"] = worst


def test_proj_size_exports_to_torchscript_only(tmp_path: Path, mnist_dir: Path) -> None:
    """ONNX's LSTM has no projection: refused before anything is written; TorchScript works."""
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.export.to_torchscript import export_torchscript

    ckpt = _save(tmp_path / "proj", num_layers=2, hidden_size=8, proj_size=3)
    for legacy in (False, True):
        with pytest.raises(ExportError, match=r"proj_size=3.*ONNX LSTM operator has no projection"):
            export_onnx(ckpt, legacy=legacy, dynamic_seq=True, data_dir=mnist_dir)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.pt"]
    report = export_torchscript(ckpt, data_dir=mnist_dir, with_state=True)
    assert report.validation.max_abs_diff <= 1e-4
    assert all(s.max_abs_diff <= 1e-4 for s in report.validation.streams)
    RESULTS["2L-uni-h8-proj3", "torchscript"] = max(
        [report.validation.max_abs_diff, *(s.max_abs_diff for s in report.validation.streams)]
    )


def test_bidirectional_cannot_stream(tmp_path: Path) -> None:
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.export.to_torchscript import export_torchscript

    ckpt = _save(tmp_path / "bi", hidden_size=4, bidirectional=True)
    for export in (export_onnx, export_torchscript):
        with pytest.raises(ConfigError, match="bidirectional LSTM cannot do"):
            export(ckpt, with_state=True, validate=False)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.pt"]


def test_matrix_summary() -> None:
    """Print the matrix (run with -s); every cell ran."""
    columns = [*BACKENDS, "dynamo-int8", "legacy-int8"]
    for name in CONFIGS:
        missing = [c for c in columns if (name, c) not in RESULTS]
        if missing:
            pytest.skip(f"run the whole module for the summary ({name}: {missing} missing)")
    width = max(len(n) for n in [*CONFIGS, "2L-uni-h8-proj3"])
    print("\nmax |logit diff| vs eager PyTorch (int8: vs the fp32 file)")
    print(" " * width + "".join(f"{c:>14}" for c in columns))
    for name in [*CONFIGS, "2L-uni-h8-proj3"]:
        cells = [RESULTS.get((name, c)) for c in columns]
        text = "".join(f"{v:>14.2e}" if v is not None else f"{'refused':>14}" for v in cells)
        print(f"{name:<{width}}{text}")
    print("int8, 28 rows fed as 14 + 14 with the state carried vs all at once:")
    for (name, column), value in RESULTS.items():
        if column.endswith("-int8-stream"):
            print(f"  {name} {column.removesuffix('-stream')}: {value:.2e}")
