"""Semantics-preserving clean-ups of an exported LSTM graph: fewer nodes, no shape arithmetic.

The exporters wrap each ``LSTM`` node in bookkeeping that ONNX does not need. Each rewrite below
applies only where its pattern is proven on the graph itself, and leaves everything else alone:

1. **Zero initial state**: an ``initial_h``/``initial_c`` that is all zeros by construction
   (``Expand`` of a zero constant, ``ConstantOfShape`` of zero, or a slice of either) is left
   out, which ONNX defines as zeros.
2. **Flattening reshapes**: a ``Reshape`` whose target shape is computed at run time as
   ``Shape(x)[0], ..., Shape(x)[m-1], product of the rest`` gets the constant ``[0, ..., 0, -1]``.
3. **Between layers**: a one-direction LSTM's ``Y`` (``[T, 1, B, H]``), transposed to
   ``[T, B, 1, H]`` and flattened to ``[T, B, H]``, is ``Squeeze(Y, 1)``.
4. **The last layer's state**: ``Gather(Concat(Y_h of each layer), k)`` reads the ``k``-th row
   from the LSTM output that holds it.

Nodes and initializers nothing reads any more are then dropped. For the seed model (2 layers)
the dynamo exporter's 21 nodes become 6: ``Transpose, LSTM, Squeeze, LSTM, Gather, Gemm``. The
export's validation against eager PyTorch runs on the simplified graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

_LSTM_OPS = ("LSTM",)
#: ops that keep an all-zero input all zero
_ZERO_PRESERVING = ("Slice", "Gather", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity")
#: one element of a shape tensor: an int, ``("dim", tensor name, axis)`` or ``("mul", a, b)``
Sym = Any


@dataclass
class SimplifyReport:
    """Node counts before and after, and what each rewrite changed."""

    nodes_before: int
    nodes_after: int
    zero_states_dropped: int = 0
    reshapes_made_constant: int = 0
    squeezes: int = 0
    gathers_rewired: int = 0


class _Graph:
    """Lookups over a GraphProto: producers, consumers, constants; fresh names."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
                self.constants[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self._names = {i.name for i in graph.initializer} | set(self.producer)
        self._names |= {i.name for i in graph.input}

    def consumers(self, name: str) -> list[Any]:
        return [n for n in self.graph.node if name in n.input]

    def fresh(self, stem: str) -> str:
        i = 0
        while f"{stem}_{i}" in self._names:
            i += 1
        self._names.add(f"{stem}_{i}")
        return f"{stem}_{i}"

    def add_constant(self, stem: str, value: Any) -> str:
        from onnx import numpy_helper

        name = self.fresh(stem)
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        self.constants[name] = value
        return name

    def is_zero(self, name: str, depth: int = 0) -> bool:
        """Whether ``name`` is all zeros by construction (not by its values at run time)."""
        if depth > 8 or not name:
            return False
        if name in self.constants:
            value = self.constants[name]
            return bool(value.size) and not value.any()
        node = self.producer.get(name)
        if node is None:
            return False
        if node.op_type == "Expand":
            return self.is_zero(node.input[0], depth + 1)
        if node.op_type == "ConstantOfShape":
            value = _attr(node, "value")
            if value is None:
                return True  # the default fill is a float zero
            from onnx import numpy_helper

            return not numpy_helper.to_array(value).any()
        if node.op_type in _ZERO_PRESERVING:
            return self.is_zero(node.input[0], depth + 1)
        return False


def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _directions(lstm: Any) -> int:
    direction = _attr(lstm, "direction", b"forward")
    return 2 if direction in (b"bidirectional", "bidirectional") else 1


def _drop_zero_states(g: _Graph) -> int:
    dropped = 0
    for node in g.graph.node:
        if node.op_type not in _LSTM_OPS or node.domain not in ("", "ai.onnx"):
            continue
        for index in (5, 6):  # initial_h, initial_c
            if len(node.input) > index and g.is_zero(node.input[index]):
                node.input[index] = ""
                dropped += 1
        while node.input and node.input[-1] == "":
            node.input.pop()
    return dropped


def _symbolic(g: _Graph, name: str, depth: int = 0) -> list[Sym] | None:
    """A 1-D int64 shape tensor as symbols: ints, ``("dim", tensor, axis)``, ``("mul", a, b)``."""
    if depth > 12:
        return None
    if name in g.constants:
        value = g.constants[name]
        return [int(v) for v in value.reshape(-1)] if value.ndim <= 1 else None
    node = g.producer.get(name)
    if node is None:
        return None
    op = node.op_type
    if op == "Shape":
        rank = _rank(g, node.input[0])
        if rank is None:
            return None
        dims = [("dim", node.input[0], axis) for axis in range(rank)]
        return dims[slice(_attr(node, "start", 0), _attr(node, "end"))]
    if op == "Slice":
        data = _symbolic(g, node.input[0], depth + 1)
        bounds = [g.constants.get(i) for i in node.input[1:]]
        if data is None or len(bounds) < 2 or any(b is None or b.size != 1 for b in bounds):
            return None
        given = [int(b.reshape(-1)[0]) for b in bounds if b is not None]
        starts, ends, axes, steps = given + [0, 1][len(given) - 2 :]
        if axes != 0 or steps != 1:
            return None
        return data[slice(starts, ends)]
    if op == "Gather":
        data = _symbolic(g, node.input[0], depth + 1)
        index = g.constants.get(node.input[1])
        if data is None or index is None or _attr(node, "axis", 0) != 0:
            return None
        if index.ndim > 1 or not all(-len(data) <= int(i) < len(data) for i in index.reshape(-1)):
            return None
        return [data[int(i)] for i in index.reshape(-1)]  # a scalar index: one element
    if op in ("Reshape", "Squeeze", "Unsqueeze", "Identity"):
        data = _symbolic(g, node.input[0], depth + 1)
        return data if data is not None and len(data) == 1 else None
    if op == "Concat":
        parts = [_symbolic(g, i, depth + 1) for i in node.input]
        if any(p is None for p in parts):
            return None
        return [s for p in parts if p is not None for s in p]
    if op == "Mul":
        a, b = (_symbolic(g, i, depth + 1) for i in node.input)
        if a is None or b is None or len(a) != 1 or len(b) != 1:
            return None
        return [("mul", a[0], b[0])]
    return None


def _rank(g: _Graph, name: str) -> int | None:
    node = g.producer.get(name)
    if node is not None and node.op_type == "Transpose" and _attr(node, "perm") is not None:
        return len(_attr(node, "perm"))
    for info in list(g.graph.value_info) + list(g.graph.input) + list(g.graph.output):
        if info.name == name and info.type.tensor_type.HasField("shape"):
            return len(info.type.tensor_type.shape.dim)
    return None


def _factors(s: Sym) -> list[Sym] | None:
    if isinstance(s, tuple) and s[0] == "dim":
        return [s]
    if isinstance(s, tuple) and s[0] == "mul":
        a, b = _factors(s[1]), _factors(s[2])
        return a + b if a is not None and b is not None else None
    return None


def _flatten_target(data: str, target: list[Sym], rank: int) -> list[int] | None:
    """``[0]*m + [-1]`` when ``target`` is data's first m dims then the product of the rest
    (or -1)."""
    if not target or rank < len(target):
        return None
    for axis, s in enumerate(target[:-1]):
        if s != ("dim", data, axis):
            return None
    m = len(target) - 1
    if target[-1] == -1:
        return [0] * m + [-1]
    last = _factors(target[-1])
    if last is None or sorted(f[2] for f in last if f[1] == data) != list(range(m, rank)):
        return None
    if len(last) != rank - m:
        return None
    return [0] * m + [-1]


def _constant_reshapes(g: _Graph) -> int:
    import numpy as np

    made = 0
    for node in g.graph.node:
        if node.op_type != "Reshape" or _attr(node, "allowzero", 0) != 0:
            continue
        if node.input[1] in g.constants:
            continue
        rank = _rank(g, node.input[0])
        target = _symbolic(g, node.input[1])
        if rank is None or target is None:
            continue
        shape = _flatten_target(node.input[0], target, rank)
        if shape is not None:
            node.input[1] = g.add_constant("flatten_shape", np.array(shape, np.int64))
            made += 1
    return made


def _squeeze_between_layers(g: _Graph, opset: int) -> int:
    """Transpose(perm 0,2,1,3) of a one-direction LSTM's Y, reshaped to [0, 0, -1]: Squeeze."""
    import numpy as np
    import onnx

    done = 0
    for node in list(g.graph.node):
        if node.op_type != "Reshape" or node.input[1] not in g.constants:
            continue
        if [int(v) for v in g.constants[node.input[1]].reshape(-1)] != [0, 0, -1]:
            continue
        transpose = g.producer.get(node.input[0])
        if transpose is None or transpose.op_type != "Transpose":
            continue
        if list(_attr(transpose, "perm") or []) != [0, 2, 1, 3]:
            continue
        lstm = g.producer.get(transpose.input[0])
        if lstm is None or lstm.op_type not in _LSTM_OPS or lstm.output[0] != transpose.input[0]:
            continue
        if _directions(lstm) != 1 or len(g.consumers(transpose.output[0])) != 1:
            continue
        name = g.fresh("squeeze_y")
        if opset >= 13:  # axes became an input in opset 13
            axes = g.add_constant("squeeze_axes", np.array([1], np.int64))
            squeeze = onnx.helper.make_node(
                "Squeeze", [lstm.output[0], axes], [node.output[0]], name=name
            )
        else:
            squeeze = onnx.helper.make_node(
                "Squeeze", [lstm.output[0]], [node.output[0]], name=name, axes=[1]
            )
        position = list(g.graph.node).index(node)
        g.graph.node.remove(node)
        g.graph.node.insert(position, squeeze)
        g.producer[node.output[0]] = squeeze
        done += 1
    return done


def _rewire_state_gathers(g: _Graph) -> int:
    """Gather(Concat(Y_h or Y_c of LSTMs, axis 0), scalar k, axis 0): read k from its LSTM."""
    import numpy as np

    done = 0
    for node in g.graph.node:
        if node.op_type != "Gather" or _attr(node, "axis", 0) != 0:
            continue
        index = g.constants.get(node.input[1])
        concat = g.producer.get(node.input[0])
        if index is None or index.ndim != 0 or concat is None or concat.op_type != "Concat":
            continue
        if _attr(concat, "axis") != 0:
            continue
        rows = []
        for part in concat.input:
            lstm = g.producer.get(part)
            if lstm is None or lstm.op_type not in _LSTM_OPS or part not in lstm.output[1:3]:
                break
            rows.append((part, _directions(lstm)))
        else:
            k = int(index)
            total = sum(n for _, n in rows)
            if not -total <= k < total:
                continue
            k %= total
            for part, n in rows:
                if k < n:
                    node.input[0] = part
                    node.input[1] = g.add_constant("state_row", np.array(k, np.int64))
                    done += 1
                    break
                k -= n
    return done


def _drop_unused(graph: Any) -> None:
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output if o):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    inputs = {i.name for i in graph.input}  # an initializer that is also an input stays
    initializers = [i for i in graph.initializer if i.name in needed or i.name in inputs]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    existing = needed | {o for node in kept for o in node.output}
    value_info = [v for v in graph.value_info if v.name in existing]
    del graph.value_info[:]
    graph.value_info.extend(value_info)


def simplify_lstm_graph(model: onnx.ModelProto) -> tuple[onnx.ModelProto, SimplifyReport]:
    """A simplified copy of ``model`` (module docstring) and what changed; ``model`` is kept."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    before = len(out.graph.node)
    g = _Graph(out.graph)
    report = SimplifyReport(nodes_before=before, nodes_after=before)
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 0)
    report.zero_states_dropped = _drop_zero_states(g)
    report.reshapes_made_constant = _constant_reshapes(g)
    _drop_unused(out.graph)  # the shape arithmetic goes, so a transpose's one reader is visible
    report.squeezes = _squeeze_between_layers(g, opset)
    report.gathers_rewired = _rewire_state_gathers(g)
    _drop_unused(out.graph)
    report.nodes_after = len(out.graph.node)
    log.info("simplified the graph: %d -> %d nodes", before, report.nodes_after)
    return out, report
