"""Checks made on a model file from elsewhere before it runs (docs/trust.md says what each format
can do and why each check); the runners' ``trusted`` option lifts all but the external data check.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lstm_export.errors import ModelLoadError, first_line


def _kinds(prefix: str, names: str) -> frozenset[str]:
    return frozenset(f"{prefix}::{name}" for name in names.split())


#: every node kind found in the files ``export_torchscript`` writes (all architectures, with and
#: without state), and a margin of other pure tensor operations
TORCHSCRIPT_OPS = _kinds(
    "aten",
    "__contains__ __getitem__ __is__ __isnot__ __not__ add addmm Bool cat chunk clamp contiguous"
    " dim div dropout eq expand flatten flip Float format ge gt Int le len linear list"
    " log_softmax lstm lt matmul max mean min mm mul ne neg permute relu reshape select sigmoid"
    " size slice softmax split squeeze stack sub sum t tanh to transpose unsqueeze view zeros"
    " zeros_like",
) | _kinds(
    "prim",
    "Constant device dtype GetAttr If ListConstruct ListUnpack Loop NumToTensor RaiseException"
    " TupleConstruct TupleIndex TupleUnpack Uninitialized unchecked_cast",
)
#: operator domains of the ONNX files lstm-export writes (``com.microsoft``: int8 LSTMs)
ONNX_DOMAINS = frozenset({"", "ai.onnx", "com.microsoft"})
#: the most bytes of TorchScript code read to look for ``__setstate__``
_CODE_LIMIT = 64 * 2**20


def refuse(path: Path, problem: str) -> ModelLoadError:
    """The one-line error of a file refused by a trust check."""
    return ModelLoadError(
        f"{path} is refused: {problem}; run it only if you trust where it comes from"
    )


def torchscript_load_problem(path: Path) -> str | None:
    """What in a TorchScript archive would run while ``torch.jit.load`` reads it (a
    ``__setstate__``, which lstm-export never writes), or None; ModelLoadError for no zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            budget = _CODE_LIMIT
            for info in archive.infolist():
                if info.filename.endswith(".py") and "/code/" in f"/{info.filename}":
                    budget -= info.file_size
                    if budget < 0:
                        return "its TorchScript code is larger than any model's"
                    if b"__setstate__" in archive.read(info):
                        return "it defines __setstate__, code that runs while the file loads"
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ModelLoadError(
            f"{path} is not a loadable TorchScript file: {first_line(exc)}"
        ) from exc
    return None


def graph_kinds(block: Any) -> Iterator[str]:
    """The kind of every node of a TorchScript graph or block, nested blocks included."""
    for node in block.nodes():
        yield node.kind()
        for sub in node.blocks():
            yield from graph_kinds(sub)


def torchscript_graph_problem(module: Any) -> str | None:
    """The first operation of a loaded TorchScript module's ``forward`` (its inlined graph,
    nested blocks included) that is not in :data:`TORCHSCRIPT_OPS`, in words; or None."""
    found = sorted(set(graph_kinds(module.inlined_graph)) - TORCHSCRIPT_OPS)
    if found:
        return f"its graph calls {', '.join(found)}, outside the pure tensor operations allowed"
    return None


def onnx_nodes_and_tensors(graph: Any) -> Iterator[Any]:
    """Every node and tensor of an ONNX graph, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            yield from ([attribute.t] if attribute.HasField("t") else [])
            yield from attribute.tensors
            for sub in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                yield from onnx_nodes_and_tensors(sub)


def onnx_problem(path: Path, trusted: bool = False) -> str | None:
    """Why the ONNX file ``path`` may not run, or None: an operator domain outside
    :data:`ONNX_DOMAINS` (unless ``trusted``), or external data that is not a regular file in
    the model's own folder (absolute, ``..``, a link out, a FIFO or device). Reads the graph only."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # google.protobuf DecodeError and the like
        raise ModelLoadError(f"{path} is not a loadable ONNX file: {first_line(exc)}") from exc
    folder = os.path.realpath(Path(path).parent)
    domains = {o.domain for o in model.opset_import}
    for item in onnx_nodes_and_tensors(model.graph):
        if isinstance(item, onnx.NodeProto):
            domains.add(item.domain)
            continue
        location = {e.key: e.value for e in item.external_data}.get("location")
        if item.data_location != onnx.TensorProto.EXTERNAL or location is None:
            continue
        target = os.path.realpath(os.path.join(folder, location))
        inside = Path(folder) in Path(target).parents
        if os.path.isabs(location) or ".." in Path(location).parts or not inside:
            return f"its external data {location!r} is outside the model's folder"
        if not os.path.isfile(target):
            return f"its external data {location!r} is not a regular file"
    unknown = sorted(domains - ONNX_DOMAINS)
    if unknown and not trusted:
        return f"it uses operators of the domain(s) {', '.join(map(repr, unknown))}"
    return None


def openvino_ops_problem(model: Any) -> str | None:
    """The first operation of an OpenVINO model that is not from one of OpenVINO's own operator
    sets (an extension's), or None."""
    for op in model.get_ordered_ops():
        version = op.get_type_info().version_id
        if not str(version).startswith("opset"):
            return f"it uses the operation {op.get_type_name()} ({version}), not one of OpenVINO's"
    return None
