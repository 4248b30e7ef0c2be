"""Write a Triton model repository for an exported model, ``config.pbtxt`` built as Triton's own
``ModelConfig`` protobuf (tritonclient) and written in protobuf text format.

:func:`write_repository` takes a run folder (its ``model.onnx``, and ``model.ts`` where
TorchScript is asked for) or an ONNX file and writes::

    repo/<name>/config.pbtxt + labels.txt + <version>/model.onnx          platform onnxruntime_onnx
    repo/<name>_torchscript/...            <version>/model.pt             platform pytorch_libtorch
    repo/<name>_openvino/...               <version>/model.xml + .bin     backend openvino

Each config's inputs and outputs are read from the written file itself (the ONNX Runtime
session; the TorchScript and OpenVINO files through the runner registry) and cross-checked
against the file's metadata (class names, time axis, state tensors); the TorchScript and
OpenVINO models must give the ONNX model's logits on a probe batch. Tensors: ``pixels``
FP32 ``[28, 28]`` (``[-1, 28]`` for a file that takes any number of rows) -> ``logits`` FP32
``[C]``, the batch axis implied by ``max_batch_size``; TorchScript tensors are named as Triton's
libtorch backend wants, ``INPUT__0`` -> ``OUTPUT__0``. ``dynamic_batching`` (when
``max_batch_size`` > 1), ``instance_group``, ``version_policy: all``, and the class names in
``labels.txt`` (the logits output's ``label_filename``, Triton's classification extension).

A stateful export (``--with-state``) gets ``sequence_batching`` with Triton's implicit state
(``h_n`` -> ``h_0``, ``c_n`` -> ``c_0``, zeros at a sequence's start) and ``max_batch_size: 0``
with full dims (``[1, -1, 28]``): the LSTM state's batch axis is its second, and Triton batches
state along the first, so each execution runs one sequence.

Atomic: everything is written into a temporary folder beside the repository, read back with
:func:`lstm_export.serve.repository.read_repository`, and only then renamed into place. The
target must be new, empty, or already a model repository (every entry a model folder with a
``config.pbtxt``); a model that is already there only gets a new version, and only when its
configuration is the same.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from lstm_export.artifacts import Artifact
from lstm_export.errors import ConfigError, ModelLoadError, OutputError, first_line
from lstm_export.infer.base import check_counts
from lstm_export.serve.repository import (
    CONFIG_FILE,
    LABELS_FILE,
    PLATFORMS,
    check_name,
    model_config_module,
    parse_config,
    read_repository,
    safe_name,
)

#: Triton's tensor names for a TorchScript model (libtorch backend: ``<name>__<index>``)
LIBTORCH_INPUTS = ("INPUT__0", "INPUT__1", "INPUT__2")
LIBTORCH_OUTPUTS = ("OUTPUT__0", "OUTPUT__1", "OUTPUT__2")
#: tolerance of the probe comparison between the TorchScript or OpenVINO file and the ONNX one
PROBE_TOLERANCE = 1e-4
_PROBE_ROWS = 8


class InstanceKind(str, Enum):
    """Where Triton runs the model's instances."""

    cpu = "cpu"
    gpu = "gpu"


@dataclass(frozen=True)
class TritonOptions:
    """What :func:`write_repository` writes; ``name`` None: the run folder's (or file's) name."""

    name: str | None = None
    version: int = 1
    torchscript: bool = False
    openvino: bool = False
    max_batch_size: int = 256
    max_queue_delay_us: int = 100
    instances: int = 1
    kind: InstanceKind = InstanceKind.cpu
    #: stateful models: sequences kept at once, and how long an idle one lives
    max_sequences: int = 1000
    sequence_idle_us: int = 60_000_000

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", InstanceKind(self.kind))
        if self.name is not None:
            check_name(self.name, error=ConfigError)
        check_counts(
            self, "version", "max_batch_size", "instances", "max_sequences", "sequence_idle_us"
        )
        delay = self.max_queue_delay_us
        if type(delay) is not int or delay < 0:
            raise ConfigError(f"max_queue_delay_us must be a whole number >= 0, got {delay!r}")
        if self.openvino and self.kind == InstanceKind.gpu:
            raise ConfigError("OpenVINO runs on the CPU only: it cannot have GPU instances")


