"""What every export from a checkpoint shares: its plan (checkpoint, target, test images, before
any slow step), its last step (write under a temporary name, validate, rename) and its report."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lstm_export.artifacts import Artifact
from lstm_export.config import ModelConfig
from lstm_export.errors import ConfigError
from lstm_export.export.quiet import ProgressFn, quiet_exporters, status
from lstm_export.export.validate import (
    STREAM_BATCHES,
    Batch,
    ValidationReport,
    describe_checks,
    length_batches,
    load_test_set,
    make_batches,
    validate_export,
)
from lstm_export.fileio import atomic_path, check_writable_file, file_digest

if TYPE_CHECKING:
    from lstm_export.model import LSTMClassifier

log = logging.getLogger(__name__)


@dataclass
class Source:
    """A loaded checkpoint: ``model`` maps float32 (N, 28, 28) in [0, 1] to logits (N, classes)."""

    path: Path
    model: LSTMClassifier
    checkpoint: dict[str, Any]
    sha256: str


def load_source(checkpoint: Path) -> Source:
    """A run folder or ``.pt`` file -> :class:`Source` (raises CheckpointError if unusable)."""
    from lstm_export.checkpoint import load_model, resolve_checkpoint

    path = resolve_checkpoint(Path(checkpoint))
    model, ckpt = load_model(path)
    log.info("loaded %s (%s)", path, model.config)
    return Source(path=path, model=model.eval(), checkpoint=ckpt, sha256=file_digest(path))


@dataclass
class ExportPlan:
    """An export ready to run: ``batches`` None means validation is skipped."""

    source: Source
    target: Path
    tolerance: float
    with_state: bool
    any_length: bool
    batches: list[Batch] | None
    streams: list[Batch] = field(default_factory=list)


def plan_export(
    checkpoint: Path,
    out: Path | None,
    artifact: Artifact,
    *,
    validate: bool,
    tolerance: float,
    data_dir: Path | None,
    any_length: bool,
    with_state: bool,
    progress: ProgressFn | None,
    refuse: Callable[[ModelConfig], None] | None = None,
) -> ExportPlan:
    """Load the checkpoint, let ``refuse`` raise for a model the format cannot hold, check that the
    target (default: ``artifact`` beside the checkpoint) can be written, and load the test images:
    every batch length for a file that takes ``any_length``, chunked streams ``with_state``."""
    from lstm_export.model import check_streamable

    if not tolerance > 0:
        raise ConfigError(f"tolerance must be > 0, got {tolerance}")
    status(progress, "loading checkpoint")
    source = load_source(checkpoint)
    if refuse is not None:
        refuse(source.model.config)
    if with_state:
        check_streamable(source.model.config)
    target = check_writable_file(Path(out) if out is not None else artifact.beside(source.path))
    if not validate:
        return ExportPlan(source, target, tolerance, with_state, any_length, None)
    images = load_test_set(data_dir)[0]
    batches = length_batches(images) if any_length else make_batches(images)
    streams = make_batches(images, STREAM_BATCHES) if with_state else []
    return ExportPlan(source, target, tolerance, with_state, any_length, batches, streams)


@dataclass(kw_only=True)
class ExportReport:
    """What an export wrote and proved (``validation`` None: not validated)."""

    path: Path
    checkpoint: Path
    validation: ValidationReport | None
    metadata: dict[str, str]
    file_size: int
    export_seconds: float
    validate_seconds: float
    with_state: bool = False


def write_validated(
    plan: ExportPlan,
    write: Callable[[Path], object],
    *,
    backend: str,
    candidate_name: str,
    structural: Callable[[Path], list[str]],
    metadata: dict[str, str],
    export_seconds: float,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    """``write`` the file under a temporary name, validate it with the ``backend`` runner unless
    the plan skips validation (:func:`validate_export`) and rename it onto the target; the
    :class:`ExportReport` fields of what was written."""
    validation = None
    t0 = time.perf_counter()
    with atomic_path(plan.target) as tmp:
        write(tmp)
        if plan.batches is None:
            log.warning("validation skipped: %s is unchecked", plan.target)
        else:
            checks = describe_checks(plan.batches, plan.streams)
            status(progress, f"validating against eager PyTorch ({checks})")
            with quiet_exporters():
                validation = validate_export(
                    tmp,
                    backend,
                    plan.source.path,
                    plan.batches,
                    plan.tolerance,
                    candidate_name=candidate_name,
                    streams=plan.streams,
                    structural=structural,
                )
    size = plan.target.stat().st_size
    log.info("wrote %s (%d bytes)", plan.target, size)
    return {
        "path": plan.target,
        "checkpoint": plan.source.path,
        "validation": validation,
        "metadata": metadata,
        "file_size": size,
        "export_seconds": export_seconds,
        "validate_seconds": time.perf_counter() - t0,
        "with_state": plan.with_state,
    }
