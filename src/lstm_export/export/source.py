"""The checkpoint an export starts from: resolved, loaded, hashed, and its model rebuilt."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lstm_export.config import ModelConfig
from lstm_export.fileio import file_digest

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
    from lstm_export.checkpoint import load_model, resolve_checkpoint

    path = resolve_checkpoint(Path(checkpoint))
    model, ckpt = load_model(path)
    log.info("loaded %s (%s)", path, model.config)
    return Source(path=path, model=model.eval(), checkpoint=ckpt, sha256=file_digest(path))
