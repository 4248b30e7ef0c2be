"""What an ONNX graph holds: opset, op counts, inputs and outputs, and its LSTM nodes.

The audit also enforces the export contract: every LSTM layer is one native ONNX ``LSTM`` node
(no ``Loop``/``Scan`` and no unrolled cell), and the graph maps ``pixels`` float32
``[batch, 28, 28]`` to ``logits`` float32 ``[batch, classes]`` with a symbolic batch axis.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lstm_export.errors import ExportError

if TYPE_CHECKING:
    import onnx

    from lstm_export.config import ModelConfig

#: ops that mean a recurrence was exported as control flow instead of a native LSTM
CONTROL_FLOW_OPS = ("Loop", "Scan", "If")
LSTM_OPS = ("LSTM", "DynamicQuantizeLSTM")


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, dtype (numpy name) and dims (int or symbolic name)."""

    name: str
    dtype: str
    dims: list[int | str]

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype} [{', '.join(str(d) for d in self.dims)}]"


@dataclass(frozen=True)
class LstmNode:
    """One LSTM node: which layer it is by order, its attributes and where its weights live."""

    name: str
    op_type: str
    hidden_size: int | None
    direction: str
    weights_are_initializers: bool


@dataclass
class OnnxAudit:
    """The facts printed after an export and by ``lstm-export inspect``."""

    opset: int
    opset_imports: dict[str, int]
    ir_version: int
    producer: str
    node_count: int
    op_counts: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    lstm_nodes: list[LstmNode]
    parameters: int
    metadata: dict[str, str] = field(default_factory=dict)
    file_size: int | None = None

    @property
    def control_flow(self) -> dict[str, int]:
        return {op: n for op, n in self.op_counts.items() if op in CONTROL_FLOW_OPS}


def _tensor_info(value: Any) -> TensorInfo:
    import onnx

    ttype = value.type.tensor_type
    dtype = str(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)) if ttype.elem_type else "?"
    dims: list[int | str] = []
    for d in ttype.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return TensorInfo(name=value.name, dtype=dtype, dims=dims)


def _all_nodes(graph: Any) -> list[Any]:
    """Nodes of ``graph`` and of every subgraph (Loop/Scan/If bodies)."""
    import onnx

    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                nodes.extend(_all_nodes(attr.g))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    nodes.extend(_all_nodes(g))
    return nodes


def audit_onnx(model: onnx.ModelProto, file_size: int | None = None) -> OnnxAudit:
    """Describe ``model`` (nothing is checked here; see :func:`check_contract`)."""
    import numpy as np
    import onnx

    graph = model.graph
    nodes = _all_nodes(graph)
    counts = Counter(n.op_type for n in nodes)
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    lstm_nodes = []
    for node in nodes:
        if node.op_type not in LSTM_OPS:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        direction = attrs.get("direction", b"forward")
        weights = [name for name in list(node.input)[1:4] if name]
        lstm_nodes.append(
            LstmNode(
                name=node.name,
                op_type=node.op_type,
                hidden_size=int(attrs["hidden_size"]) if "hidden_size" in attrs else None,
                direction=direction.decode() if isinstance(direction, bytes) else str(direction),
                weights_are_initializers=all(w in constants for w in weights),
            )
        )
    imports = {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}
    return OnnxAudit(
        opset=imports.get("ai.onnx", 0),
        opset_imports=imports,
        ir_version=int(model.ir_version),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        node_count=len(nodes),
        op_counts=dict(counts.most_common()),
        inputs=[_tensor_info(v) for v in graph.input if v.name not in constants],
        outputs=[_tensor_info(v) for v in graph.output],
        lstm_nodes=lstm_nodes,
        parameters=int(sum(int(np.prod(i.dims)) for i in graph.initializer)),
        metadata={p.key: p.value for p in model.metadata_props},
        file_size=file_size,
    )


def check_native_lstm(audit: OnnxAudit, config: ModelConfig) -> None:
    """Each LSTM layer must be one native ONNX ``LSTM`` node; raise ExportError otherwise."""
    problems = []
    if audit.control_flow:
        found = ", ".join(f"{op} x{n}" for op, n in audit.control_flow.items())
        problems.append(f"the graph holds control flow ({found})")
    if len(audit.lstm_nodes) != config.num_layers:
        problems.append(
            f"expected {config.num_layers} native LSTM node(s), one per layer, "
            f"found {len(audit.lstm_nodes)}"
        )
    want_dir = "bidirectional" if config.bidirectional else "forward"
    for node in audit.lstm_nodes:
        if node.hidden_size != config.hidden_size or node.direction != want_dir:
            problems.append(
                f"LSTM node {node.name!r} has hidden_size={node.hidden_size}, "
                f"direction={node.direction} (expected {config.hidden_size}, {want_dir})"
            )
    if problems:
        raise ExportError(
            "the LSTM was not exported as native ONNX LSTM ops: " + "; ".join(problems)
        )


def check_io(audit: OnnxAudit, config: ModelConfig, input_name: str, output_name: str) -> None:
    """One float32 input ``[batch, 28, F]`` and one float32 output ``[batch, classes]``."""
    want_in = (input_name, "float32", 28, config.input_size)
    want_out = (output_name, "float32", config.num_classes)
    problems = []
    if len(audit.inputs) != 1 or len(audit.outputs) != 1:
        problems.append(
            f"expected 1 input and 1 output, got {len(audit.inputs)} and {len(audit.outputs)}"
        )
    else:
        i, o = audit.inputs[0], audit.outputs[0]
        if (i.name, i.dtype, *i.dims[1:]) != want_in or len(i.dims) != 3:
            problems.append(
                f"input is {i}, expected {input_name}: float32 [batch, 28, {config.input_size}]"
            )
        if (o.name, o.dtype, *o.dims[1:]) != want_out or len(o.dims) != 2:
            problems.append(
                f"output is {o}, expected {output_name}: float32 [batch, {config.num_classes}]"
            )
        for t in (i, o):
            if t.dims and not isinstance(t.dims[0], str):
                problems.append(f"the batch axis of {t.name} is fixed to {t.dims[0]}, not symbolic")
    if problems:
        raise ExportError("exported graph has the wrong interface: " + "; ".join(problems))
