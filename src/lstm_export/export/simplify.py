"""Semantics-preserving clean-ups of an exported LSTM graph: fewer nodes, no shape arithmetic.

Each rewrite applies only where it is proven on the graph itself (docs/design.md): zero initial
states left out, computed ``Reshape`` targets made constant, a one-direction ``Y`` squeezed, and
``Gather(Concat(Y_h...), k)`` read from the LSTM that holds the row. The seed model's 21 dynamo
nodes become 6; the export's validation runs on the simplified graph.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from lstm_export.export.audit import inferred_dims

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

#: ops whose first input, all zeros, gives an all-zero output
_ZERO_PRESERVING = ("Expand", "Slice", "Gather", "Reshape", "Squeeze", "Unsqueeze", "Transpose")


def _const(value: Any) -> np.ndarray | None:
    """The array of an initializer or a Constant's output, else None."""
    import onnx_ir as ir

    tensor = None if value is None else ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _is_zero(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is all zeros by construction (not by its values at run time)."""
    array = _const(value)
    if array is not None:
        return bool(array.size) and not array.any()
    node = value.producer() if value is not None and depth < 8 else None
    if node is not None and node.op_type == "ConstantOfShape":
        fill = node.attributes.get("value")  # the default fill is a float zero
        return fill is None or not fill.as_tensor().numpy().any()
    if node is None or node.op_type not in _ZERO_PRESERVING:
        return False
    return _is_zero(node.inputs[0], depth + 1)


def _drop_zero_states(graph: Any) -> int:
    """Leave out each LSTM's ``initial_h``/``initial_c`` (inputs 5, 6) that is zero."""
    dropped = 0
    for node in graph:
        if node.op_type == "LSTM" and node.domain == "":
            for index in range(5, min(7, len(node.inputs))):
                if _is_zero(node.inputs[index]):
                    node.replace_input_with(index, None)
                    dropped += 1
            while node.inputs and node.inputs[-1] is None:
                node.resize_inputs(len(node.inputs) - 1)
    return dropped


def _flatten_rule(dims: dict[str, list[int | str]]) -> Any:
    """Rewrite 2: ``Reshape(data, computed)`` -> ``Reshape(data, [0, ..., 0, -1])``, where
    ``dims`` (:func:`~lstm_export.export.audit.inferred_dims`) show it keeps the leading dims."""
    import onnx_ir as ir
    from onnxscript.rewriter import pattern

    def keeps_leading_dims(context: Any, data: Any, shape: Any, out: Any) -> bool:
        got, have = dims.get(out.name), dims.get(data.name)
        if _const(shape) is not None or context.root.attributes.get_int("allowzero", 0):
            return False
        if not got or not have or len(got) > len(have):
            return False
        lead = zip(got[:-1], have[: len(got) - 1], strict=True)
        return all(g == h and g != "?" for g, h in lead)  # equal sizes or symbols

    def constant_target(op: Any, data: Any, shape: Any, out: Any) -> Any:
        target = np.array([0] * (len(dims[out.name]) - 1) + [-1], np.int64)
        return op.Reshape(data, op.initializer(ir.tensor(target, name=f"{out.name}_shape")))

    return pattern.RewriteRule(
        lambda op, data, shape: op.Reshape(data, shape, _outputs=["out"]),
        constant_target,
        keeps_leading_dims,
    )


def _squeeze_rule(opset: int) -> Any:
    """Rewrite 3: ``Reshape(Transpose(Y, (0, 2, 1, 3)), [0, 0, -1])`` -> ``Squeeze(Y, 1)``."""
    import onnx_ir as ir
    from onnxscript.rewriter import pattern

    def one_direction_y(context: Any, y: Any, shape: Any) -> bool:
        lstm, target = y.producer(), _const(shape)
        return (
            opset >= 13  # Squeeze's axes are an input from opset 13 on
            and lstm is not None
            and (lstm.op_type, lstm.domain, y.index()) == ("LSTM", "", 0)
            and lstm.attributes.get_string("direction", "forward") != "bidirectional"
            and target is not None
            and target.tolist() == [0, 0, -1]
            and not context.root.attributes.get_int("allowzero", 0)
        )

    def squeeze(op: Any, y: Any, shape: Any) -> Any:
        axes = op.initializer(ir.tensor(np.array([1], np.int64), name=f"{y.name}_axes"))
        return op.Squeeze(y, axes)

    return pattern.RewriteRule(
        lambda op, y, shape: op.Reshape(op.Transpose(y, perm=[0, 2, 1, 3]), shape),
        squeeze,
        one_direction_y,
    )


def _gather_rule() -> Any:
    """Rewrite 4: ``Gather(Concat(Y_h or Y_c of LSTMs, axis 0), k)`` -> ``Gather(Y_h, row)``."""
    import onnx_ir as ir
    from onnxscript.rewriter import pattern

    def reads_a_state(context: Any, states: Any, k: Any) -> bool:
        axis = context.root.attributes.get_int("axis", 0)
        return axis == 0 and _state_row(states, _const(k)) is not None

    def read_row(op: Any, states: Any, k: Any) -> Any:
        found = _state_row(states, _const(k))
        assert found is not None  # as the check found
        part, row = found
        index = op.initializer(ir.tensor(np.array(row, np.int64), name=f"{part.name}_row"))
        return op.Gather(part, index, axis=0)

    return pattern.RewriteRule(lambda op, states, k: op.Gather(states, k), read_row, reads_a_state)


def _state_row(states: Any, k: np.ndarray | None) -> tuple[Any, int] | None:
    """``(LSTM output, row)`` that row ``k`` (a scalar) of ``states`` is, when ``states`` is
    ``Concat(Y_h or Y_c of LSTMs, axis 0)``; else None."""
    concat = states.producer()
    if k is None or k.ndim != 0 or concat is None or concat.op_type != "Concat":
        return None
    if concat.attributes.get_int("axis") != 0:
        return None
    rows = []
    for part in concat.inputs:
        lstm = part.producer() if part is not None else None
        if lstm is None or lstm.op_type != "LSTM" or part.index() not in (1, 2):
            return None
        both = lstm.attributes.get_string("direction", "forward") == "bidirectional"
        rows += [(part, row) for row in range(2 if both else 1)]
    return rows[int(k)] if -len(rows) <= int(k) < len(rows) else None


def simplify_lstm_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """A simplified copy of ``model`` (module docstring), or ``model`` itself where nothing
    applies; ``model`` is never changed."""
    import onnx_ir as ir
    from onnxscript.rewriter import pattern

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    dims = inferred_dims(model)
    graph = ir.serde.deserialize_model(model)
    changed = _drop_zero_states(graph.graph)
    for rules in ([_flatten_rule(dims)], [_squeeze_rule(opset), _gather_rule()]):
        changed += pattern.RewriteRuleSet(rules).apply_to_model(graph)
        ir.passes.common.RemoveUnusedNodesPass()(graph)  # so a transpose's one reader is seen
    if not changed:
        return model
    out = ir.serde.serialize_model(graph)
    log.info("simplified the graph: %d -> %d nodes", len(model.graph.node), len(out.graph.node))
    return out
