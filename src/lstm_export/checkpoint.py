"""Self-describing checkpoints: a plain dict that loads with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import datetime as _dt
import pickle
import platform
from pathlib import Path
from typing import Any

import torch

from lstm_export import __version__
from lstm_export.config import ModelConfig
from lstm_export.data import preprocess
from lstm_export.data.mnist import CLASS_NAMES
from lstm_export.errors import CheckpointError, ConfigError
from lstm_export.fileio import atomic_path
from lstm_export.model import LSTMClassifier

FORMAT = "lstm-export/checkpoint"
FORMAT_VERSION = 1


def make_checkpoint(
    model: LSTMClassifier,
    *,
    metrics: dict[str, Any] | None = None,
    train_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Bundle weights with everything needed to rebuild and use the model alone."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "class_names": list(CLASS_NAMES),
        "preprocessing": preprocess.describe(),
        "metrics": dict(metrics or {}),
        "train_config": dict(train_config or {}),
        "versions": {
            "lstm_export": __version__,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
        },
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    """Write atomically: a failed save never leaves a half-written file."""
    with atomic_path(Path(path)) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint with ``weights_only=True``; raise CheckpointError if foreign."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):  # a pickle of more than tensors and containers
            why = "it holds objects other than tensors and plain containers (weights_only=True)"
        else:
            why = "not a PyTorch file (no zip or pickle inside)"
        raise CheckpointError(f"{path} is not a readable checkpoint: {why}") from exc
    except Exception as exc:  # truncated zip, arbitrary bytes...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint: {reason[:200]}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an lstm-export checkpoint (no '{FORMAT}' format tag)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {ckpt.get('format_version')} is not supported"
        )
    for key in ("model_config", "state_dict", "class_names", "preprocessing"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks '{key}'")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> LSTMClassifier:
    """Rebuild the model (eval mode, CPU) from a loaded checkpoint dict."""
    try:
        config = ModelConfig.from_dict(ckpt["model_config"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"checkpoint has an invalid model config: {exc}") from exc
    model = LSTMClassifier(config)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint weights do not fit its architecture: {first}") from exc
    return model.eval()


def load_model(path: Path) -> tuple[LSTMClassifier, dict[str, Any]]:
    """Load a checkpoint file and rebuild its model: ``(model, checkpoint_dict)``."""
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt), ckpt
