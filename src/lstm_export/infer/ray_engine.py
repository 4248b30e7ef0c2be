"""``lstm-export infer --engine ray``: the same rows as the in-process engine, on Ray Data.

The driver walks the folder (the same :func:`~lstm_export.infer.walk.walk_images`, in the same
stable order), reads the labels and the model's class names, and hands Ray Data blocks of paths.
A pool of actors (:class:`~lstm_export.infer.ray_worker.Classifier`), each holding one runner
loaded once from the model's bytes, reads, decodes and classifies each block where it runs;
a file that cannot be read or decoded becomes an error in its row, never a failed task. The
rows come back to the driver (and are written with ``-o`` as CSV, JSON Lines or Parquet, in the
folder's order), or with ``output_dir`` each block is written by its actor as a Parquet shard
and only the predicted class and errors come back, for the counts, accuracy and confusion.

:class:`RayRun` has the interface of :class:`~lstm_export.infer.classify.FolderRun` (``walk``,
``plan``, ``runner``, ``load``, ``batches``, ``summary``), so the CLI drives both the same way.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from lstm_export.devices import Device
from lstm_export.errors import (
    ConfigError,
    DeviceError,
    InferenceError,
    InputError,
    LstmExportError,
    ModelLoadError,
    OutputError,
)
from lstm_export.infer.classify import (
    Plan,
    Prediction,
    Summary,
    check_preprocessing,
    class_names_of,
    imagefolder_labels,
    usable_cores,
)
from lstm_export.infer.images import Invert
from lstm_export.infer.pipeline import CPU_BATCH_SIZE, CUDA_BATCH_SIZE
from lstm_export.infer.ray_worker import (
    SHARD_PREFIX,
    SHARD_SUFFIX,
    Classifier,
    decode_text,
    node_key,
    parquet_table,
)
from lstm_export.infer.report import Confusion
from lstm_export.infer.walk import Walk, walk_images
from lstm_export.infer.writers import OutputFormat

log = logging.getLogger(__name__)

__all__ = [
    "RAY_CPUS_ENV",
    "RAY_FLOOR",
    "RayPlan",
    "RayRun",
    "RaySummary",
    "actor_pool_args",
    "classify_on_ray",
    "open_rows",
    "resolve_format",
    "walk_folder_or_glob",
]

#: the oldest ray the ``ray`` extra allows (tested: see docs/scale-out.md)
RAY_FLOOR = (2, 40)
#: ray from which ``map_batches(concurrency=...)`` is deprecated for ``compute=ActorPoolStrategy``
RAY_COMPUTE_API = (2, 51)
#: CPUs of a local Ray started for one run (default: the cores this process may use)
RAY_CPUS_ENV = "LSTM_EXPORT_RAY_CPUS"
#: most blocks a run is cut into, and the most images in one block (unless that would exceed it)
MAX_BLOCKS = 20_000
MAX_BLOCK_ROWS = 4096
#: seconds the actors may take to start (load the model) before the run fails saying so
ACTORS_START_TIMEOUT_S = 600
#: actors at most this many blocks ahead of each other (where ray lets us say so)
TASKS_IN_FLIGHT_PER_ACTOR = 2


# -- ray versions ----------------------------------------------------------------------------------
def ray_version_tuple(version: str) -> tuple[int, int]:
    """``"2.60.0"`` -> ``(2, 60)`` (``"2.9.0rc1"`` -> ``(2, 9)``)."""
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit()) or "0"
        parts.append(int(digits))
    while len(parts) < 2:
        parts.append(0)
    return parts[0], parts[1]


def actor_pool_args(actors: int, version: str, *, in_flight: int | None = None) -> dict[str, Any]:
    """The ``map_batches`` arguments for a fixed pool of ``actors``, for ray ``version``.

    Ray >= 2.51 deprecates ``concurrency=`` in favour of ``compute=ActorPoolStrategy(size=n)``;
    older releases (down to :data:`RAY_FLOOR`) take ``concurrency=n`` (their ``compute=`` is the
    deprecated form there).
    """
    if ray_version_tuple(version) >= RAY_COMPUTE_API:
        from ray.data import ActorPoolStrategy

        kwargs: dict[str, Any] = {"size": actors}
        if in_flight is not None:
            kwargs["max_tasks_in_flight_per_actor"] = in_flight
        return {"compute": ActorPoolStrategy(**kwargs)}
    return {"concurrency": actors}


def import_ray(*, local: bool) -> Any:
    """``import ray`` (ImportError -> ConfigError saying how to install it).

    ``local``: a Ray started for this run listens on the loopback address only (set before ray is
    first imported: ray reads it once; a cluster of one machine needs no other address).
    """
    if local and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError(
            "the Ray engine needs Ray Data: pip install 'lstm-export[ray]' "
            f"(or 'ray[data]>={RAY_FLOOR[0]}.{RAY_FLOOR[1]}'); {exc}"
        ) from exc
    if ray_version_tuple(ray.__version__) < RAY_FLOOR:
        raise ConfigError(
            f"ray {ray.__version__} is too old for the Ray engine: "
            f"need >= {RAY_FLOOR[0]}.{RAY_FLOOR[1]} (pip install 'lstm-export[ray]')"
        )
    return ray


# -- the folder or glob ----------------------------------------------------------------------------
_GLOB_CHARS = frozenset("*?[")


def walk_folder_or_glob(folder: Path | str, *, recursive: bool = True) -> Walk:
    """:func:`walk_images` of a folder or image file; or of every match of a glob pattern.

    A pattern (``'digits/[0-4]'``, ``'/data/batch-*/'``; quote it from the shell) is taken when no
    file or folder has that exact name. Its matches are walked in sorted order and merged, each
    row's path relative to the folder part before the first wildcard (``digits``, ``/data``);
    the same file reached through two matches is listed once.
    """
    text = os.fspath(folder)
    if not (_GLOB_CHARS & set(text)) or os.path.lexists(text):
        return walk_images(Path(text), recursive=recursive)
    matches = sorted(glob.glob(text, recursive=True))
    if not matches:
        raise InputError(f"nothing matches {text}")
    parts = Path(text).parts
    literal = [p for p in parts[: next(i for i, p in enumerate(parts) if _GLOB_CHARS & set(p))]]
    base = Path(*literal) if literal else Path(".")
    merged = Walk(root=base)
    seen: set[str] = set()
    for match in matches:
        part = walk_images(Path(match), recursive=recursive)
        prefix = Path(os.path.relpath(match, base)).as_posix()
        single = Path(match).is_file()
        for path, name in zip(part.paths, part.names, strict=True):
            rel = prefix if single else f"{prefix}/{name}"
            if rel in seen:
                continue
            seen.add(rel)
            merged.paths.append(path)
            merged.names.append(rel)
        merged.skipped += part.skipped
        merged.hidden += part.hidden
        merged.unreadable += [f"{prefix}/{u}" for u in part.unreadable]
    order = sorted(range(len(merged.names)), key=lambda i: merged.names[i].split("/"))
    merged.paths = [merged.paths[i] for i in order]
    merged.names = [merged.names[i] for i in order]
    return merged


# -- plan and summary ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RayPlan(Plan):
    """How a Ray run shares the cluster: ``actors``, each with one runner of ``threads`` threads
    and a decode thread, asking Ray for ``cpus_per_actor`` (and ``gpus_per_actor``); blocks of
    ``block_rows`` images, inferred ``batch_size`` at a time. ``cluster``: which, and its size."""

    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    block_rows: int = CPU_BATCH_SIZE
    cluster: str = ""

    def describe(self) -> str:
        gpus = f", {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else ""
        pool = (
            f"{self.actors} actor{'s' if self.actors != 1 else ''} x (decode 1 thread, inference "
            f"{self.threads} thread(s); {self.cpus_per_actor:g} CPU{gpus})"
        )
        return f"{self.cluster}; {pool}, blocks of {self.block_rows}, batch {self.batch_size}"


def plan_actors(
    *,
    cpus: float,
    gpus: float,
    device: str,
    actors: int | None,
    threads: int | None,
    batch_size: int | None,
    images: int,
) -> tuple[int, float, float, int, int, int]:
    """``(actors, cpus_per_actor, gpus_per_actor, threads, batch_size, block_rows)``.

    The actors never ask for every CPU: at least half a CPU (one from 4 CPUs up) stays free, so
    whatever task Ray Data starts beside the pool (reading, writing) is never starved, which on a
    small machine would hang the run. By default one actor per CPU left (one per GPU with
    ``cuda``), each a decode thread and a 1-thread runner; fractional CPUs when there are more
    actors than that. Blocks: about 4 per actor, between one batch and 4096 images, and at
    most 20,000 blocks.
    """
    reserve = 0.5 if cpus < 4 else 1.0
    free = max(cpus - reserve, 0.1)
    threads = threads or 1
    cuda = device == "cuda"
    if actors is None:
        actors = max(1, int(gpus)) if cuda else max(1, int(free))
    cpus_per_actor = max(0.001, math.floor(min(float(threads), free / actors) * 1000) / 1000)
    gpus_per_actor = math.floor(min(1.0, gpus / actors) * 1000) / 1000 if cuda else 0.0
    batch_size = batch_size or (CUDA_BATCH_SIZE if cuda else CPU_BATCH_SIZE)
    target = min(MAX_BLOCK_ROWS, max(batch_size, images // (4 * actors)))
    target = max(target, math.ceil(images / MAX_BLOCKS))
    block_rows = math.ceil(target / batch_size) * batch_size
    return actors, cpus_per_actor, gpus_per_actor, threads, batch_size, block_rows


@dataclass
class RaySummary(Summary):
    """:class:`~lstm_export.infer.classify.Summary` with what the cluster did: ``ray`` holds the
    cluster's nodes, CPUs and GPUs, the seconds to start (or join) it and to the first block, and
    rows per node."""

    ray: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["ray"] = self.ray
        return out


@dataclass
class ClusterRunner:
    """What the CLI shows of the model: the backend and device the actors run it on."""

    path: Path
    description: str
    device: str
    device_note: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


# -- the run ---------------------------------------------------------------------------------------
class RayRun:
    """One run over one folder on Ray Data; the same rows as
    :class:`~lstm_export.infer.classify.FolderRun`.

    ``address`` (or ``$RAY_ADDRESS``): join that cluster (``"auto"``: the one ``ray start`` made
    here) and leave it running; without one a local Ray is started for the run (with
    ``local_cpus`` or ``$LSTM_EXPORT_RAY_CPUS`` CPUs, default the usable cores) and shut down by
    :meth:`close`. A process already connected (``ray.init`` done) keeps its connection.
    ``actors``: size of the pool (default: see :func:`plan_actors`); ``threads``: runner threads
    per actor; ``batch_size``: images per inference call. ``device``: ``auto`` and ``cpu`` run on
    the actors' CPUs, ``cuda`` asks Ray for GPUs. ``output``: the ``-o`` file the rows will be
    written to (checked against ``output_dir``); ``output_dir``: the actors write the rows as
    Parquet shards there and :meth:`batches` yields only the error rows. ``progress``: Ray Data's
    progress bars.
    """

    def __init__(
        self,
        model: Path | str,
        folder: Path | str,
        *,
        backend: str = "auto",
        device: Device | str = Device.auto,
        batch_size: int | None = None,
        workers: int | None = None,
        threads: int | None = None,
        streams: int | None = None,
        recursive: bool = True,
        invert: Invert | str = Invert.auto,
        fit: bool = False,
        probabilities: bool = False,
        address: str | None = None,
        actors: int | None = None,
        output: Path | None = None,
        output_dir: Path | str | None = None,
        progress: bool = True,
        local_cpus: float | None = None,
    ) -> None:
        from lstm_export.infer.registry import backend_for, make_runner

        if workers is not None or streams is not None:
            raise ConfigError(
                "decode workers and streams are settings of the in-process engine; on Ray each "
                "actor decodes in one thread (ask for more actors instead)"
            )
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        if threads is not None and threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        if actors is not None and actors < 1:
            raise InputError(f"actors must be >= 1, got {actors}")
        if output is not None and output_dir is not None:
            raise ConfigError(
                "an output file gathers every row on this machine, an output folder has the "
                "workers write them: choose one"
            )
        self.model_path = Path(model)
        if not self.model_path.is_file():
            raise ModelLoadError(f"model file {model} not found")
        self.backend = backend_for(model) if backend == "auto" else backend
        self.requested_device = Device(device)
        self.device = "cuda" if self.requested_device == Device.cuda else "cpu"
        self.invert = Invert(invert)
        self.fit = fit
        self.probabilities = probabilities
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.local_cpus = local_cpus
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.progress = progress
        self.recursive = recursive
        self._choice = {"actors": actors, "threads": threads, "batch_size": batch_size}
        # the driver loads the model once, on its CPU, for its class names and metadata
        self._driver_runner = make_runner(self.model_path, self.backend, Device.cpu, threads=1)
        self.walk = walk_folder_or_glob(folder, recursive=recursive)
        actors_, cpus, gpus, threads_, batch, block = plan_actors(
            cpus=float(local_cpus or usable_cores()),
            gpus=0.0,
            device=self.device,
            images=len(self.walk.paths),
            **self._choice,
        )
        self.plan = RayPlan(
            workers=1, threads=threads_, batch_size=batch, actors=actors_,
            cpus_per_actor=cpus, gpus_per_actor=gpus, block_rows=block,
            cluster="ray (not started yet)",
        )  # fmt: skip
        self.runner = ClusterRunner(self.model_path, f"{self.backend} (not loaded)", self.device)
        self.class_names: list[str] = []
        self.labels: list[int] | None = None
        self.summary: RaySummary | None = None
        #: ``(index of the block's first row, rows, node id)`` per block, as they came back
        self.batch_nodes: list[tuple[int, int, str]] = []
        self._ray: Any = None
        self._shutdown = False  # whether close() disconnects (started here or joined here)
        self._node_ids: dict[int, str] = {}

    def require_images(self) -> RayRun:
        """InputError when the folder holds no image file (a run over it would do nothing)."""
        if not self.walk.paths:
            where = "" if self.recursive else "; subfolders not searched"
            raise InputError(
                f"no image files in {self.walk.root} ({self.walk.skipped} other files skipped, "
                f"{self.walk.hidden} hidden left out{where})"
            )
        return self

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    # -- lifecycle -------------------------------------------------------------------------------
    def load(self) -> RayRun:
        """Load the model here (its class names), start or join Ray, plan the pool. Idempotent."""
        if self.summary is not None:
            return self
        try:
            self._load()
        except BaseException:
            self.close()
            raise
        return self

    def _load(self) -> None:
        runner = self._driver_runner.load()
        self.class_names = class_names_of(runner)
        self.labels, labels_note = imagefolder_labels(self.walk, self.class_names)
        for problem in check_preprocessing(runner.metadata):
            log.warning("%s: %s", self.model_path.name, problem)
        if self.output_dir is not None:
            self._check_output_dir(self.output_dir)
        if self.device == "cuda" and self.address is None and not _ray_connected():
            self._cuda_here()  # a local Ray has the GPUs of this machine: fail before starting it
        started = time.perf_counter()
        cluster = self._connect()
        connect_s = time.perf_counter() - started
        resources = self._ray.cluster_resources()
        nodes = [n for n in self._ray.nodes() if n.get("Alive", n.get("alive"))]
        self._node_ids = {node_key(n["NodeID"]): n["NodeID"] for n in nodes}
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        if self.device == "cuda" and gpus < 1e-9:
            self._no_gpu_error()
        actors, cpa, gpa, threads, batch, block = plan_actors(
            cpus=cpus, gpus=gpus, device=self.device, images=len(self.walk.paths), **self._choice
        )
        size = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}, {cpus:g} CPUs, {gpus:g} GPUs"
        self.plan = RayPlan(
            workers=1, threads=threads, batch_size=batch, actors=actors, cpus_per_actor=cpa,
            gpus_per_actor=gpa, block_rows=block, cluster=f"ray {cluster}: {size}",
        )  # fmt: skip
        provider = {"onnxruntime": "CUDAExecutionProvider" if self.device == "cuda" else
                    "CPUExecutionProvider"}.get(self.backend, self.device)  # fmt: skip
        self.runner = ClusterRunner(
            self.model_path,
            f"{self.backend} ({provider})",
            self.device,
            device_note=f"on {actors} Ray actor{'s' if actors != 1 else ''}"
            + (", auto: CPU" if self.requested_device == Device.auto else ""),
            metadata=dict(runner.metadata),
        )
        self.summary = RaySummary(
            folder=str(self.walk.root),
            model=str(self.model_path),
            backend=self.runner.description,
            device=self.device,
            class_names=self.class_names,
            plan=self.plan,
            images=len(self.walk.paths),
            skipped=self.walk.skipped,
            hidden=self.walk.hidden,
            unreadable_folders=list(self.walk.unreadable),
            labels=labels_note,
            confusion=Confusion(self.class_names) if self.labels is not None else None,
            ray={
                "ray_version": self._ray.__version__,
                "cluster": cluster,
                "nodes": len(nodes),
                "cpus": cpus,
                "gpus": gpus,
                "actors": actors,
                "connect_seconds": round(connect_s, 3),
            },
        )

    def _connect(self) -> str:
        """Start or join Ray; a phrase saying which cluster it is."""
        ray = self._ray = import_ray(local=self.address is None)
        if ray.is_initialized():
            return "(this process's existing connection)"
        quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
        if self.address is not None:
            _probe(self.address)
            try:
                ray.init(address=self.address, **quiet)
            except Exception as exc:
                raise ConfigError(
                    f"cannot join the Ray cluster at {self.address}: {_first_line(exc)}"
                ) from exc
            self._shutdown = True
            return f"cluster at {self.address} (joined; left running)"
        cpus = self.local_cpus or _env_cpus() or usable_cores()
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, **quiet)
        self._shutdown = True
        return "local (started for this run, stopped after it)"

    def _cuda_here(self) -> None:
        """The DeviceError of the in-process engine when CUDA is not usable on this machine."""
        from lstm_export.infer.registry import make_runner

        with make_runner(self.model_path, self.backend, Device.cuda, threads=1):
            pass

    def _no_gpu_error(self) -> None:
        """``--device cuda`` on a cluster without GPUs: the in-process engine's error when this
        machine has no usable CUDA either, else one saying the cluster has none."""
        self._cuda_here()
        raise DeviceError(
            "CUDA was asked for, but the Ray cluster has no GPUs (ray.cluster_resources() lists "
            "none)"
        )

    @staticmethod
    def _check_output_dir(directory: Path) -> None:
        if directory.exists() and not directory.is_dir():
            raise OutputError(f"output folder {directory} is not a folder")
        if directory.is_dir() and any(directory.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}")):
            raise OutputError(
                f"output folder {directory} already holds {SHARD_PREFIX}*{SHARD_SUFFIX} shards: "
                "remove them or choose another folder"
            )
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create {directory}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Release the driver's runner; stop the local Ray started here, or leave the cluster."""
        self._driver_runner.close()
        if self._shutdown and self._ray is not None:
            self._ray.shutdown()
            self._shutdown = False

    def __enter__(self) -> RayRun:
        return self.load()

    def open_rows(
        self,
        path: Path | None,
        fmt: OutputFormat | str = OutputFormat.auto,
        *,
        labelled: bool,
        class_names: Sequence[str] | None = None,
        stream: IO[str] | None = None,
    ) -> Any:
        """:func:`open_rows` for this run (nothing is written here with ``output_dir``)."""
        return open_rows(
            path, fmt, labelled=labelled, class_names=class_names, stream=stream,
            output_dir=self.output_dir,
        )  # fmt: skip

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the run ---------------------------------------------------------------------------------
    def dataset(self) -> Any:
        """The Ray Data pipeline: blocks of paths -> the actor pool -> rows (lazy)."""
        import pyarrow as pa

        ray = self._ray
        plan = self.plan
        n = len(self.walk.paths)
        labels = np.asarray(self.labels if self.labels is not None else [-1] * n, np.int16)
        tables = []
        for start in range(0, n, plan.block_rows):
            stop = min(start + plan.block_rows, n)
            columns: dict[str, Any] = {
                "index": pa.array(np.arange(start, stop, dtype=np.int64)),
                "path": pa.array(
                    [os.fsencode(os.path.abspath(p)) for p in self.walk.paths[start:stop]],
                    pa.binary(),
                ),  # absolute: the workers' working folder is not the driver's
            }
            if self.output_dir is not None:
                columns["name"] = pa.array(
                    [os.fsencode(p) for p in self.walk.names[start:stop]], pa.binary()
                )
                columns["label"] = pa.array(labels[start:stop])
            tables.append(pa.table(columns))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = self.progress
        with warnings.catch_warnings():  # deprecated (ray manages it) from ray 2.60 on
            warnings.simplefilter("ignore", DeprecationWarning)
            # blocks are lists of paths: where one lies does not matter, an idle actor does
            context.execution_options.actor_locality_enabled = False
        if hasattr(context, "wait_for_min_actors_s"):
            # every actor up (or a clear error) before the first block: a pool the cluster
            # cannot place never hangs, and the first actor up does not take every block
            context.wait_for_min_actors_s = ACTORS_START_TIMEOUT_S
        model = ray.put(self.model_path.read_bytes())
        remote: dict[str, Any] = {"num_cpus": plan.cpus_per_actor}
        if plan.gpus_per_actor:
            remote["num_gpus"] = plan.gpus_per_actor
        return ray.data.from_arrow(tables).map_batches(
            Classifier,
            fn_constructor_kwargs={
                "model": model,
                "suffix": self.model_path.suffix,
                "backend": self.backend,
                "device": self.device,
                "threads": plan.threads,
                "batch_size": plan.batch_size,
                "invert": self.invert.value,
                "fit": self.fit,
                "probabilities": self.probabilities,
                "class_names": self.class_names,
                "labelled": self.labels is not None,
                "output_dir": str(self.output_dir) if self.output_dir is not None else None,
            },
            batch_size=plan.block_rows,  # one whole block per call
            batch_format="numpy",
            **actor_pool_args(plan.actors, ray.__version__, in_flight=TASKS_IN_FLIGHT_PER_ACTOR),
            **remote,
        )

    def batches(self) -> Iterator[list[Prediction]]:
        """Rows block by block, in the folder's stable order; every image file exactly once.

        With ``output_dir`` the rows are in the shards and only the error rows are yielded (as
        they come). Progress is Ray Data's own.
        """
        summary = self.load().summary
        assert summary is not None
        started = time.perf_counter()
        pending: dict[int, list[Prediction]] = {}
        following = 0
        rows_per_node: dict[str, int] = {}
        summary.ray["rows_per_node"] = rows_per_node
        busy = 0.0  # seconds the actors spent on blocks, all together
        quiet = logging.getLogger("ray.data")
        level = quiet.level
        if not self.progress:
            quiet.setLevel(logging.ERROR)  # no progress bars, nor the lines saying so
        try:
            stream = self.dataset().iter_batches(batch_size=None, batch_format="numpy")
            for out in _ray_errors(stream):
                if "first_block_seconds" not in summary.ray:
                    summary.ray["first_block_seconds"] = round(time.perf_counter() - started, 3)
                self._count_nodes(out, rows_per_node)
                busy += float(np.sum(out["actor_seconds"]))
                if self.output_dir is not None:
                    rows = self._count(summary, out)
                    summary.seconds = time.perf_counter() - started
                    if rows:
                        yield rows
                    continue
                for first, rows in self._rows(summary, out):
                    pending[first] = rows
                while following in pending:
                    rows = pending.pop(following)
                    following += len(rows)
                    summary.seconds = time.perf_counter() - started
                    yield rows
            if pending:  # pragma: no cover - every index comes back exactly once
                raise InferenceError(
                    f"rows from {min(pending)} on came back without row {following}"
                )
            done = summary.classified + summary.errors
            if done != summary.images:
                raise InferenceError(f"Ray returned {done:,} rows for {summary.images:,} images")
        finally:
            summary.seconds = time.perf_counter() - started
            summary.ray["actor_seconds"] = round(busy, 3)
            if busy > 0:  # what one actor does in a second of work: the rate to scale out from
                done = summary.classified + summary.errors
                summary.ray["images_per_actor_second"] = round(done / busy, 1)
            quiet.setLevel(level)

    def _count_nodes(self, out: dict[str, np.ndarray], rows_per_node: dict[str, int]) -> None:
        keys, counts = np.unique(np.asarray(out["node"]), return_counts=True)
        index = np.asarray(out["index"])
        for key, count in zip(keys.tolist(), counts.tolist(), strict=True):
            node = self._node_ids.get(key, f"{key:015x}")
            rows_per_node[node] = rows_per_node.get(node, 0) + count
            first = int(index[np.asarray(out["node"]) == key].min())
            self.batch_nodes.append((first, count, node))
            log.debug("rows %d.. (%d) classified on node %s", first, count, node)

    def _count(self, summary: RaySummary, out: dict[str, np.ndarray]) -> list[Prediction]:
        """``output_dir``: counts and confusion of a block; its error rows."""
        index = np.asarray(out["index"], np.int64)
        predicted = np.asarray(out["prediction"], np.int64)
        ok = predicted >= 0
        summary.classified += int(ok.sum())
        summary.errors += int((~ok).sum())
        if summary.confusion is not None and self.labels is not None and ok.any():
            labels = np.asarray(self.labels, np.int64)
            summary.confusion.add(labels[index[ok]], predicted[ok])
        rows = []
        if not ok.all():
            errors = decode_text(out["error"])
            for k in np.flatnonzero(~ok).tolist():
                i = int(index[k])
                label = self.class_names[self.labels[i]] if self.labels is not None else None
                rows.append(Prediction(self.walk.names[i], None, None, errors[k], label))
        return rows

    def _rows(
        self, summary: RaySummary, out: dict[str, np.ndarray]
    ) -> list[tuple[int, list[Prediction]]]:
        """A block's rows, as ``(index of the first, rows)`` for each run of consecutive indices."""
        index = np.asarray(out["index"], np.int64)
        order = np.argsort(index, kind="stable")
        idx = index[order].tolist()
        predicted = np.asarray(out["prediction"], np.int64)[order]
        classes = predicted.tolist()
        confidence = np.asarray(out["confidence"], np.float64)[order].tolist()
        errors = decode_text(np.asarray(out["error"], dtype=object)[order])
        every = (
            np.asarray(out["probabilities"], np.float64)[order].tolist()
            if self.probabilities
            else None
        )
        names, walk_names, labels = self.class_names, self.walk.names, self.labels
        runs: list[tuple[int, list[Prediction]]] = []
        rows: list[Prediction] = []
        for k, i in enumerate(idx):
            if rows and i != idx[k - 1] + 1:
                runs.append((idx[k - len(rows)], rows))
                rows = []
            label = names[labels[i]] if labels is not None else None
            error = errors[k]
            if error is not None:
                rows.append(Prediction(walk_names[i], None, None, error, label))
            else:
                probabilities = tuple(every[k]) if every is not None else None
                rows.append(
                    Prediction(
                        walk_names[i], names[classes[k]], confidence[k], None, label, probabilities
                    )
                )
        if rows:
            runs.append((idx[len(idx) - len(rows)], rows))
        ok = predicted >= 0
        summary.classified += int(ok.sum())
        summary.errors += int((~ok).sum())
        if summary.confusion is not None and labels is not None and ok.any():
            truth = np.asarray(labels, np.int64)[np.asarray(idx, np.int64)[ok]]
            summary.confusion.add(truth, predicted[ok])
        return runs


