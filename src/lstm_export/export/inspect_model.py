"""``lstm-export inspect``: what a ``.onnx``, ``.ts`` or ``.pt`` file holds (docs/stages.md)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lstm_export.config import ModelConfig
from lstm_export.errors import ModelLoadError, first_line
from lstm_export.export.audit import LstmNode, audit_onnx
from lstm_export.export.metadata import TIME_DIM, TensorInfo, interface
from lstm_export.export.placement import Placement, node_placement
from lstm_export.fileio import file_digest
from lstm_export.trust import onnx_problem, refuse, torchscript_graph_problem

#: what kind of file is inspected, by its suffix
FORMATS = {".onnx": "onnx", ".ts": "torchscript", ".torchscript": "torchscript"}
FORMATS |= {".pt": "checkpoint", ".pth": "checkpoint"}


@dataclass
class ModelInfo:
    """Everything ``inspect`` reports about one file."""

    path: Path
    format: str
    file_size: int
    sha256: str
    ops: dict[str, int]
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    opset: int | None = None
    opset_imports: dict[str, int] = field(default_factory=dict)
    lstm_nodes: list[LstmNode] = field(default_factory=list)
    parameters: int | None = None
    placement: Placement | None = None
    details: dict[str, Any] = field(default_factory=dict)


def inspect_model(path: Path, device: str = "cpu") -> ModelInfo:
    """Describe ``path``; ``device`` (cpu|cuda|auto) picks the ONNX Runtime providers for ONNX."""
    path = Path(path)
    if path.is_dir():
        from lstm_export.checkpoint import resolve_checkpoint

        path = resolve_checkpoint(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} not found")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ModelLoadError(
            f"cannot inspect {path}: the suffix is not one of {', '.join(FORMATS)}"
        )
    if fmt == "onnx":
        return _inspect_onnx(path, device)
    return _inspect_torchscript(path) if fmt == "torchscript" else _inspect_checkpoint(path)


def _info(path: Path, fmt: str, sha256: str | None = None, **fields: Any) -> ModelInfo:
    """A :class:`ModelInfo` of ``path``, its size and digest filled in; from a readable
    ``model_config``, the parameters PyTorch counts (``details["parameters"]`` relates them to
    the numbers stored) and, but for ONNX, the interface (any number of rows, the state)."""
    info = ModelInfo(path, fmt, path.stat().st_size, sha256 or file_digest(path), **fields)
    try:
        config = ModelConfig.from_dict(json.loads(info.metadata["model_config"]))
    except Exception:  # no or an unreadable model_config
        return info
    if fmt != "onnx":
        info.inputs, info.outputs = interface(
            config, TIME_DIM, with_state="state_inputs" in info.metadata, input_name="x"
        )
    stored, info.parameters = info.parameters, config.parameter_count
    if stored is not None and stored != info.parameters:
        info.details["parameters"] = (
            f"{info.parameters:,} as PyTorch counts them (both LSTM biases); the file stores "
            f"{stored:,} numbers: {stored - info.parameters:+,} in shape constants and, in an "
            "int8 file, each weight's scale and zero point"
        )
    return info


def _inspect_onnx(path: Path, device: str) -> ModelInfo:
    import onnx

    if problem := onnx_problem(path):
        raise refuse(path, problem)
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable ONNX file: {first_line(exc)}") from exc
    if not model.graph.node:
        raise ModelLoadError(f"{path} is not a readable ONNX file: the graph has no nodes")
    audit = audit_onnx(model)
    shared = ("inputs", "outputs", "metadata", "opset", "opset_imports", "lstm_nodes", "parameters")
    return _info(
        path,
        "onnx",
        **{name: getattr(audit, name) for name in shared},
        ops=audit.op_counts,
        placement=node_placement(path, device),
        details={
            "ir_version": audit.ir_version,
            "producer": audit.producer,
            "nodes": audit.node_count,
        },
    )


def _inspect_torchscript(path: Path) -> ModelInfo:
    from lstm_export.export.to_torchscript import graph_op_counts
    from lstm_export.infer.runners.torch_runner import load_torchscript

    module, meta = load_torchscript(path)  # refused if it would run code while it loads
    graph = module.graph
    signature = [f"{i.debugName()}: {i.type()}" for i in list(graph.inputs())[1:]]
    return _info(
        path,
        "torchscript",
        ops=graph_op_counts(graph),
        metadata=meta,
        parameters=sum(p.numel() for p in module.parameters()) or None,
        details={
            "forward": f"({', '.join(signature)}) -> {next(iter(graph.outputs())).type()}",
            "seq_len": "any (scripted LSTM)",
            "frozen": not any(True for _ in module.parameters()),
            "trust": torchscript_graph_problem(module) or "pure tensor operations only",
        },
    )


def _inspect_checkpoint(path: Path) -> ModelInfo:
    from lstm_export.export.source import load_source

    source = load_source(path)
    ckpt, model = source.checkpoint, source.model
    metrics = ckpt.get("metrics") or {}
    meta = {
        "class_names": ",".join(str(c) for c in ckpt["class_names"]),
        "preprocessing": json.dumps(ckpt["preprocessing"], sort_keys=True),
        "model_config": json.dumps(model.config.to_dict(), sort_keys=True),
        "versions": json.dumps(ckpt.get("versions", {}), sort_keys=True, default=str),
        "created": str(ckpt.get("created", "")),
    }
    for key in ("test_accuracy", "test_examples", "epochs", "train_seconds"):
        if key in metrics:
            meta[key] = str(metrics[key])
    modules = Counter(type(m).__name__ for m in model.modules() if not list(m.children()))
    return _info(
        path,
        "checkpoint",
        source.sha256,
        ops=dict(modules.most_common()),
        metadata=meta,
        parameters=sum(p.numel() for p in model.parameters()),
        details={"format": str(ckpt.get("format")), "format_version": ckpt.get("format_version")},
    )
