"""``lstm-export inspect``: what a ``.onnx``, ``.ts`` or ``.pt`` file holds.

ONNX: opset(s), op counts, inputs and outputs with dims (a symbolic time axis shows as
``time``; a ``--with-state`` file adds ``h_0``, ``c_0`` and ``h_n``, ``c_n``), LSTM nodes with the
time axis their input has after shape inference, metadata, and which execution provider each
node runs on for the requested device. TorchScript: graph ops, forward signature (any number of
rows; optional ``h_0``, ``c_0`` when stateful), ``metadata.json``. Checkpoint: architecture,
parameters, class names, metrics.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from lstm_export.errors import ModelLoadError
from lstm_export.export.audit import LstmNode, TensorInfo, audit_onnx
from lstm_export.export.placement import Placement, node_placement
from lstm_export.fileio import file_digest

log = logging.getLogger(__name__)


class ModelFormat(str, Enum):
    """What kind of file is inspected, from its suffix."""

    onnx = "onnx"
    torchscript = "torchscript"
    checkpoint = "checkpoint"


SUFFIXES: dict[str, ModelFormat] = {
    ".onnx": ModelFormat.onnx,
    ".ts": ModelFormat.torchscript,
    ".torchscript": ModelFormat.torchscript,
    ".pt": ModelFormat.checkpoint,
    ".pth": ModelFormat.checkpoint,
}


@dataclass
class ModelInfo:
    """Everything ``inspect`` reports about one file."""

    path: Path
    format: str
    file_size: int
    sha256: str
    ops: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    metadata: dict[str, str]
    opset: int | None = None
    opset_imports: dict[str, int] = field(default_factory=dict)
    lstm_nodes: list[LstmNode] = field(default_factory=list)
    parameters: int | None = None
    placement: Placement | None = None
    details: dict[str, Any] = field(default_factory=dict)


def model_format(path: Path) -> ModelFormat:
    """The format of ``path`` from its suffix (a run folder means its ``model.pt``)."""
    fmt = SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        known = ", ".join(SUFFIXES)
        raise ModelLoadError(f"cannot inspect {path}: the suffix is not one of {known}")
    return fmt


def inspect_model(path: Path, device: str = "cpu") -> ModelInfo:
    """Describe ``path``; ``device`` (cpu|cuda|auto) picks the ONNX Runtime providers for ONNX."""
    path = Path(path)
    if path.is_dir():
        from lstm_export.checkpoint import resolve_checkpoint

        path = resolve_checkpoint(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} not found")
    fmt = model_format(path)
    if fmt == ModelFormat.onnx:
        return _inspect_onnx(path, device)
    if fmt == ModelFormat.torchscript:
        return _inspect_torchscript(path)
    return _inspect_checkpoint(path)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _inspect_onnx(path: Path, device: str) -> ModelInfo:
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable ONNX file: {_first_line(exc)}") from exc
    if not model.graph.node:
        raise ModelLoadError(f"{path} is not a readable ONNX file: the graph has no nodes")
    audit = audit_onnx(model, file_size=path.stat().st_size)
    placement = node_placement(path, device)
    return ModelInfo(
        path=path,
        format=ModelFormat.onnx.value,
        file_size=path.stat().st_size,
        sha256=file_digest(path),
        ops=audit.op_counts,
        inputs=audit.inputs,
        outputs=audit.outputs,
        metadata=audit.metadata,
        opset=audit.opset,
        opset_imports=audit.opset_imports,
        lstm_nodes=audit.lstm_nodes,
        parameters=audit.parameters,
        placement=placement,
        details={
            "ir_version": audit.ir_version,
            "producer": audit.producer,
            "nodes": audit.node_count,
        },
    )


def _io_from_config(
    meta: dict[str, str], input_name: str = "x"
) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """A TorchScript file's interface from its metadata: any number of rows, and the state
    inputs and outputs of a ``--with-state`` file."""
    from lstm_export.config import ModelConfig
    from lstm_export.export.metadata import STATE_INPUTS, STATE_OUTPUTS, TIME_DIM, state_shapes

    try:
        config = ModelConfig.from_dict(json.loads(meta["model_config"]))
    except Exception:  # no or an unreadable model_config: nothing to say
        return [], []
    inputs = [TensorInfo(input_name, "float32", ["batch", TIME_DIM, config.input_size])]
    outputs = [TensorInfo("logits", "float32", ["batch", config.num_classes])]
    if "state_inputs" in meta:
        h, c = state_shapes(config)
        inputs += [
            TensorInfo(STATE_INPUTS[0], "float32", h),
            TensorInfo(STATE_INPUTS[1], "float32", c),
        ]
        outputs += [
            TensorInfo(STATE_OUTPUTS[0], "float32", h),
            TensorInfo(STATE_OUTPUTS[1], "float32", c),
        ]
    return inputs, outputs


def _inspect_torchscript(path: Path) -> ModelInfo:
    import torch

    from lstm_export.export.quiet import quiet_exporters
    from lstm_export.export.to_torchscript import METADATA_FILE, graph_op_counts

    extra = {METADATA_FILE: ""}
    try:
        with quiet_exporters():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise ModelLoadError(
            f"{path} is not a loadable TorchScript file: {_first_line(exc)}"
        ) from exc
    raw = extra[METADATA_FILE]
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        meta = {str(k): str(v) for k, v in json.loads(text).items()} if text else {}
    except (ValueError, AttributeError):
        meta = {"metadata.json": "unreadable"}
    inputs, outputs = _io_from_config(meta)
    graph = module.graph
    signature = [f"{i.debugName()}: {i.type()}" for i in list(graph.inputs())[1:]]
    return ModelInfo(
        path=path,
        format=ModelFormat.torchscript.value,
        file_size=path.stat().st_size,
        sha256=file_digest(path),
        ops=graph_op_counts(graph),
        inputs=inputs,
        outputs=outputs,
        metadata=meta,
        parameters=sum(p.numel() for p in module.parameters()) or None,
        details={
            "forward": f"({', '.join(signature)}) -> {next(iter(graph.outputs())).type()}",
            "seq_len": "any (scripted LSTM)",
            "frozen": not any(True for _ in module.parameters()),
        },
    )


def _inspect_checkpoint(path: Path) -> ModelInfo:
    from lstm_export.export.source import load_source

    source = load_source(path)
    ckpt, model, config = source.checkpoint, source.model, source.config
    metrics = ckpt.get("metrics") or {}
    meta = {
        "class_names": ",".join(str(c) for c in ckpt["class_names"]),
        "preprocessing": json.dumps(ckpt["preprocessing"], sort_keys=True),
        "model_config": json.dumps(config.to_dict(), sort_keys=True),
        "versions": json.dumps(ckpt.get("versions", {}), sort_keys=True, default=str),
        "created": str(ckpt.get("created", "")),
    }
    for key in ("test_accuracy", "test_examples", "epochs", "train_seconds"):
        if key in metrics:
            meta[key] = str(metrics[key])
    modules = Counter(type(m).__name__ for m in model.modules() if not list(m.children()))
    return ModelInfo(
        path=path,
        format=ModelFormat.checkpoint.value,
        file_size=path.stat().st_size,
        sha256=source.sha256,
        ops=dict(modules.most_common()),
        inputs=[TensorInfo("x", "float32", ["batch", "time", config.input_size])],
        outputs=[TensorInfo("logits", "float32", ["batch", config.num_classes])],
        metadata=meta,
        parameters=sum(p.numel() for p in model.parameters()),
        details={"format": str(ckpt.get("format")), "format_version": ckpt.get("format_version")},
    )