@dataclass(frozen=True)
class Signature:
    """What a model takes and returns: ``pixels`` (N, ``time``, ``features``) -> ``logits``
    (N, ``classes``); ``state`` (layers, H_out, H) for a stateful model (else None)."""

    time: int
    features: int
    classes: int
    state: tuple[int, int, int] | None
    labels: tuple[str, ...]


@dataclass
class WrittenModel:
    """One model folder written (or one version added to it)."""

    name: str
    version: int
    backend: str
    folder: Path
    added_version_only: bool = False


@dataclass
class RepositoryReport:
    """What :func:`write_repository` did."""

    repo: Path
    models: list[WrittenModel]
    created: bool
    notes: list[str] = field(default_factory=list)


# -- sources ---------------------------------------------------------------------------------------
def resolve_sources(model: Path, options: TritonOptions) -> tuple[Path, Path | None, str]:
    """``(onnx file, TorchScript file or None, default model name)`` for a run folder or file."""
    model = Path(model)
    if model.is_dir():
        onnx_path, default = model / Artifact.onnx.value, model.resolve().name
        if not onnx_path.is_file():
            raise ModelLoadError(
                f"run folder {model} has no {Artifact.onnx.value}: export it first"
            )
    elif model.is_file():
        if model.suffix.lower() != ".onnx":
            raise ModelLoadError(f"{model} is not an ONNX file (.onnx) or a run folder")
        onnx_path, default = model, model.name[: -len(".onnx")].replace(".", "_")
    else:
        raise ModelLoadError(f"{model} not found (expected a run folder or an ONNX file)")
    ts_path = None
    if options.torchscript:
        ts_path = onnx_path.with_name(Artifact.torchscript.value)
        if not ts_path.is_file():
            raise ModelLoadError(f"no TorchScript file {ts_path} beside {onnx_path.name}")
    return onnx_path, ts_path, safe_name(default)


# -- signatures ------------------------------------------------------------------------------------
def onnx_signature(path: Path, shown: Path | None = None) -> Signature:
    """The signature of an ONNX file, read from its ONNX Runtime session and checked against its
    metadata (ModelLoadError naming what disagrees, and the file as ``shown``)."""
    who = str(shown or path)
    from lstm_export.export.metadata import INPUT_NAME, OUTPUT_NAME, STATE_INPUTS, STATE_OUTPUTS
    from lstm_export.ort_session import open_session

    session = open_session(path, "cpu")
    meta = dict(session.get_modelmeta().custom_metadata_map)
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    stateful = STATE_INPUTS[0] in inputs
    want_in = [INPUT_NAME, *STATE_INPUTS] if stateful else [INPUT_NAME]
    want_out = [OUTPUT_NAME, *STATE_OUTPUTS] if stateful else [OUTPUT_NAME]
    if sorted(inputs) != sorted(want_in) or sorted(outputs) != sorted(want_out):
        raise ModelLoadError(
            f"{who}: session takes {sorted(inputs)} and returns {sorted(outputs)}; "
            f"expected {want_in} -> {want_out}"
        )
    for t in [*inputs.values(), *outputs.values()]:
        if t.type != "tensor(float)":
            raise ModelLoadError(f"{who}: {t.name} is {t.type}, expected tensor(float)")
    pixels, logits = inputs[INPUT_NAME].shape, outputs[OUTPUT_NAME].shape
    if len(pixels) != 3 or len(logits) != 2 or not _fixed(pixels[2]) or not _fixed(logits[1]):
        raise ModelLoadError(
            f"{who}: {INPUT_NAME} {pixels} -> {OUTPUT_NAME} {logits}; expected "
            "[batch, time, features] -> [batch, classes]"
        )
    if _fixed(pixels[0]) or _fixed(logits[0]):
        raise ModelLoadError(f"{who}: the batch axis is fixed ({pixels}), not symbolic")
    state = _onnx_state(who, inputs, outputs) if stateful else None
    sig = Signature(
        time=int(pixels[1]) if _fixed(pixels[1]) else -1,
        features=int(pixels[2]),
        classes=int(logits[1]),
        state=state,
        labels=_labels(meta, int(logits[1]), who),
    )
    _check_metadata(sig, meta, who)
    return sig


