"""A run folder: ``model.pt`` (the checkpoint) and ``metrics.json``, both written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from lstm_export.artifacts import METRICS_FILE, Artifact
from lstm_export.checkpoint import save_checkpoint
from lstm_export.fileio import ensure_writable_dir, write_text_atomic
from lstm_export.train.loop import TrainResult

DEFAULT_RUN_DIR = Path("runs/latest")


def save_run(result: TrainResult, out_dir: Path) -> Path:
    """Write ``model.pt`` and ``metrics.json`` into ``out_dir``; return the checkpoint path."""
    ensure_writable_dir(out_dir)
    model_path = out_dir / Artifact.checkpoint.value
    save_checkpoint(result.checkpoint, model_path)
    write_text_atomic(out_dir / METRICS_FILE, json.dumps(result.metrics, indent=2) + "\n")
    return model_path
