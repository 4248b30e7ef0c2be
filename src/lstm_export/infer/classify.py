"""Classify every image under a folder in this process: :class:`FolderRun` and the Python API
(rows, counts and confusion matrix from :mod:`~lstm_export.infer.rows`, as on Ray)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstm_export.devices import Device, usable_cores
from lstm_export.errors import ModelLoadError
from lstm_export.infer.base import Runner
from lstm_export.infer.images import Invert
from lstm_export.infer.pipeline import plan_run
from lstm_export.infer.registry import RUNNERS, backend_for, make_runner
from lstm_export.infer.rows import Prediction, Run, Summary, scored_batches
from lstm_export.infer.walk import walk_images


@dataclass(frozen=True)
class FolderResult:
    """What :func:`classify_folder` returns: every row, in the folder's stable order, and totals."""

    rows: list[Prediction]
    summary: Summary


class FolderRun(Run):
    """One run over one folder in this process (a :class:`~lstm_export.infer.rows.Run`).
    ``model``: a model file (backend from the suffix unless ``backend`` names one) or a
    :class:`Runner`, used as it is (its threads too) and not closed. ``batch_size``, ``workers``,
    ``threads``, ``streams``: see :func:`plan_run` (None: chosen). ``folder``: a folder, an image
    file or a glob pattern; ``follow_links`` follows links out of it."""

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
        trusted: bool = False,
    ) -> None:
        self.invert, self.fit, self.probabilities = Invert(invert), fit, probabilities
        self._owns_runner = not isinstance(model, Runner)
        if isinstance(model, Runner) and threads is None:  # its threads were fixed when built
            threads = getattr(model.options, "threads", None) or usable_cores()
        self._choice: dict[str, Any] = dict(
            workers=workers, threads=threads, batch_size=batch_size, streams=streams, fit=fit
        )
        self.plan = plan_run(**self._choice)
        if isinstance(model, Runner):
            self.runner = model
        else:
            name = backend_for(model) if backend == "auto" else backend
            options = RUNNERS[name].planned_options(self.plan.threads, trusted=trusted)
            self.runner = make_runner(Path(model), name, device, **options)
            if not self.runner.path.is_file():
                raise ModelLoadError(f"model file {model} not found")
        self.walk = walk_images(folder, recursive=recursive, follow_links=follow_links)

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

    def _batches(self) -> Iterator[list[Prediction]]:
        start = 0
        for scores in scored_batches(
            self.walk.paths, self.plan, self.runner, len(self.class_names),
            refused=self.walk.refused, invert=self.invert, fit=self.fit,
            probabilities=self.probabilities,
        ):  # fmt: skip
            rows = self._rows(start, scores)
            start += len(rows)
            yield rows


def classify_folder(
    model: Path | str | Runner,
    folder: Path | str,
    *,
    on_batch: Callable[[list[Prediction]], None] | None = None,
    **settings: Any,
) -> FolderResult:
    """Every row of ``folder`` (or one image file) in a stable order (sorted by relative path),
    and the summary; a bad file gets an ``error`` row and never stops the run. ``settings``: those
    of :class:`FolderRun`; decode processes (``workers >= 2``) start with ``forkserver``, so a
    script needs the ``if __name__ == "__main__":`` guard. ``on_batch`` gets each batch of rows.
    """
    rows: list[Prediction] = []
    with FolderRun(model, folder, **settings) as run:
        for batch in run.batches():
            rows.extend(batch)
            if on_batch is not None:
                on_batch(batch)
    assert run.summary is not None
    return FolderResult(rows=rows, summary=run.summary)
