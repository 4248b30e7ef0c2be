"""Read a Triton model repository: each ``<repo>/<model>/config.pbtxt`` and its version folders.

A repository (as written by ``lstm-export triton``, or by hand for Triton) looks like::

    repo/
      mnist/
        config.pbtxt          # Triton's ModelConfig in protobuf text format
        labels.txt            # optional: one class name per line (``label_filename``)
        1/model.onnx          # a version folder (a whole number) holding the model file
        2/model.onnx

:func:`read_repository` parses every ``config.pbtxt`` with Triton's own ``ModelConfig``
protobuf (tritonclient) and validates it: model and version names, a supported platform or
backend, the model file present inside the repository (nothing may point outside it: no
absolute paths, no ``..``, no symbolic link leaving the repository). Versions follow the config's
``version_policy`` as Triton does (none: the latest version only; ``all``; ``specific``); a
version folder is a whole number without leading zero. It returns one :class:`RepoModel` per
model and served version, sorted by name then version.

Errors are :class:`lstm_export.errors.ModelLoadError` naming the file and what is wrong.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lstm_export.errors import ConfigError, ModelLoadError, first_line
from lstm_export.fileio import read_regular_file
from lstm_export.serve.protocol import TensorSpec

MISSING_EXTRA = "a Triton model repository needs the serve extra: pip install 'lstm-export[serve]'"
#: the name of each model's configuration file
CONFIG_FILE = "config.pbtxt"
#: labels file written beside config.pbtxt (Triton's classification extension reads it)
LABELS_FILE = "labels.txt"


@dataclass(frozen=True)
class SequenceSettings:
    """``sequence_batching`` of a stateful model: ``max_sequence_idle_microseconds`` (Triton's
    default 1 s) and ``oldest.max_candidate_sequences`` (None: not bounded there)."""

    idle_timeout_us: int
    max_sequences: int | None


@dataclass(frozen=True)
class RepoModel:
    """One version of one model of a repository: its ``path`` (resolved, inside the repository),
    ``backend`` (the registry's name), ``max_batch_size`` (0: no batch dimension from Triton),
    ``max_queue_delay_us`` (None: no dynamic batching), tensors (``shape`` without the batch
    dimension where ``max_batch_size`` > 0), instance ``kind`` (``cpu``, ``gpu`` or ``auto``),
    ``sequence`` settings, and class names from the output's ``label_filename``."""

    name: str
    version: int
    path: Path
    backend: str
    max_batch_size: int
    max_queue_delay_us: int | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    config_path: Path
    kind: str = "cpu"
    sequence: SequenceSettings | None = None
    labels: tuple[str, ...] = ()


#: Triton's ``platform`` / ``backend`` values -> lstm_export's registry name
PLATFORMS = {"onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "torchscript"}
BACKENDS = {"onnxruntime": "onnxruntime", "pytorch": "torchscript", "openvino": "openvino"}
#: the model file Triton looks for in a version folder when ``default_model_filename`` is unset
DEFAULT_FILES = {"onnxruntime": "model.onnx", "torchscript": "model.pt", "openvino": "model.xml"}
#: Triton's ``max_sequence_idle_microseconds`` when the config leaves it 0
TRITON_SEQUENCE_IDLE_US = 1_000_000
#: a model, version, tensor or file name: no path separator, no leading dot, printable
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_TENSOR_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}")
_VERSION = re.compile(r"[1-9][0-9]{0,17}")
#: what is read of one repository, at most (a repository from strangers is bounded)
MAX_MODELS = 1000
MAX_VERSIONS = 1000
MAX_FILE_BYTES = 1 << 20  # a config.pbtxt or labels.txt
_MAX_DIMS = 8


def check_name(name: str, what: str = "model name", error: type[Exception] = ModelLoadError) -> str:
    """``name`` if it is a safe model or file name (letters, digits, ``_ . -``, at most 128, not
    starting with a dot, no path separator); else ``error`` (ModelLoadError)."""
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise error(
            f"{what} {name[:140]!r} is not allowed: use letters, digits, '_', '.', '-' "
            "(at most 128, not starting with '.' or '-')"
        )
    return name


def safe_name(text: str) -> str:
    """``text`` (a file's name) as a model name: other characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip(".-")[:128] or "model"


def datatype_name(data_type: int) -> str:
    """Triton's ``DataType`` enum value -> the OIP datatype string (``TYPE_FP32`` -> ``"FP32"``)."""
    name = model_config_module().DataType.Name(data_type).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def parse_config(path: Path) -> Any:
    """``config.pbtxt`` -> Triton's ``ModelConfig`` (protobuf text format), ModelLoadError if
    unreadable, too large or not a ModelConfig."""
    from google.protobuf import text_format

    mc = model_config_module()
    try:
        text = read_regular_file(path, MAX_FILE_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {first_line(exc)}") from exc
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelLoadError(
            f"{path} is not a Triton model configuration: {first_line(exc)}"
        ) from exc


def model_config_module() -> Any:
    """``tritonclient.grpc.model_config_pb2`` (Triton's ModelConfig), ConfigError if missing."""
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError):  # tritonclient.grpc raises RuntimeError without grpcio
        raise ConfigError(MISSING_EXTRA) from None
    return model_config_pb2


def read_repository(path: Path | str) -> list[RepoModel]:
    """Every servable model version of the repository ``path``, sorted by name then version.

    Folders whose names start with a dot are skipped, as are regular files beside the models.
    ModelLoadError when the folder is not a repository, holds no model, or any model in it is
    not valid (see the module docstring): one bad model fails the whole repository, so that
    what is served is what the repository says.
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelLoadError(f"model repository {root} is not a folder")
    real_root = root.resolve()
    folders = [e for e in sorted(root.iterdir()) if not e.name.startswith(".") and e.is_dir()]
    if len(folders) > MAX_MODELS:
        raise ModelLoadError(f"{root} holds {len(folders)} model folders (at most {MAX_MODELS})")
    models = [m for folder in folders for m in read_model(folder, real_root)]
    if not models:
        raise ModelLoadError(f"{root} holds no model (expected <model>/{CONFIG_FILE})")
    return models


def read_model(folder: Path, root: Path) -> list[RepoModel]:
    """The served versions of the model in ``folder`` of the repository ``root`` (resolved)."""
    name = check_name(folder.name)
    _inside(folder, root)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ModelLoadError(f"model folder {folder} has no {CONFIG_FILE}")
    _inside(config_path, root)
    config = parse_config(config_path)
    where = f"{config_path}"
    if config.name and config.name != name:
        raise ModelLoadError(f"{where}: name {config.name[:140]!r} is not its folder's, {name!r}")
    backend = _backend(config, where)
    filename = check_name(
        config.default_model_filename or DEFAULT_FILES[backend], "model file name"
    )
    if config.max_batch_size < 0:
        raise ModelLoadError(f"{where}: max_batch_size {config.max_batch_size} is negative")
    outputs = tuple(_tensor(t, where) for t in config.output)
    template = RepoModel(
        name=name,
        version=0,
        path=config_path,
        backend=backend,
        max_batch_size=int(config.max_batch_size),
        max_queue_delay_us=(
            int(config.dynamic_batching.max_queue_delay_microseconds)
            if config.HasField("dynamic_batching")
            else None
        ),
        inputs=tuple(_tensor(t, where) for t in config.input),
        outputs=outputs,
        config_path=config_path,
        kind=_kind(config, where),
        sequence=_sequence(config),
        labels=_labels(config, folder, root, where),
    )
    if not template.inputs or not outputs:
        raise ModelLoadError(f"{where}: a model needs at least one input and one output")
    found: list[RepoModel] = []
    for version in _versions(folder, config, where):
        model_file = folder / str(version) / filename
        _model_file(model_file, root, backend)
        found.append(replace(template, version=version, path=model_file.resolve()))
    return found


def _inside(path: Path, root: Path) -> Path:
    """``path`` resolved (links followed), ModelLoadError unless it lies inside ``root``."""
    real = path.resolve()
    if real != root and root not in real.parents:
        raise ModelLoadError(f"{path} points outside the model repository {root}")
    return real


def _backend(config: Any, where: str) -> str:
    """The registry's backend that ``platform`` and ``backend`` name (both set: the same)."""
    named = {PLATFORMS.get(config.platform, "?")} if config.platform else set()
    named |= {BACKENDS.get(config.backend, "?")} if config.backend else set()
    if len(named) != 1 or "?" in named:
        raise ModelLoadError(
            f"{where}: platform {config.platform[:60]!r} and backend {config.backend[:60]!r} are "
            f"not supported, or disagree (platforms: {', '.join(PLATFORMS)}; backends: "
            f"{', '.join(BACKENDS)})"
        )
    return named.pop()


def _tensor(t: Any, where: str) -> TensorSpec:
    dims = tuple(int(d) for d in t.dims)
    if not _TENSOR_NAME.fullmatch(t.name):
        raise ModelLoadError(f"{where}: tensor name {t.name[:140]!r} is not allowed")
    if len(dims) > _MAX_DIMS or any(d < -1 or d == 0 for d in dims):
        raise ModelLoadError(f"{where}: {t.name} has dims {list(dims)[:10]} (each -1 or >= 1)")
    return TensorSpec(t.name, datatype_name(t.data_type), dims)


def _kind(config: Any, where: str) -> str:
    """The instance groups' kind: ``cpu``, ``gpu`` or ``auto`` (Triton's default)."""
    mc = model_config_module()
    kinds = {
        mc.ModelInstanceGroup.KIND_AUTO: "auto",
        mc.ModelInstanceGroup.KIND_CPU: "cpu",
        mc.ModelInstanceGroup.KIND_GPU: "gpu",
    }
    found = {kinds.get(g.kind) for g in config.instance_group} or {"auto"}
    if None in found or len(found) > 1:
        raise ModelLoadError(f"{where}: instance groups must all be of one kind: CPU, GPU or AUTO")
    return str(found.pop())


def _sequence(config: Any) -> SequenceSettings | None:
    if not config.HasField("sequence_batching"):
        return None
    seq = config.sequence_batching
    oldest = seq.oldest.max_candidate_sequences if seq.HasField("oldest") else 0
    return SequenceSettings(
        idle_timeout_us=int(seq.max_sequence_idle_microseconds or TRITON_SEQUENCE_IDLE_US),
        max_sequences=int(oldest) or None,
    )


def _labels(config: Any, folder: Path, root: Path, where: str) -> tuple[str, ...]:
    """Class names from the ``label_filename`` of an output (a file beside config.pbtxt)."""
    with_labels = [o for o in config.output if o.label_filename]
    if not with_labels:
        return ()
    if len(with_labels) > 1:
        raise ModelLoadError(f"{where}: more than one output names a label file")
    output = with_labels[0]
    path = folder / check_name(output.label_filename, "label file name")
    _inside(path, root)
    try:
        text = read_regular_file(path, MAX_FILE_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read labels {path}: {first_line(exc)}") from exc
    labels = tuple(text.rstrip("\n").split("\n")) if text.strip() else ()
    if any(not label.isprintable() for label in labels):
        raise ModelLoadError(f"{path}: a label holds control characters")
    classes = int(output.dims[-1]) if output.dims else -1
    if classes > 0 and len(labels) != classes:
        raise ModelLoadError(
            f"{path} has {len(labels)} labels but output {output.name!r} has {classes} classes"
        )
    return labels


def _versions(folder: Path, config: Any, where: str) -> list[int]:
    """The versions served under ``config.version_policy`` (Triton's default: the latest one).

    As Triton does, only folders named by a whole number without leading zero are versions."""
    present = sorted(
        int(e.name) for e in folder.iterdir() if e.is_dir() and _VERSION.fullmatch(e.name)
    )
    if len(present) > MAX_VERSIONS:
        raise ModelLoadError(f"{folder} holds {len(present)} versions (at most {MAX_VERSIONS})")
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice") if config.HasField("version_policy") else None
    if choice == "all":
        chosen = present
    elif choice == "specific":
        chosen = sorted(set(int(v) for v in policy.specific.versions))
        missing = sorted(set(chosen) - set(present))
        if missing:
            raise ModelLoadError(f"{where}: version folder(s) {missing[:10]} are missing")
    else:
        count = int(policy.latest.num_versions) if choice == "latest" else 1
        chosen = present[-max(1, count) :] if present else []
    if not chosen:
        raise ModelLoadError(f"model folder {folder} has no version folder (1/, 2/, ...)")
    return chosen


def _model_file(path: Path, root: Path, backend: str) -> None:
    """ModelLoadError unless ``path`` (and an IR's ``.bin``) is a regular file inside ``root``."""
    files = [path, path.with_suffix(".bin")] if backend == "openvino" else [path]
    for file in files:
        if not file.is_file():
            raise ModelLoadError(f"model file {file} not found")
        real = _inside(file, root)
        if not stat.S_ISREG(os.stat(real).st_mode):
            raise ModelLoadError(f"model file {file} is not a regular file")