def _fixed(dim: Any) -> bool:
    return isinstance(dim, int) and dim > 0


def _onnx_state(who: str, inputs: dict[str, Any], outputs: dict[str, Any]) -> tuple[int, int, int]:
    """(layers, H_out, H) of ``h_0``/``h_n`` ``[layers, batch, H_out]``, ``c_0``/``c_n`` ``[.., H]``."""
    from lstm_export.export.metadata import STATE_INPUTS, STATE_OUTPUTS

    shapes = [
        inputs[STATE_INPUTS[0]].shape,
        outputs[STATE_OUTPUTS[0]].shape,
        inputs[STATE_INPUTS[1]].shape,
        outputs[STATE_OUTPUTS[1]].shape,
    ]
    ok = all(len(s) == 3 and _fixed(s[0]) and not _fixed(s[1]) and _fixed(s[2]) for s in shapes)
    fixed = [(s[0], s[2]) for s in shapes] if ok else []
    if not ok or fixed[0] != fixed[1] or fixed[2] != fixed[3] or fixed[0][0] != fixed[2][0]:
        raise ModelLoadError(f"{who}: state tensors {shapes} are not [layers, batch, H]")
    return int(shapes[0][0]), int(shapes[0][2]), int(shapes[2][2])


def _labels(meta: dict[str, str], classes: int, who: str) -> tuple[str, ...]:
    """The class names in ``meta``, parsed as every runner parses them (comma-separated or a JSON
    list, none twice), checked against the model's ``classes`` and for a label file's lines."""
    from lstm_export.infer.base import class_names

    try:
        names = tuple(class_names(meta.get("class_names", "")))
    except ModelLoadError as exc:
        raise ModelLoadError(f"{who}: {exc}") from None
    if names and len(names) != classes:
        raise ModelLoadError(
            f"{who}: metadata names {len(names)} classes but the model returns {classes}"
        )
    if any(not n or not n.isprintable() for n in names):
        raise ModelLoadError(f"{who}: a class name is empty or holds control characters")
    return names


def _check_metadata(sig: Signature, meta: dict[str, str], who: str) -> None:
    """The session against the metadata the export recorded (absent keys are not checked)."""
    seq = meta.get("seq_len")
    if seq is not None and seq != ("any" if sig.time == -1 else str(sig.time)):
        raise ModelLoadError(
            f"{who}: metadata says seq_len {seq[:40]!r} but the session's time axis is "
            f"{'symbolic' if sig.time == -1 else sig.time}"
        )
    if "state_inputs" in meta and sig.state is None:
        raise ModelLoadError(f"{who}: metadata names state inputs the session does not take")
    if sig.state is not None and meta and "state_inputs" not in meta:
        raise ModelLoadError(f"{who}: the session takes a state its metadata does not name")


def runner_signature(
    runner: Any, reference: Signature, probe: np.ndarray, shown: str
) -> np.ndarray:
    """Check a loaded runner (TorchScript or OpenVINO) against the ONNX model's signature;
    return its logits on ``probe``."""
    logits = runner.infer(probe)
    classes = int(logits.shape[1])
    labels = _labels(runner.metadata, classes, shown)
    state = None
    if runner.streams:
        _, st = runner.step(probe[:1])
        state = (int(st.h.shape[0]), int(st.h.shape[2]), int(st.c.shape[2]))
    mine = (classes, state, labels or reference.labels)
    if mine != (reference.classes, reference.state, reference.labels):
        raise ModelLoadError(
            f"{shown} does not match the ONNX model: (classes, state (layers, H_out, H), labels) "
            f"{mine} vs {(reference.classes, reference.state, reference.labels)}"
        )
    return np.asarray(logits)