def _probe(address: str, timeout_s: float = 10.0) -> None:
    """ConfigError at once when a ``host:port`` cluster address does not answer (ray itself
    would retry for minutes). ``auto``, ``ray://`` and other forms are left to ray."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} "
            "(start one with `ray start --head`, or give no address and unset $RAY_ADDRESS for a "
            "local Ray)"
        ) from None


def _ray_connected() -> bool:
    """Whether this process already has a Ray connection (without importing ray)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def _env_cpus() -> float | None:
    raw = os.environ.get(RAY_CPUS_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ConfigError(f"${RAY_CPUS_ENV} must be a positive number of CPUs, not {raw!r}")
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _ray_errors(stream: Any) -> Iterator[dict[str, np.ndarray]]:
    """``stream``'s batches; a failure inside Ray becomes the library error it carries (a
    DeviceError raised in an actor stays a DeviceError), else an InferenceError."""
    try:
        yield from stream
    except LstmExportError:
        raise
    except Exception as exc:
        cause: BaseException | None = exc
        seen = 0
        while cause is not None and seen < 20:
            if isinstance(cause, LstmExportError):
                raise type(cause)(str(cause)) from exc
            inner = getattr(cause, "cause", None)
            cause = inner if isinstance(inner, BaseException) else cause.__cause__
            seen += 1
        found = _library_error_in(str(exc))
        if found is not None:
            raise found from exc
        raise InferenceError(f"the Ray job failed: {_first_line(exc)}") from exc


def _library_error_in(text: str) -> LstmExportError | None:
    """A library error named in a Ray traceback's text (``lstm_export.errors.DeviceError: ...``)."""
    import lstm_export.errors as errors

    for line in reversed(text.splitlines()):
        line = line.strip()
        for name in (
            "DeviceError",
            "ModelLoadError",
            "InferenceError",
            "InputError",
            "ConfigError",
        ):
            for prefix in (f"lstm_export.errors.{name}: ", f"{name}: "):
                if line.startswith(prefix):
                    cls = getattr(errors, name)
                    return cls(line[len(prefix) :])
    return None


# -- outputs ---------------------------------------------------------------------------------------
def resolve_format(path: Path | None, fmt: OutputFormat | str = OutputFormat.auto) -> str:
    """``"parquet"`` for a ``.parquet`` output, else the format :mod:`writers` gives."""
    from lstm_export.infer.writers import resolve_format as rows_format

    auto = OutputFormat(fmt) == OutputFormat.auto
    if path is not None and auto and Path(path).suffix.lower() == ".parquet":
        return "parquet"
    return rows_format(path, fmt).value


class ParquetRowWriter:
    """Rows into one Parquet file, a row group per ``write`` (the columns of the CSV)."""

    def __init__(self, sink: Any, *, labelled: bool, class_names: Sequence[str] | None) -> None:
        self.sink = sink
        self.labelled = labelled
        self.class_names = list(class_names) if class_names else None
        self.count = 0
        self._writer: Any = None

    def write(self, rows: Sequence[Prediction]) -> None:
        if not rows:
            return
        import pyarrow.parquet as pq

        probs = None
        if self.class_names:
            probs = np.array(
                [r.probabilities if r.probabilities else [np.nan] * len(self.class_names)
                 for r in rows], np.float64,
            )  # fmt: skip
        table = parquet_table(
            [r.path for r in rows],
            [r.label for r in rows] if self.labelled else None,
            [r.prediction for r in rows],
            [r.confidence for r in rows],
            [r.error for r in rows],
            probs,
            self.class_names,
        )
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.sink, table.schema)
        self._writer.write_table(table)
        self.count += len(rows)

    def close(self) -> None:
        import pyarrow.parquet as pq

        if self._writer is None:  # no rows: still a valid file with the columns
            table = parquet_table([], [] if self.labelled else None, [], [], [], None,
                                  self.class_names)  # fmt: skip
            self._writer = pq.ParquetWriter(self.sink, table.schema)
        self._writer.close()


