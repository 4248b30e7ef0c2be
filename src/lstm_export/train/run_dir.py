"""A run folder: ``model.pt`` (the checkpoint) and ``metrics.json``, both written atomically."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from lstm_export.artifacts import METRICS_FILE, Artifact
from lstm_export.checkpoint import save_checkpoint
from lstm_export.fileio import ensure_writable_dir, write_text_atomic
from lstm_export.train.loop import TrainResult


def save_run(result: TrainResult, out_dir: Path) -> Path:
    """Write ``model.pt`` and ``metrics.json`` into ``out_dir``; return the checkpoint path."""
    ensure_writable_dir(out_dir)
    model_path = out_dir / Artifact.checkpoint.value
    save_checkpoint(result.checkpoint, model_path)
    write_text_atomic(out_dir / METRICS_FILE, json.dumps(result.metrics, indent=2) + "\n")
    return model_path


@contextlib.contextmanager
def run_folder(out_dir: Path) -> Iterator[Path]:
    """``out_dir`` made ready to write (see :func:`ensure_writable_dir`); when the block fails or
    is interrupted (Ctrl-C, SIGTERM), what it created is removed again: the run's files and the
    folders that did not exist before, so a stopped run leaves nothing behind."""
    made = [p for p in (out_dir, *out_dir.parents) if not os.path.lexists(p)]
    ensure_writable_dir(out_dir)
    try:
        yield out_dir
    except BaseException:
        if made:
            for name in (Artifact.checkpoint.value, METRICS_FILE):
                with contextlib.suppress(OSError):
                    (out_dir / name).unlink()
            with contextlib.suppress(OSError):
                for folder in made:  # deepest first; stops at one that is not empty
                    folder.rmdir()
        raise