def _probe(sig: Signature) -> np.ndarray:
    rows = 28 if sig.time == -1 else sig.time
    return np.random.default_rng(0).random((_PROBE_ROWS, rows, sig.features), dtype=np.float32)


def _require_same(candidate: np.ndarray, reference: np.ndarray, what: str) -> None:
    from lstm_export.errors import ValidationError
    from lstm_export.parity import compare, problems

    found = problems(compare(candidate, reference), tolerance=PROBE_TOLERANCE, min_agreement=1.0)
    if found:
        raise ValidationError(f"{what} does not give the ONNX model's answers: {'; '.join(found)}")


# -- configs ---------------------------------------------------------------------------------------
def build_config(
    name: str, backend: str, sig: Signature, options: TritonOptions, *, labels: bool
) -> Any:
    """Triton's ``ModelConfig`` for one model of ``backend`` (onnxruntime, torchscript, openvino)."""
    mc = model_config_module()
    config = mc.ModelConfig(name=name)
    platform = {mine: theirs for theirs, mine in PLATFORMS.items()}.get(backend)
    if platform:
        config.platform = platform
    else:
        config.backend = backend  # openvino: a backend without a platform name
    config.version_policy.all.SetInParent()
    names_in, names_out = _tensor_names(backend)
    fp32 = mc.TYPE_FP32
    if sig.state is None:
        config.max_batch_size = options.max_batch_size
        config.input.add(name=names_in[0], data_type=fp32, dims=[sig.time, sig.features])
        out = config.output.add(name=names_out[0], data_type=fp32, dims=[sig.classes])
        if options.max_batch_size > 1:
            config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    else:
        config.max_batch_size = 0
        config.input.add(name=names_in[0], data_type=fp32, dims=[1, sig.time, sig.features])
        out = config.output.add(name=names_out[0], data_type=fp32, dims=[1, sig.classes])
        _sequence_batching(config, sig, names_in, names_out, options)
    if labels:
        out.label_filename = LABELS_FILE
    group = mc.ModelInstanceGroup
    kind = group.KIND_GPU if options.kind == InstanceKind.gpu else group.KIND_CPU
    config.instance_group.add(count=options.instances, kind=kind)
    return config


