"""What the server serves: one model file, or each model and version of a Triton repository.

:class:`ServeConfig` says what to serve and how (it is small and picklable: a Ray Serve replica
rebuilds the models from it). :func:`load_models` loads each model version with the registry's
runner and describes it as OIP v2 does: tensor names, datatypes and shapes (``pixels`` FP32
``[-1, 28, 28]`` -> ``logits`` FP32 ``[-1, C]`` for an exported file; a repository's own names),
class names for the classification extension, and Triton's model configuration in JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstm_export.devices import Device
from lstm_export.errors import ConfigError, ModelLoadError
from lstm_export.infer.base import Runner
from lstm_export.serve.batching import Batcher
from lstm_export.serve.metrics import ModelStats
from lstm_export.serve.protocol import TensorSpec
from lstm_export.serve.repository import RepoModel, check_name, read_repository, safe_name
from lstm_export.serve.sequences import SequenceStore

#: the registry's backend -> (Triton platform, Triton backend)
PLATFORMS = {
    "onnxruntime": ("onnxruntime_onnx", "onnxruntime"),
    "torchscript": ("pytorch_libtorch", "pytorch"),
    "openvino": ("openvino", "openvino"),
    "eager": ("pytorch", "python"),
}
DEFAULT_MAX_BATCH = 64
DEFAULT_DELAY_US = 200
DEFAULT_SEQUENCE_TIMEOUT_S = 60.0
DEFAULT_MAX_SEQUENCES = 1000
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    """What to serve and how. ``None`` settings: the repository's config, else the defaults."""

    source: Path
    name: str | None = None
    backend: str = "auto"
    device: str = Device.auto.value
    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    batching: bool = True
    sequence_timeout_s: float | None = None
    max_sequences: int | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: threads for each model (None: the cores less one, which the HTTP event loop keeps)
    threads: int | None = None
    #: lift the checks that keep a model file from running code (see docs/trust.md)
    trusted: bool = False


@dataclass
class ServedModel:
    """One loaded model version and everything the routes need about it."""

    name: str
    version: str
    backend: str
    runner: Runner
    input: TensorSpec
    output: TensorSpec
    labels: list[str]
    max_batch_size: int
    max_queue_delay_us: int | None
    batcher: Batcher
    stats: ModelStats
    sequences: SequenceStore | None = None

    def metadata(self, versions: list[str]) -> dict[str, Any]:
        """OIP model metadata (``GET /v2/models/{m}``)."""
        return {
            "name": self.name,
            "versions": versions,
            "platform": PLATFORMS[self.backend][0],
            "inputs": [self.input.to_dict()],
            "outputs": [self.output.to_dict()],
        }

    def config(self) -> dict[str, Any]:
        """Triton's model configuration in its JSON form (``GET /v2/models/{m}/config``)."""
        platform, backend = PLATFORMS[self.backend]
        skip = 1 if self.max_batch_size else 0  # Triton's dims leave the batch dim out

        def tensor(spec: TensorSpec) -> dict[str, Any]:
            return {
                "name": spec.name,
                "data_type": "TYPE_" + spec.datatype,
                "dims": list(spec.shape[skip:]),
            }

        config: dict[str, Any] = {
            "name": self.name,
            "platform": platform,
            "backend": backend,
            "version_policy": {"specific": {"versions": [int(self.version)]}},
            "max_batch_size": self.max_batch_size,
            "input": [tensor(self.input)],
            "output": [tensor(self.output)],
            "instance_group": [
                {
                    "name": self.name,
                    "count": 1,
                    "kind": "KIND_GPU" if self.runner.device == "cuda" else "KIND_CPU",
                }
            ],
            "parameters": {"class_names": {"string_value": ",".join(self.labels)}},
        }
        if self.max_queue_delay_us is not None:
            config["dynamic_batching"] = {"max_queue_delay_microseconds": self.max_queue_delay_us}
        if self.sequences is not None:
            config["sequence_batching"] = {
                "max_sequence_idle_microseconds": int(self.sequences.idle_timeout_s * 1e6),
                "oldest": {"max_candidate_sequences": self.sequences.max_sequences},
            }
        return config


@dataclass(frozen=True)
class _Plan:
    """One model version to load: from a file and the options, or from a repository's config.

    ``tensors`` None: ``pixels`` -> ``logits`` with the shapes the loaded file takes;
    ``labels`` empty: the model's metadata; ``delay_us`` None: no dynamic batching;
    ``sequence``: idle timeout (s) and most live sequences, None where unset.
    """

    name: str
    version: str
    path: Path
    backend: str
    device: str
    max_batch_size: int
    delay_us: int | None
    tensors: tuple[TensorSpec, TensorSpec] | None = None
    labels: tuple[str, ...] = ()
    sequence: tuple[float | None, int | None] = (None, None)


def _rows(runner: Runner) -> int:
    """The time axis a file takes: -1 (any number of rows) or 28 (from its metadata)."""
    seq_len = runner.metadata.get("seq_len")
    if seq_len is None:
        return -1 if runner.streams or runner.name == "eager" else 28
    return 28 if seq_len == "28" else -1