class DiscardRows:
    """``--output-dir``: the actors wrote the rows; nothing to write here."""

    count = 0

    def write(self, rows: Sequence[Prediction]) -> None:
        self.count += len(rows)


@contextmanager
def open_rows(
    path: Path | None,
    fmt: OutputFormat | str = OutputFormat.auto,
    *,
    labelled: bool,
    class_names: Sequence[str] | None = None,
    stream: IO[str] | None = None,
    output_dir: Path | None = None,
) -> Iterator[Any]:
    """:func:`lstm_export.infer.writers.open_rows`, plus Parquet (``.parquet``, written
    atomically) and ``output_dir`` (nothing written here: the workers wrote the shards)."""
    from lstm_export.fileio import atomic_open
    from lstm_export.infer.writers import open_rows as open_text_rows

    if output_dir is not None:
        yield DiscardRows()
        return
    if resolve_format(path, fmt) != "parquet":
        with open_text_rows(
            path, fmt, labelled=labelled, class_names=class_names, stream=stream
        ) as writer:
            yield writer
        return
    assert path is not None
    with atomic_open(Path(path), "wb") as out:
        parquet = ParquetRowWriter(out, labelled=labelled, class_names=class_names)
        yield parquet
        parquet.close()


def classify_on_ray(
    model: Path | str,
    folder: Path | str,
    **settings: Any,
) -> tuple[list[Prediction], RaySummary]:
    """Every row (in the folder's stable order) and the summary, on Ray: the Python API of
    ``--engine ray``. ``settings``: those of :class:`RayRun`."""
    rows: list[Prediction] = []
    with RayRun(model, folder, **settings) as run:
        for batch in run.batches():
            rows.extend(batch)
    assert run.summary is not None
    return rows, run.summary