def _tensor_names(backend: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    from lstm_export.export.metadata import INPUT_NAME, OUTPUT_NAME, STATE_INPUTS, STATE_OUTPUTS

    if backend == "torchscript":
        return LIBTORCH_INPUTS, LIBTORCH_OUTPUTS
    return (INPUT_NAME, *STATE_INPUTS), (OUTPUT_NAME, *STATE_OUTPUTS)


def _sequence_batching(
    config: Any,
    sig: Signature,
    names_in: tuple[str, ...],
    names_out: tuple[str, ...],
    options: TritonOptions,
) -> None:
    """Implicit state ``output -> input`` for h and c, zeros at a sequence's start."""
    assert sig.state is not None
    mc = model_config_module()
    layers, h_out, hidden = sig.state
    seq = config.sequence_batching
    seq.max_sequence_idle_microseconds = options.sequence_idle_us
    seq.oldest.max_candidate_sequences = options.max_sequences
    for i, width in ((1, h_out), (2, hidden)):
        dims = [layers, 1, width]
        state = seq.state.add(
            input_name=names_in[i], output_name=names_out[i], data_type=mc.TYPE_FP32, dims=dims
        )
        state.initial_state.add(
            data_type=mc.TYPE_FP32, dims=dims, zero_data=True, name=f"zero_{names_in[i]}"
        )


# -- the repository --------------------------------------------------------------------------------
def write_repository(model: Path, repo: Path, options: TritonOptions) -> RepositoryReport:
    """Write (or extend) the Triton model repository ``repo`` from a run folder or ONNX file.

    ConfigError for options that cannot be written, ModelLoadError for a model that is missing
    or disagrees with itself, OutputError for a target that is not a new, empty or repository
    folder, or a model version already there. Nothing is left behind on failure.
    """
    from lstm_export.fileio import terminating

    model_config_module()  # ConfigError now, without the serve extra
    onnx_path, ts_path, default = resolve_sources(Path(model), options)
    base = options.name or default
    names = {"onnxruntime": base}
    if options.torchscript:
        names["torchscript"] = f"{base}_torchscript"
    if options.openvino:
        names["openvino"] = f"{base}_openvino"
    for name in names.values():
        check_name(name, error=ConfigError)
    repo = Path(repo)
    existing = _existing_models(repo)
    with terminating(), _staging(repo) as stage:
        written, notes = _stage_models(onnx_path, ts_path, names, stage, options)
        _check_read_back(stage, written)
        _commit(stage, repo, written, existing)
    return RepositoryReport(repo=repo, models=written, created=existing is None, notes=notes)


def _existing_models(repo: Path) -> dict[str, Path] | None:
    """None for a new folder; else the model folders of an existing repository (OutputError for
    anything else: a file, or a folder holding more than model folders)."""
    from lstm_export.fileio import ensure_writable_dir

    if not os.path.lexists(repo):
        ensure_writable_dir(repo.parent if str(repo.parent) else Path("."))
        return None
    if not repo.is_dir():
        raise OutputError(f"output path {repo} exists and is not a folder")
    found: dict[str, Path] = {}
    for entry in sorted(repo.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir() or not (entry / CONFIG_FILE).is_file():
            raise OutputError(
                f"{repo} is a folder but not a Triton model repository ({entry.name} is not a "
                f"model folder with a {CONFIG_FILE}); write to a new or empty folder"
            )
        found[entry.name] = entry
    return found


@contextlib.contextmanager
def _staging(repo: Path) -> Any:
    """A temporary folder beside ``repo`` (same file system, so it can be renamed into place),
    removed on exit whatever happened."""
    parent = repo.parent if str(repo.parent) else Path(".")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{repo.name[:100]}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write {repo}: {exc.strerror or exc}") from exc
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _stage_models(
    onnx_path: Path,
    ts_path: Path | None,
    names: dict[str, str],
    stage: Path,
    options: TritonOptions,
) -> tuple[list[WrittenModel], list[str]]:
    """Copy or convert each model file into ``stage``, check it, and write its config."""
    from google.protobuf import text_format

    from lstm_export.infer.registry import load_runner

    v = str(options.version)
    onnx_copy = _copy(onnx_path, stage / names["onnxruntime"] / v / "model.onnx")
    sig = onnx_signature(onnx_copy, onnx_path)
    notes = []
    if sig.state is not None:
        notes.append(
            "stateful model: sequence batching with implicit state, one sequence per execution "
            "(max_batch_size 0: Triton batches state along its first axis, the LSTM's is the second)"
        )
    sigs = {"onnxruntime": sig}
    if ts_path is not None or options.openvino:
        probe = _probe(sig)
        with load_runner(onnx_copy, "onnxruntime", "cpu") as ort:
            reference = ort.infer(probe)
    if ts_path is not None:
        ts_copy = _copy(ts_path, stage / names["torchscript"] / v / "model.pt")
        with load_runner(ts_copy, "torchscript", "cpu") as ts:
            _require_same(runner_signature(ts, sig, probe, str(ts_path)), reference, str(ts_path))
            any_rows = ts.metadata.get("seq_len", "any") == "any"
        sigs["torchscript"] = replace(sig, time=-1 if any_rows else sig.time)
    if options.openvino:
        if sig.state is not None:
            raise ConfigError(
                "Triton's OpenVINO backend keeps no sequence state: a stateful "
                "model cannot be written for it"
            )
        sigs["openvino"] = sig
        _to_openvino(onnx_copy, stage / names["openvino"] / v / "model.xml", sig, probe, reference)
    written = []
    for backend, s in sigs.items():
        config = build_config(names[backend], backend, s, options, labels=bool(s.labels))
        folder = stage / names[backend]
        (folder / CONFIG_FILE).write_text(text_format.MessageToString(config), encoding="utf-8")
        if s.labels:
            (folder / LABELS_FILE).write_text("\n".join(s.labels) + "\n", encoding="utf-8")
        written.append(WrittenModel(names[backend], options.version, backend, folder))
    return written, notes


def _copy(source: Path, target: Path) -> Path:
    """Copy a regular model file (a FIFO or device is refused) to ``target``."""
    from lstm_export.fileio import open_regular

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open_regular(source) as src, open(target, "xb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except OSError as exc:
        raise ModelLoadError(f"cannot copy {source}: {first_line(exc)}") from exc
    return target


def _to_openvino(
    onnx_copy: Path, xml: Path, sig: Signature, probe: np.ndarray, reference: np.ndarray
) -> None:
    """OpenVINO IR of the ONNX file, checked to give its logits."""
    from lstm_export.infer.registry import load_runner
    from lstm_export.infer.runners.openvino_runner import save_ir

    xml.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_ir(onnx_copy, xml)
    except ModelLoadError:
        raise
    except Exception as exc:  # OpenVINO's RuntimeError for graphs it cannot convert
        raise ModelLoadError(
            f"OpenVINO cannot convert {onnx_copy.name}: {first_line(exc)}"
        ) from exc
    with load_runner(xml, "openvino", "cpu") as ov:
        shown = "the OpenVINO IR"
        _require_same(runner_signature(ov, sig, probe, shown), reference, shown)


def _check_read_back(stage: Path, written: list[WrittenModel]) -> None:
    """The staged repository, read as ``serve`` reads it, must give what was written."""
    by_key = {(m.name, m.version): m for m in read_repository(stage)}
    for w in written:
        got = by_key.get((w.name, w.version))
        if got is None or got.backend != w.backend:
            raise OutputError(f"model {w.name} version {w.version} does not read back as written")


def _same_model(existing: Path, staged: Path, version: int) -> None:
    """OutputError unless ``existing`` can take ``version`` of the staged model: same config and
    labels, and no such version yet."""
    if (existing / str(version)).exists():
        raise OutputError(
            f"version {version} of model {existing.name} already exists in {existing.parent}"
        )
    if parse_config(existing / CONFIG_FILE) != parse_config(staged / CONFIG_FILE) or _read(
        existing / LABELS_FILE
    ) != _read(staged / LABELS_FILE):
        raise OutputError(
            f"model {existing.name} exists in {existing.parent} with another configuration or "
            "labels: choose another name"
        )


def _read(path: Path) -> bytes | None:
    from lstm_export.fileio import read_regular_file

    return read_regular_file(path, 1 << 20) if path.is_file() else None


def _commit(
    stage: Path, repo: Path, written: list[WrittenModel], existing: dict[str, Path] | None
) -> None:
    """Rename the staged repository, or each staged model (or only its new version), into place."""
    try:
        if existing is None:
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(stage, 0o777 & ~mask)  # mkdtemp made it private
            os.rename(stage, repo)
            for w in written:
                w.folder = repo / w.name
            return
        for w in written:
            if w.name in existing:
                _same_model(existing[w.name], w.folder, w.version)
        for w in written:
            target = repo / w.name
            if w.name in existing:
                os.rename(w.folder / str(w.version), target / str(w.version))
                w.added_version_only = True
            else:
                os.rename(w.folder, target)
            w.folder = target
    except OSError as exc:
        raise OutputError(f"cannot write {repo}: {exc.strerror or exc}") from exc
