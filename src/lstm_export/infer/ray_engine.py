"""``lstm-export infer --engine ray``: the in-process engine's rows, on Ray Data. Blocks of paths
go in the folder's order (``preserve_order``) to a pool of actors (:class:`Classifier`) running
:func:`~lstm_export.infer.rows.scored_batches`; ``Dataset.write_parquet`` writes ``output_dir``."""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from packaging.version import Version

from lstm_export import errors
from lstm_export.console import count
from lstm_export.devices import Device, usable_cores
from lstm_export.errors import ConfigError, DeviceError, InferenceError, LstmExportError
from lstm_export.infer.images import Invert
from lstm_export.infer.pipeline import CPU_BATCH_SIZE, CUDA_BATCH_SIZE, Plan
from lstm_export.infer.registry import RUNNERS, backend_for, load_runner, make_runner
from lstm_export.infer.rows import Prediction, Run, Scores, make_rows, scored_batches
from lstm_export.infer.walk import walk_images
from lstm_export.infer.writers import escape_text, rows_table, unescape_text

log = logging.getLogger(__name__)

#: the oldest ray the ``ray`` extra allows; the first that deprecates ``map_batches(concurrency=)``
RAY_FLOOR, RAY_COMPUTE_API = "2.40", "2.51"
#: CPUs of a local Ray started for one run (default: the cores this process may use)
RAY_CPUS_ENV = "LSTM_EXPORT_RAY_CPUS"
#: most blocks a run is cut into, and the most images in one block (unless that would exceed it)
MAX_BLOCKS, MAX_BLOCK_ROWS = 20_000, 4096
#: seconds the actors may take to start (load the model); blocks an actor may be given ahead
ACTORS_START_TIMEOUT_S, TASKS_IN_FLIGHT_PER_ACTOR = 600, 2
#: CPUs asked for each Parquet write task (out of the share the actors always leave free)
WRITE_TASK_CPUS = 0.1


def actor_pool_args(actors: int, version: str, *, in_flight: int | None = None) -> dict[str, Any]:
    """The ``map_batches`` arguments for a fixed pool of ``actors``, for ray ``version``."""
    if Version(version) < Version(RAY_COMPUTE_API):
        return {"concurrency": actors}
    from ray.data import ActorPoolStrategy

    return {"compute": ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=in_flight)}


