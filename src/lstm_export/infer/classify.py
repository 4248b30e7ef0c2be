"""Classify every image under a folder in this process: :class:`FolderRun` and the Python API.

The folder is walked once (stable order); :func:`~lstm_export.infer.rows.scored_batches` decodes
its files in parallel with batched inference (:mod:`~lstm_export.infer.pipeline`) and the rows,
counts and confusion matrix are made by :mod:`~lstm_export.infer.rows`, as on Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstm_export.devices import Device, usable_cores
from lstm_export.errors import ModelLoadError
from lstm_export.infer.base import Runner
from lstm_export.infer.images import Invert
from lstm_export.infer.pipeline import plan_run
from lstm_export.infer.rows import Prediction, Run, Summary, scored_batches
from lstm_export.infer.walk import walk_images

__all__ = ["FolderResult", "FolderRun", "Prediction", "Summary", "classify_folder"]


@dataclass(frozen=True)
class FolderResult:
    """What :func:`classify_folder` returns: every row, in the folder's stable order, and totals."""

    rows: list[Prediction]
    summary: Summary


class FolderRun(Run):
    """One run over one folder in this process (a :class:`~lstm_export.infer.rows.Run`): the
    walk, the plan and the runner, decided before any work.

    Build it (cheap: walks the folder, plans, builds the runner unloaded), :meth:`load` it (or
    use ``with``), iterate :meth:`batches` for the rows as they are ready, then read
    :attr:`summary`. ``model`` is a model file (backend from the suffix unless ``backend`` names
    one) or a :class:`Runner`, used as it is and not closed: it keeps the threads it was built
    with (build it with ``**runner_options(plan_run())``). ``batch_size``, ``workers``,
    ``threads``, ``streams``: see :func:`plan_run`, which chooses whatever is None. ``folder``:
    a folder, an image file or a glob pattern; ``follow_links`` follows links out of it.
    """

    def __init__(
        self,
        model: Path | str | Runner,
        folder: Path | str,
        *,
        backend: str = "auto",
        device: Device | str = Device.auto,
        batch_size: int | None = None,
        workers: int | None = None,
        threads: int | None = None,
        streams: int | None = None,
        recursive: bool = True,
        follow_links: bool = False,
        invert: Invert | str = Invert.auto,
        fit: bool = False,
        probabilities: bool = False,
    ) -> None:
        from lstm_export.infer.registry import backend_for, make_runner, runner_options

        self.invert, self.fit, self.probabilities = Invert(invert), fit, probabilities
        self._owns_runner = not isinstance(model, Runner)
        if isinstance(model, Runner) and threads is None:  # its threads were fixed when built
            threads = getattr(model.options, "threads", None) or usable_cores()
        self._choice: dict[str, Any] = {
            "workers": workers, "threads": threads, "batch_size": batch_size,
            "streams": streams, "fit": fit,
        }  # fmt: skip
        self.plan = plan_run(**self._choice)
        if isinstance(model, Runner):
            self.runner = model
        else:
            name = backend_for(model) if backend == "auto" else backend
            self.runner = make_runner(Path(model), name, device, **runner_options(self.plan, name))
            if not self.runner.path.is_file():
                raise ModelLoadError(f"model file {model} not found")
        self.walk = walk_images(folder, recursive=recursive, follow_links=follow_links)
        self.class_names: list[str] = []
        self.labels: list[int] | None = None
        self.summary: Summary | None = None

    @property
    def model_line(self) -> str:
        """The backend and device the model runs on, and why (for the CLI)."""
        note = f" ({self.runner.device_note})" if self.runner.device_note else ""
        return f"{self.runner.description} on {self.runner.device}{note}"

    def load(self) -> FolderRun:
        """Load the model; on CUDA the plan is made again for the GPU. Idempotent."""
        if self.summary is None:
            runner = self.runner.load()
            if runner.device == "cuda":
                self.plan = plan_run(**self._choice, device="cuda")
            self._begin(runner, model=str(runner.path), backend=runner.description,
                        device=runner.device or "cpu", plan=self.plan)  # fmt: skip
        return self

    def close(self) -> None:
        """Release the runner if this run built it."""
        if self._owns_runner:
            self.runner.close()

    def batches(self) -> Iterator[list[Prediction]]:
        """Rows batch by batch, in the folder's stable order; every image file exactly once."""
        summary = self.load().summary
        assert summary is not None
        started, start = time.perf_counter(), 0
        try:
            for scores in scored_batches(
                self.walk.paths, self.plan, self.runner, len(self.class_names),
                refused=self.walk.refused, invert=self.invert, fit=self.fit,
                probabilities=self.probabilities,
            ):  # fmt: skip
                rows = self._rows(start, scores)
                start += len(rows)
                summary.seconds = time.perf_counter() - started
                yield rows
        finally:
            summary.seconds = time.perf_counter() - started


def classify_folder(
    model: Path | str | Runner,
    folder: Path | str,
    *,
    on_batch: Callable[[list[Prediction]], None] | None = None,
    **settings: Any,
) -> FolderResult:
    """Classify every image file under ``folder`` (or one image file); no CLI needed.

    ``settings`` are those of :class:`FolderRun` (``backend``, ``device``, ``batch_size``,
    ``workers``, ``threads``, ``streams``, ``recursive``, ``follow_links``, ``invert``, ``fit``,
    ``probabilities``). Decode processes (``workers >= 2``) start with ``forkserver``, so
    scripts using them need the usual ``if __name__ == "__main__":`` guard. ``on_batch`` is
    called with each batch of rows as it is ready.

    Returns every row in a stable order (sorted by relative path) and the summary; bad files
    get an ``error`` row and never stop the run.
    """
    rows: list[Prediction] = []
    with FolderRun(model, folder, **settings) as run:
        for batch in run.batches():
            rows.extend(batch)
            if on_batch is not None:
                on_batch(batch)
    assert run.summary is not None
    return FolderResult(rows=rows, summary=run.summary)
