"""Metadata stored in exported files (ONNX ``metadata_props``, TorchScript ``metadata.json``).

Every value is a string. Keys read by the runners and other stages:

``class_names`` (comma-separated), ``preprocessing`` (JSON), ``source_checkpoint_sha256``,
``test_accuracy`` (0..1, when the checkpoint recorded it), ``lstm_export_version``; plus
``model_config`` (JSON), ``torch_version``, ``exporter``, ``format``, ``input``, ``output``,
``created`` and, for derived files, ``precision`` and ``source_onnx_sha256``.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

    from lstm_export.export.source import Source

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"


def source_metadata(source: Source, *, exporter: str, fmt: str) -> dict[str, str]:
    """The metadata every file exported from ``source`` carries."""
    import torch

    from lstm_export import __version__

    ckpt = source.checkpoint
    config = source.config
    meta: dict[str, str] = {
        "format": fmt,
        "class_names": ",".join(str(c) for c in ckpt["class_names"]),
        "preprocessing": json.dumps(ckpt["preprocessing"], sort_keys=True),
        "source_checkpoint_sha256": source.sha256,
        "lstm_export_version": __version__,
        "torch_version": str(torch.__version__),
        "exporter": exporter,
        "model_config": json.dumps(config.to_dict(), sort_keys=True),
        "input": f"{INPUT_NAME}: float32 [{BATCH_DIM}, 28, {config.input_size}], raw pixels in [0, 1]",
        "output": f"{OUTPUT_NAME}: float32 [{BATCH_DIM}, {config.num_classes}]",
        "precision": "fp32",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    metrics: dict[str, Any] = ckpt.get("metrics") or {}
    if isinstance(metrics.get("test_accuracy"), (int, float)):
        meta["test_accuracy"] = f"{float(metrics['test_accuracy']):.6g}"
        if isinstance(metrics.get("test_examples"), int):
            meta["test_examples"] = str(metrics["test_examples"])
    return meta


def set_onnx_metadata(model: onnx.ModelProto, meta: dict[str, str]) -> None:
    """Replace ``model.metadata_props`` keys in ``meta`` (others are kept)."""
    existing = {p.key: p.value for p in model.metadata_props}
    existing.update(meta)
    del model.metadata_props[:]
    for key in sorted(existing):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, existing[key]


def onnx_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """``metadata_props`` as a dict."""
    return {p.key: p.value for p in model.metadata_props}