def runner_options(plan: _Plan, config: ServeConfig) -> dict[str, Any]:
    """The options a served runner opens with: what the runner asks for when it shares the
    machine (ONNX Runtime: idle pool threads do not spin, which would take the event loop's
    core), ``config.threads`` (default: the cores less one), ``trusted`` when asked and the
    backend checks what a file may do (a checkpoint is only weights)."""
    from lstm_export.devices import usable_cores
    from lstm_export.infer.registry import RUNNERS, Backend, backend_for

    auto = Backend(plan.backend) == Backend.auto
    runner = RUNNERS[backend_for(plan.path) if auto else Backend(plan.backend).value]
    threads = config.threads or max(1, usable_cores() - 1)
    return runner.planned_options(threads, trusted=config.trusted)


def _open(plan: _Plan, config: ServeConfig) -> ServedModel:
    """Load ``plan``'s runner and wrap it with its batcher, statistics and sequence store."""
    from lstm_export.infer.registry import load_runner
    from lstm_export.infer.rows import class_names_of

    runner = load_runner(plan.path, plan.backend, plan.device, **runner_options(plan, config))
    try:
        labels = list(plan.labels) or class_names_of(runner)
        tensors = plan.tensors or (
            TensorSpec("pixels", "FP32", (-1, _rows(runner), 28)),
            TensorSpec("logits", "FP32", (-1, len(labels))),
        )
        delay = plan.delay_us if config.batching else None
        stats = ModelStats(plan.name, plan.version)
        timeout, most = plan.sequence
        return ServedModel(
            name=plan.name,
            version=plan.version,
            backend=runner.name,
            runner=runner,
            input=tensors[0],
            output=tensors[1],
            labels=labels,
            max_batch_size=plan.max_batch_size,
            max_queue_delay_us=delay,
            batcher=Batcher(
                runner,
                stats,
                max_batch_size=plan.max_batch_size or DEFAULT_MAX_BATCH,
                max_queue_delay_us=delay or 0,
                batching=delay is not None,
            ),
            stats=stats,
            sequences=SequenceStore(
                config.sequence_timeout_s or timeout or DEFAULT_SEQUENCE_TIMEOUT_S,
                config.max_sequences or most or DEFAULT_MAX_SEQUENCES,
            )
            if runner.streams
            else None,
        )
    except BaseException:
        runner.close()
        raise


def _file_plan(config: ServeConfig) -> _Plan:
    path = Path(config.source)
    name = check_name(config.name or safe_name(path.stem), error=ConfigError)
    delay = config.max_queue_delay_us
    return _Plan(
        name=name,
        version="1",
        path=path,
        backend=config.backend,
        device=config.device,
        max_batch_size=config.max_batch_size or DEFAULT_MAX_BATCH,
        delay_us=DEFAULT_DELAY_US if delay is None else delay,
    )


def _repo_plan(config: ServeConfig, model: RepoModel) -> _Plan:
    """A repository entry; the options override its batch size, delay and sequence settings.

    ``--device`` when given, else the instance kind's (gpu: cuda, cpu: cpu, else auto)."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelLoadError(
            f"{model.config_path}: this server serves models of one input and one output "
            f"(besides sequence state), not {len(model.inputs)} and {len(model.outputs)}"
        )
    batch_dim = (-1,) if model.max_batch_size else ()
    pixels, logits = (
        TensorSpec(t.name, t.datatype, batch_dim + t.shape)
        for t in (model.inputs[0], model.outputs[0])
    )
    if pixels.datatype != "FP32" or len(pixels.shape) != 3:
        raise ModelLoadError(f"{model.config_path}: the input must be FP32 [batch, rows, 28]")
    device = config.device
    if device == Device.auto.value:
        device = {"gpu": Device.cuda.value, "cpu": Device.cpu.value}.get(model.kind, device)
    delay = model.max_queue_delay_us
    seq = model.sequence
    return _Plan(
        name=model.name,
        version=str(model.version),
        path=model.path,
        backend=model.backend,
        device=device,
        max_batch_size=(model.max_batch_size and config.max_batch_size) or model.max_batch_size,
        delay_us=config.max_queue_delay_us
        if delay is not None and config.max_queue_delay_us is not None
        else delay,
        tensors=(pixels, logits),
        labels=model.labels,
        sequence=(seq.idle_timeout_us / 1e6, seq.max_sequences) if seq else (None, None),
    )


def load_models(config: ServeConfig) -> list[ServedModel]:
    """Load what ``config.source`` names: a model file, or a Triton repository folder.

    Raises ModelLoadError, DeviceError or ConfigError; on an error nothing stays loaded.
    """
    source = Path(config.source)
    if not source.is_dir():
        return [_open(_file_plan(config), config)]
    if config.name is not None:
        raise ConfigError("a repository's models keep their own names: name only a model file")
    models: list[ServedModel] = []
    try:
        for entry in read_repository(source):
            models.append(_open(_repo_plan(config, entry), config))
    except BaseException:
        close_models(models)
        raise
    if not models:
        raise ModelLoadError(f"the repository {source} holds no model")
    return models


def close_models(models: list[ServedModel]) -> None:
    """Release every runner (their batchers are closed by the app)."""
    for model in models:
        model.runner.close()