def import_ray() -> Any:
    """``import ray`` (ImportError or a ray older than :data:`RAY_FLOOR` -> ConfigError)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray: loopback only
    try:
        import ray.data
    except ImportError as exc:
        raise ConfigError(f"the Ray engine needs pip install 'lstm-export[ray]': {exc}") from exc
    if Version(ray.__version__) < Version(RAY_FLOOR):
        raise ConfigError(f"the Ray engine needs ray {RAY_FLOOR}+, not {ray.__version__}")
    return ray


@dataclass(frozen=True)
class RayPlan(Plan):
    """How a Ray run shares the cluster: ``actors``, each a decode thread and a runner of
    ``threads`` threads on ``cpus_per_actor`` (and ``gpus_per_actor``); ``block_rows`` images
    per block, ``batch_size`` per inference call; ``cluster``: which, and its size."""

    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    block_rows: int = CPU_BATCH_SIZE
    cluster: str = ""

    def describe(self) -> str:
        gpus = f", {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else ""
        return (f"{self.cluster}; {count(self.actors, 'actor')} x (decode 1 "
                f"thread, inference {self.threads} thread(s); {self.cpus_per_actor:g} CPU{gpus}),"
                f" blocks of {self.block_rows}, batch {self.batch_size}")  # fmt: skip


def plan_actors(
    *,
    cpus: float,
    gpus: float,
    device: str,
    actors: int | None = None,
    threads: int | None = None,
    batch_size: int | None = None,
    images: int,
    cluster: str = "",
) -> RayPlan:
    """The pool for ``images`` on ``cpus`` and ``gpus``. Half a CPU (one from 4 CPUs up) stays
    free, so a task Ray Data starts beside the actors (writing) is never starved, which hangs a
    small machine. Default: one actor per CPU left (per GPU with ``cuda``), a decode thread and a
    1-thread runner each; never more than one per half CPU (per GPU) or per batch. Blocks: about
    4 per actor, one batch to 4096 images, at most 20,000."""
    free = max(cpus - (0.5 if cpus < 4 else 1.0), 0.1)
    threads, cuda = threads or 1, device == "cuda"
    batch_size = batch_size or (CUDA_BATCH_SIZE if cuda else CPU_BATCH_SIZE)
    most = min(max(1, int(gpus if cuda else 2 * free)), -(-images // batch_size))
    if actors is not None and actors > most:
        log.warning("%d actors asked for, %d used: one per %s and per batch of images at most",
                    actors, most, "GPU" if cuda else "half of a free CPU")  # fmt: skip
    default = max(1, int(gpus)) if cuda else max(1, int(free))
    actors = min(actors or default, most)
    target = min(MAX_BLOCK_ROWS, max(batch_size, images // (4 * actors)))
    target = max(target, math.ceil(images / MAX_BLOCKS))
    return RayPlan(
        workers=1, threads=threads, batch_size=batch_size, actors=actors, cluster=cluster,
        cpus_per_actor=max(0.001, math.floor(min(float(threads), free / actors) * 1000) / 1000),
        gpus_per_actor=math.floor(min(1.0, gpus / actors) * 1000) / 1000 if cuda else 0.0,
        block_rows=math.ceil(target / batch_size) * batch_size,
    )  # fmt: skip


def model_files(model: Path) -> dict[str, bytes]:
    """The model file and every file it reads beside it (an ONNX file's external data, which its
    runner's load found in its folder; OpenVINO IR's ``.bin``), by name relative to its folder."""
    names = [model.name]
    if model.suffix.lower() == ".onnx":
        import onnx

        graph = onnx.load(str(model), load_external_data=False).graph
        tensors = [*graph.initializer]
        tensors += [a.t for node in graph.node for a in node.attribute if a.HasField("t")]
        names += sorted({e.value for t in tensors for e in t.external_data if e.key == "location"})
    elif model.suffix.lower() == ".xml":
        names.append(model.with_suffix(".bin").name)
    try:
        return {name: (model.parent / name).read_bytes() for name in names}
    except OSError as exc:
        raise errors.ModelLoadError(f"{model}: {exc.strerror or exc}: {exc.filename}") from exc


def _bytes(values: list[str | None]) -> list[bytes]:
    """Text (file names may hold ``surrogateescape`` bytes) as bytes, ``b""`` for None."""
    return [b"" if v is None else os.fsencode(v) for v in values]


def _text(values: Any) -> list[str | None]:
    return [os.fsdecode(v) if v else None for v in values]


@dataclass(frozen=True)
class Job:
    """What every actor is told: the model file's ``name`` among the files sent, how to run it,
    and whether it returns the rows (``rows``: for Parquet)."""

    name: str
    backend: str
    device: str
    plan: Plan
    invert: str
    fit: bool
    probabilities: bool
    class_names: list[str]
    rows: bool
    labelled: bool
    trusted: bool = False


class Classifier:
    """A Ray Data callable class: one loaded runner per actor, one block per call: ``index``
    (int64), ``path``, ``refused`` (``b""``: read it) [, ``name``, ``label``: ``job.rows``, the
    rows returned as Arrow]; else per row ``index``, ``prediction`` (int64, -1: error),
    ``confidence``, ``error``, [``probabilities`` ``(N, C)``,] ``node``, ``actor_seconds``."""

    def __init__(self, files: dict[str, Any], job: Job) -> None:
        import ray

        with tempfile.TemporaryDirectory(prefix="lstm-export-model-") as folder:
            for name, ref in files.items():  # the runners read files: the model's, privately
                Path(folder, name).write_bytes(ray.get(ref))
            options = RUNNERS[job.backend].planned_options(job.plan.threads, trusted=job.trusted)
            self.runner = make_runner(Path(folder, job.name), job.backend, job.device, **options)
            self.runner.load()  # a DeviceError where CUDA is asked for and not usable
        self.node = int(ray.get_runtime_context().get_node_id()[:15], 16)
        self.job = job

    def __call__(self, block: dict[str, np.ndarray]) -> Any:
        started, job = time.perf_counter(), self.job
        paths = [os.fsdecode(p) for p in block["path"]]
        refused = {i: os.fsdecode(e) for i, e in enumerate(block["refused"]) if e}
        # decode in a thread, overlapping inference (inline for a block of one batch)
        plan = Plan(int(len(paths) > job.plan.batch_size), job.plan.threads, job.plan.batch_size)
        s = Scores.concat(list(scored_batches(
            paths, plan, self.runner, len(job.class_names), refused=refused, invert=job.invert,
            fit=job.fit, probabilities=job.probabilities,
        )))  # fmt: skip
        if job.rows:
            labels = _text(block["label"]) if job.labelled else None
            rows = make_rows(_text(block["name"]), labels, job.class_names, s)  # type: ignore[arg-type]
            names = job.class_names if job.probabilities else None
            return rows_table(rows, labelled=job.labelled, class_names=names)
        n, took = len(paths), time.perf_counter() - started  # each row: its share of the time
        out = {"index": block["index"], "prediction": s.predicted, "confidence": s.confidence,
               "error": np.array(_bytes(s.errors), object), "node": np.full(n, self.node),
               "actor_seconds": np.full(n, took / n)}  # fmt: skip
        return out if s.probabilities is None else {**out, "probabilities": s.probabilities}


class RayRun(Run):
    """One run over one folder on Ray Data (a :class:`~lstm_export.infer.rows.Run`). ``address``
    (or ``$RAY_ADDRESS``): join that cluster and leave it running; else a local Ray
    (``$LSTM_EXPORT_RAY_CPUS`` CPUs) for the run, stopped on leaving ``with``. ``actors``: see
    :func:`plan_actors`. ``output_dir``: the cluster writes the rows there (Parquet)."""

    def __init__(
        self,
        model: Path | str,
        folder: Path | str,
        *,
        backend: str = "auto",
        device: Device | str = Device.auto,
        batch_size: int | None = None,
        threads: int | None = None,
        recursive: bool = True,
        follow_links: bool = False,
        invert: Invert | str = Invert.auto,
        fit: bool = False,
        probabilities: bool = False,
        address: str | None = None,
        actors: int | None = None,
        output_dir: Path | str | None = None,
        progress: bool = True,
        trusted: bool = False,
    ) -> None:
        self.model_path = Path(model)
        if not self.model_path.is_file():
            raise errors.ModelLoadError(f"model file {model} not found")
        self.backend = backend_for(model) if backend == "auto" else backend
        self.auto = Device(device) == Device.auto
        self.device = "cuda" if Device(device) == Device.cuda else "cpu"
        self.invert, self.fit, self.probabilities = Invert(invert), fit, probabilities
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.local_cpus, self.progress = _env_cpus() or usable_cores(), progress
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self._choice = {"actors": actors, "threads": threads, "batch_size": batch_size}
        if any(value is not None and value < 1 for value in self._choice.values()):
            raise ConfigError(f"actors, threads and batch size must be >= 1: {self._choice}")
        self.trusted = trusted
        options = RUNNERS[self.backend].planned_options(1, trusted=trusted)
        self._driver_runner = make_runner(self.model_path, self.backend, Device.cpu, **options)
        self.walk = walk_images(folder, recursive=recursive, follow_links=follow_links)
        self.plan = self._plan(self.local_cpus, 0.0, "ray (not started yet)")
        self._ray: Any = None
        self._shutdown = False  # whether close() disconnects (started here or joined here)

    def _plan(self, cpus: float, gpus: float, cluster: str) -> RayPlan:
        return plan_actors(cpus=cpus, gpus=gpus, device=self.device, images=len(self.walk.paths),
                           cluster=cluster, **self._choice)  # fmt: skip

    @property
    def model_line(self) -> str:
        n, auto = self.plan.actors, ", auto: CPU" if self.auto else ""
        return f"{self.backend} on {self.device} ({count(n, 'Ray actor')}{auto})"

    def load(self) -> RayRun:
        """Load the model here (its class names), start or join Ray, plan the pool. Idempotent."""
        if self.summary is not None:
            return self
        runner = self._driver_runner.load()
        if self.output_dir is not None and any(self.output_dir.glob("part-*.parquet")):
            raise errors.OutputError(f"{self.output_dir} already holds part-*.parquet files")
        ray = sys.modules.get("ray")  # a process already connected keeps its connection
        if self.device == "cuda" and self.address is None and not (ray and ray.is_initialized()):
            self._cuda_here()  # a local Ray has the GPUs of this machine: fail before starting it
        started = time.perf_counter()
        cluster = self._connect()
        connect_s = time.perf_counter() - started
        resources = self._ray.cluster_resources()
        nodes = [n for n in self._ray.nodes() if n.get("Alive", n.get("alive"))]
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        if self.device == "cuda" and gpus < 1e-9:
            self._cuda_here()
            raise DeviceError("CUDA was asked for, but the Ray cluster has no GPUs")
        size = f"{count(len(nodes), 'node')}, {cpus:g} CPUs, {gpus:g} GPUs"
        self.plan = self._plan(cpus, gpus, f"ray {cluster}: {size}")
        summary = self._begin(runner, model=str(self.model_path), backend=self.backend,
                              device=self.device, plan=self.plan)  # fmt: skip
        summary.ray = {
            "ray_version": self._ray.__version__, "cluster": cluster, "nodes": len(nodes),
            "cpus": cpus, "gpus": gpus, "actors": self.plan.actors,
            "connect_seconds": round(connect_s, 3),
        }  # fmt: skip
        return self

    def _connect(self) -> str:
        """Start or join Ray, its own log lines routed to the log; which cluster it is."""
        ray = self._ray = import_ray()
        # without -v not even Ray's errors: a failure is the one line the command prints
        level = logging.INFO if logging.getLogger().isEnabledFor(logging.INFO) else logging.CRITICAL
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(level)
        if ray.is_initialized():
            return "(this process's existing connection)"
        quiet = {"logging_level": level, "log_to_driver": level == logging.INFO}
        self._shutdown = True
        if self.address is None:
            ray.init(address="local", num_cpus=self.local_cpus, include_dashboard=False, **quiet)
            return "local (started for this run, stopped after it)"
        _probe(self.address)
        try:
            ray.init(address=self.address, **quiet)
        except Exception as exc:
            why = errors.first_line(exc)
            raise ConfigError(f"cannot join the Ray cluster at {self.address}: {why}") from exc
        return f"cluster at {self.address} (joined; left running)"

    def _cuda_here(self) -> None:
        """The DeviceError of the in-process engine when CUDA is not usable on this machine."""
        load_runner(self.model_path, self.backend, Device.cuda, threads=1).close()

    def close(self) -> None:
        """Release the driver's runner; stop the local Ray started here, or leave the cluster."""
        self._driver_runner.close()
        if self._shutdown and self._ray is not None:
            self._shutdown = False
            self._ray.shutdown()

    def dataset(self) -> Any:
        """The Ray Data pipeline: blocks of paths -> the actor pool -> rows (lazy)."""
        import pyarrow as pa

        ray, plan, walk, rows = self._ray, self.plan, self.walk, self.output_dir is not None
        n = len(walk.paths)
        columns = {
            "index": np.arange(n, dtype=np.int64),
            # absolute: the workers' working folder is not the driver's
            "path": pa.array([os.fsencode(os.path.abspath(p)) for p in walk.paths], pa.binary()),
            "refused": pa.array(_bytes([walk.refused.get(i) for i in range(n)]), pa.binary()),
        }
        if rows:  # the actors make the rows: their paths and labels
            labels = [self.class_names[c] for c in self.labels or []]
            columns["name"] = pa.array(_bytes(list(walk.names)), pa.binary())
            columns["label"] = pa.array(_bytes(list(labels)) if labels else [b""] * n, pa.binary())
        table = pa.table(columns)
        blocks = [table.slice(start, plan.block_rows) for start in range(0, n, plan.block_rows)]
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = self.progress
        context.execution_options.preserve_order = True  # blocks come back in the folder's order
        with warnings.catch_warnings():  # deprecated (ray manages it) from ray 2.60 on
            warnings.simplefilter("ignore", DeprecationWarning)
            # blocks are lists of paths: where one lies does not matter, an idle actor does
            context.execution_options.actor_locality_enabled = False
        # every actor up (or a clear error) before the first block: a pool the cluster cannot
        # place never hangs, and the first actor up does not take every block
        context.wait_for_min_actors_s = ACTORS_START_TIMEOUT_S
        files = {name: ray.put(data) for name, data in model_files(self.model_path).items()}
        job = Job(self.model_path.name, self.backend, self.device, Plan(1, plan.threads,
                  plan.batch_size), self.invert.value, self.fit, self.probabilities,
                  self.class_names, rows, self.labels is not None, self.trusted)  # fmt: skip
        gpus = {"num_gpus": plan.gpus_per_actor} if plan.gpus_per_actor else {}
        pool = actor_pool_args(plan.actors, ray.__version__, in_flight=TASKS_IN_FLIGHT_PER_ACTOR)
        return ray.data.from_arrow(blocks).map_batches(
            Classifier, fn_constructor_args=(files, job), batch_size=plan.block_rows,
            batch_format="numpy", num_cpus=plan.cpus_per_actor, **gpus, **pool,
        )  # fmt: skip  # one whole block per call

    def _batches(self) -> Iterator[list[Prediction]]:
        """The rows block by block, what the cluster did in the summary; with ``output_dir``
        only the error rows (the rows are in its Parquet files)."""
        assert self.summary is not None
        done, started = 0, time.perf_counter()
        for n_rows, rows in self._written() if self.output_dir else self._gathered(started):
            done += n_rows
            yield rows
        if done != self.summary.images:
            raise InferenceError(f"Ray returned {done:,} rows for {self.summary.images:,} images")

    def _gathered(self, started: float) -> Iterator[tuple[int, list[Prediction]]]:
        """The rows of each block the actors return, in order."""
        assert self.summary is not None and self.summary.ray is not None
        info, done, busy, nodes = self.summary.ray, 0, 0.0, Counter[str]()
        try:
            for out in self.dataset().iter_batches(batch_size=None):
                info.setdefault("first_block_seconds", round(time.perf_counter() - started, 3))
                if int(out["index"][0]) != done:
                    raise InferenceError(f"Ray returned rows out of order after row {done:,}")
                probs = out["probabilities"] if self.probabilities else None
                scores = Scores(out["prediction"], out["confidence"], _text(out["error"]), probs)
                rows = self._rows(done, scores)
                nodes.update(f"{key:015x}" for key in out["node"].tolist())
                busy, done = busy + float(out["actor_seconds"].sum()), done + len(rows)
                yield len(rows), rows
        except LstmExportError:
            raise
        except Exception as exc:
            raise _library_error(exc) from exc
        finally:
            if busy:  # what one actor does in a second of work: the rate to scale out from
                info |= {"rows_per_node": dict(nodes), "actor_seconds": round(busy, 3),
                         "images_per_actor_second": round(done / busy, 1)}  # fmt: skip

    def _written(self) -> Iterator[tuple[int, list[Prediction]]]:
        """Ray Data writes the rows in ``output_dir``; read back in order for counts and errors."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
        from ray.data.datasource import FilenameProvider

        class Parts(FilenameProvider):  # sorted names: the folder's order
            def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
                return f"part-{task_index:06d}-{write_uuid}.parquet"

        assert self.output_dir is not None and self.summary is not None
        try:
            self.dataset().write_parquet(str(self.output_dir), filename_provider=Parts(),
                                         ray_remote_args={"num_cpus": WRITE_TASK_CPUS})  # fmt: skip
        except Exception as exc:
            raise _library_error(exc) from exc
        names, labels, done = pa.array(map(escape_text, self.class_names)), self.labels, 0
        for part in sorted(self.output_dir.glob("part-*.parquet")):
            table = pq.read_table(part, columns=["prediction", "error"])
            found = pc.index_in(table["prediction"], value_set=names).fill_null(-1)
            predicted, stop = found.to_numpy().astype(np.int64), done + table.num_rows
            self.summary.count(None if labels is None else np.array(labels[done:stop]), predicted)
            why = table["error"].to_pylist()
            yield table.num_rows, [
                Prediction(self.walk.names[done + k], None, None, unescape_text(why[k]),
                           None if labels is None else self.class_names[labels[done + k]])
                for k in np.flatnonzero(predicted < 0).tolist()
            ]  # fmt: skip
            done = stop


def _probe(address: str, timeout_s: float = 10.0) -> None:
    """ConfigError at once when a ``host:port`` cluster address does not answer (ray itself
    would retry for minutes). ``auto``, ``ray://`` and other forms are left to ray."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        why = f"{exc.strerror or exc} (`ray start --head` starts one; no address: a local Ray)"
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {why}") from None


def _env_cpus() -> float | None:
    raw = os.environ.get(RAY_CPUS_ENV, "").strip()
    if raw and (not re.fullmatch(r"\d*\.?\d+", raw) or float(raw) == 0):
        raise ConfigError(f"${RAY_CPUS_ENV} must be a positive number of CPUs, not {raw!r}")
    return float(raw) if raw else None


_NAMED = re.compile(r"^(?:lstm_export\.errors\.)?([A-Z]\w*Error): (.+)$")


def _library_error(exc: Exception) -> LstmExportError:
    """The library error a Ray failure carries (the last line naming one: Ray wraps it, keeping
    only its text), as itself in one line; else an InferenceError quoting Ray's first line."""
    for line in reversed(str(exc).splitlines()):
        match = _NAMED.match(line.strip())
        cls = getattr(errors, match.group(1), None) if match else None
        if match and isinstance(cls, type) and issubclass(cls, LstmExportError):
            return cls(match.group(2))
    return InferenceError(f"the Ray job failed: {errors.first_line(exc)}")
