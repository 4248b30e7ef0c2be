"""Metadata stored in exported files (ONNX ``metadata_props``, TorchScript ``metadata.json``), every
value a string: ``class_names`` (comma-separated), ``preprocessing`` and ``model_config`` (JSON),
``source_checkpoint_sha256``, ``test_accuracy``, ``seq_len`` (``28`` or ``any``), versions and
more (docs/stages.md). ``state_inputs`` and ``state_outputs`` tell the runners a file streams.
And the interface of an exported model: its inputs and outputs, their names and dims.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

    from lstm_export.config import ModelConfig
    from lstm_export.export.source import ExportPlan

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
#: the symbolic time axis (rows, LSTM steps) of a ``--dynamic-seq`` / ``--with-state`` graph
TIME_DIM = "time"
#: initial state inputs and final state outputs of a ``--with-state`` graph
STATE_INPUTS = ("h_0", "c_0")
STATE_OUTPUTS = ("h_n", "c_n")


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, dtype (numpy name) and dims (int or symbolic name)."""

    name: str
    dtype: str
    dims: list[int | str]

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype} [{', '.join(str(d) for d in self.dims)}]"


def interface(
    config: ModelConfig, time: int | str, *, with_state: bool, input_name: str = INPUT_NAME
) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The inputs and outputs of a model of ``config``: float32 ``input_name [batch, time, F]``
    -> ``logits [batch, classes]``; ``with_state`` adds ``h_0``, ``c_0`` in and ``h_n``, ``c_n``
    out (``[D * num_layers, batch, H_out]`` / ``[..., H]``)."""
    inputs = [TensorInfo(input_name, "float32", [BATCH_DIM, time, config.input_size])]
    outputs = [TensorInfo(OUTPUT_NAME, "float32", [BATCH_DIM, config.num_classes])]
    if with_state:
        h: list[int | str] = [config.state_layers, BATCH_DIM, config.output_size]
        c: list[int | str] = [config.state_layers, BATCH_DIM, config.hidden_size]
        for names, found in ((STATE_INPUTS, inputs), (STATE_OUTPUTS, outputs)):
            found += [TensorInfo(n, "float32", d) for n, d in zip(names, (h, c), strict=True)]
    return inputs, outputs


def source_metadata(plan: ExportPlan, *, exporter: str, fmt: str) -> dict[str, str]:
    """The metadata every file exported by ``plan`` carries."""
    import torch

    from lstm_export import __version__

    ckpt, config = plan.source.checkpoint, plan.source.model.config
    time = TIME_DIM if plan.any_length else 28
    inputs, outputs = interface(config, time, with_state=plan.with_state)
    meta: dict[str, str] = {
        "format": fmt,
        "class_names": ",".join(str(c) for c in ckpt["class_names"]),
        "preprocessing": json.dumps(ckpt["preprocessing"], sort_keys=True),
        "source_checkpoint_sha256": plan.source.sha256,
        "lstm_export_version": __version__,
        "torch_version": str(torch.__version__),
        "exporter": exporter,
        "model_config": json.dumps(config.to_dict(), sort_keys=True),
        "input": f"{inputs[0]}, raw pixels in [0, 1], one image row per step",
        "output": str(outputs[0]),
        "seq_len": "any" if time == TIME_DIM else "28",
        "precision": "fp32",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if plan.with_state:
        meta["state_inputs"] = ", ".join(map(str, inputs[1:])) + "; zeros give the stateless answer"
        meta["state_outputs"] = (
            ", ".join(map(str, outputs[1:])) + "; feed them as the next chunk's h_0, c_0"
        )
    metrics: dict[str, Any] = ckpt.get("metrics") or {}
    if isinstance(metrics.get("test_accuracy"), (int, float)):
        meta["test_accuracy"] = f"{float(metrics['test_accuracy']):.6g}"
        if isinstance(metrics.get("test_examples"), int):
            meta["test_examples"] = str(metrics["test_examples"])
    return meta


def set_onnx_metadata(model: onnx.ModelProto, meta: dict[str, str]) -> None:
    """Replace ``model.metadata_props`` keys in ``meta`` (others are kept)."""
    import onnx

    old = {p.key: p.value for p in model.metadata_props}
    onnx.helper.set_model_props(model, dict(sorted({**old, **meta}.items())))
