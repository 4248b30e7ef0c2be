"""Metadata stored in exported files (ONNX ``metadata_props``, TorchScript ``metadata.json``), every
value a string: ``class_names`` (comma-separated), ``preprocessing`` and ``model_config`` (JSON),
``source_checkpoint_sha256``, ``test_accuracy``, ``seq_len`` (``28`` or ``any``), versions and
more (docs/stages.md). ``state_inputs`` and ``state_outputs`` tell the runners a file streams.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

    from lstm_export.config import ModelConfig
    from lstm_export.export.source import Source

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
#: the symbolic time axis (rows, LSTM steps) of a ``--dynamic-seq`` / ``--with-state`` graph
TIME_DIM = "time"
#: initial state inputs and final state outputs of a ``--with-state`` graph
STATE_INPUTS = ("h_0", "c_0")
STATE_OUTPUTS = ("h_n", "c_n")


def state_shapes(config: ModelConfig) -> tuple[list[int | str], list[int | str]]:
    """Dims of ``h`` and of ``c``: ``[D * num_layers, batch, H_out]`` and ``[..., H]``."""
    return (
        [config.state_layers, BATCH_DIM, config.output_size],
        [config.state_layers, BATCH_DIM, config.hidden_size],
    )


def _dims(dims: list[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def source_metadata(
    source: Source, *, exporter: str, fmt: str, dynamic_seq: bool = False, with_state: bool = False
) -> dict[str, str]:
    """The metadata every file exported from ``source`` carries (``dynamic_seq``: a symbolic time
    axis; ``with_state``: ``h_0``, ``c_0`` in and ``h_n``, ``c_n`` out)."""
    import torch

    from lstm_export import __version__

    ckpt = source.checkpoint
    config = source.config
    time = TIME_DIM if dynamic_seq or with_state else 28
    meta: dict[str, str] = {
        "format": fmt,
        "class_names": ",".join(str(c) for c in ckpt["class_names"]),
        "preprocessing": json.dumps(ckpt["preprocessing"], sort_keys=True),
        "source_checkpoint_sha256": source.sha256,
        "lstm_export_version": __version__,
        "torch_version": str(torch.__version__),
        "exporter": exporter,
        "model_config": json.dumps(config.to_dict(), sort_keys=True),
        "input": f"{INPUT_NAME}: float32 [{BATCH_DIM}, {time}, {config.input_size}], "
        "raw pixels in [0, 1], one image row per step",
        "output": f"{OUTPUT_NAME}: float32 [{BATCH_DIM}, {config.num_classes}]",
        "seq_len": "any" if time == TIME_DIM else "28",
        "precision": "fp32",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if with_state:
        h, c = state_shapes(config)
        meta["state_inputs"] = (
            f"{STATE_INPUTS[0]}: float32 {_dims(h)}, {STATE_INPUTS[1]}: float32 {_dims(c)}; "
            "zeros give the stateless answer"
        )
        meta["state_outputs"] = (
            f"{STATE_OUTPUTS[0]}: float32 {_dims(h)}, {STATE_OUTPUTS[1]}: float32 {_dims(c)}; "
            "feed them as the next chunk's h_0, c_0"
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
