"""What an ONNX graph holds (opset, op counts, inputs and outputs, LSTM nodes), and the export
contract checked on it: each LSTM layer one native ``LSTM`` node, and the interface
``pixels [batch, T, 28] -> logits [batch, classes]`` (plus the state with ``--with-state``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lstm_export.errors import ExportError
from lstm_export.export.metadata import TensorInfo, interface
from lstm_export.trust import onnx_nodes_and_tensors

if TYPE_CHECKING:
    import onnx

    from lstm_export.config import ModelConfig

#: ops that mean a recurrence was exported as control flow instead of a native LSTM
_CONTROL_FLOW_OPS = ("Loop", "Scan", "If")
_LSTM_OPS = ("LSTM", "DynamicQuantizeLSTM")


@dataclass(frozen=True)
class LstmNode:
    """One LSTM node: which layer it is by order, its attributes and where its weights live.

    ``time_axis``: the sequence dim of its input ``X`` after shape inference (an int when the
    graph fixes the length, a name when symbolic, ``"?"`` when shape inference cannot tell).
    """

    name: str
    op_type: str
    hidden_size: int | None
    direction: str
    weights_are_initializers: bool
    time_axis: int | str = "?"


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
        return {op: n for op, n in self.op_counts.items() if op in _CONTROL_FLOW_OPS}


def _dims(value: Any) -> list[int | str]:
    dims: list[int | str] = []
    for d in value.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            # unk__N: a name shape inference made up for a dim it could not relate to any input
            dims.append("?" if not d.dim_param or d.dim_param.startswith("unk__") else d.dim_param)
    return dims


def _tensor_info(value: Any) -> TensorInfo:
    import onnx

    ttype = value.type.tensor_type
    dtype = str(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)) if ttype.elem_type else "?"
    return TensorInfo(name=value.name, dtype=dtype, dims=_dims(value))


def without_shapes(model: Any) -> Any:
    """A copy of ``model`` without the shapes it is annotated with (value_info, output shapes)."""
    import onnx

    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]
    for output in bare.graph.output:
        output.type.tensor_type.ClearField("shape")
    return bare


def inferred_dims(model: Any) -> dict[str, list[int | str]]:
    """Every value's dims by ONNX shape inference with data propagation from the graph alone
    (:func:`without_shapes`); ``"?"`` where it cannot tell, {} if it fails."""
    import onnx

    try:
        graph = onnx.shape_inference.infer_shapes(without_shapes(model), data_prop=True).graph
    except Exception:  # contrib ops, malformed graphs: the audit still describes the rest
        return {}
    return {
        v.name: _dims(v)
        for v in (*graph.input, *graph.value_info, *graph.output)
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")
    }


def audit_onnx(model: onnx.ModelProto) -> OnnxAudit:
    """Describe ``model`` (nothing is checked here: see :func:`check_native_lstm`, :func:`check_io`)."""
    import numpy as np
    import onnx

    graph = model.graph
    nodes = [n for n in onnx_nodes_and_tensors(graph) if isinstance(n, onnx.NodeProto)]
    counts = Counter(n.op_type for n in nodes)
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    lstm_nodes = []
    lstms = [n for n in nodes if n.op_type in _LSTM_OPS]
    shapes = inferred_dims(model) if lstms else {}
    for node in lstms:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        direction = attrs.get("direction", b"forward")
        weights = [name for name in list(node.input)[1:4] if name]
        x_dims = shapes.get(node.input[0], [])
        seq_axis = 1 if attrs.get("layout", 0) == 1 else 0  # layout 1: [batch, seq, input]
        lstm_nodes.append(
            LstmNode(
                name=node.name,
                op_type=node.op_type,
                hidden_size=int(attrs["hidden_size"]) if "hidden_size" in attrs else None,
                direction=direction.decode() if isinstance(direction, bytes) else str(direction),
                weights_are_initializers=all(w in constants for w in weights),
                time_axis=x_dims[seq_axis] if len(x_dims) == 3 else "?",
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


def check_io(
    audit: OnnxAudit, config: ModelConfig, *, dynamic_seq: bool = False, with_state: bool = False
) -> None:
    """The graph's :func:`interface`, the batch axis symbolic, ``T`` 28 or with ``dynamic_seq``
    a symbolic axis that reaches every LSTM node; ExportError lists every difference."""
    want_in, want_out = interface(
        config, "<symbolic>" if dynamic_seq else 28, with_state=with_state
    )
    problems = []
    for kind, got, want in (("input", audit.inputs, want_in), ("output", audit.outputs, want_out)):
        if [t.name for t in got] != [t.name for t in want]:
            problems.append(
                f"expected {kind}s {', '.join(t.name for t in want)}, "
                f"got {', '.join(t.name for t in got) or 'none'}"
            )
            continue
        problems += [
            f"{kind} is {g}, expected {w}"
            for g, w in zip(got, want, strict=True)
            if (g.dtype, _symbolic(g.dims)) != (w.dtype, _symbolic(w.dims))
        ]
    if dynamic_seq:
        fixed = [n for n in audit.lstm_nodes if isinstance(n.time_axis, int)]
        if fixed:
            problems.append(
                "the time axis does not reach the LSTM: "
                + ", ".join(f"node {n.name!r} runs {n.time_axis} fixed steps" for n in fixed)
            )
    if problems:
        raise ExportError("exported graph has the wrong interface: " + "; ".join(problems))


def _symbolic(dims: list[int | str]) -> list[int | str]:
    """``dims`` with every symbolic dim (any name, or ``"?"``) as ``"*"``, to compare shapes."""
    return [d if isinstance(d, int) else "*" for d in dims]
