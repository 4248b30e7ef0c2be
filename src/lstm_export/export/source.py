"""The checkpoint an export starts from: resolved, loaded, hashed, and its model rebuilt."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lstm_export.config import ModelConfig
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

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def load_source(checkpoint: Path) -> Source:
    """A run folder or ``.pt`` file -> :class:`Source` (raises CheckpointError if unusable)."""
    from lstm_export.checkpoint import load_model
    from lstm_export.train.run_dir import resolve_checkpoint

    path = resolve_checkpoint(Path(checkpoint))
    model, ckpt = load_model(path)
    log.info("loaded %s (%s)", path, model.config)
    return Source(path=path, model=model.eval(), checkpoint=ckpt, sha256=file_digest(path))


def check_target(target: Path) -> Path:
    """Fail early (before any slow step) if ``target`` cannot be written as a file."""
    return check_writable_file(target)


@contextlib.contextmanager
def output_file(target: Path) -> Iterator[Path]:
    """Write ``target`` atomically (see :func:`lstm_export.fileio.atomic_path`)."""
    with atomic_path(target) as tmp:
        yield tmp


def derived_path(path: Path, tag: str) -> Path:
    """``model.onnx`` + ``int8`` -> ``model.int8.onnx`` (same folder, same suffix)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{tag}{path.suffix or '.onnx'}")
