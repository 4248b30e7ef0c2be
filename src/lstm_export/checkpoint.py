"""Self-describing checkpoints: a plain dict that loads with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import datetime as _dt
import io
import os
import pickle
import pickletools
import platform
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from lstm_export import __version__
from lstm_export.artifacts import Artifact
from lstm_export.config import ModelConfig
from lstm_export.data import preprocess
from lstm_export.data.mnist import CLASS_NAMES
from lstm_export.errors import CheckpointError, ConfigError, first_line
from lstm_export.fileio import atomic_path, file_kind
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
    """Write atomically, serialised in memory first (a few MB): a full disk is an OutputError
    naming the file, never a half-written file or an error from inside torch's zip writer."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint with ``weights_only=True``; raise CheckpointError if foreign."""
    path = Path(path)
    if not path.is_file():
        if path.exists():
            raise CheckpointError(f"checkpoint {path} is {file_kind(os.stat(path).st_mode)}")
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": the error says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if code := _pickled_code(str(exc), path):  # os.system, eval, a class's __reduce__...
            raise CheckpointError(
                f"{path} is refused: it holds code ({code}) that is not allowed to load; a "
                "checkpoint may hold only tensors and plain containers (torch.load "
                "weights_only=True)"
            ) from exc
        why = "not a PyTorch file (no zip or pickle inside)"
        raise CheckpointError(f"{path} is not a readable checkpoint: {why}") from exc
    except Exception as exc:  # truncated zip, arbitrary bytes...
        raise CheckpointError(f"{path} is not a readable checkpoint: {first_line(exc)}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an lstm-export checkpoint (no '{FORMAT}' format tag)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {ckpt.get('format_version')} is not supported"
        )
    for key in ("model_config", "state_dict", "class_names", "preprocessing"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks '{key}'")
    names = ckpt["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{path}: class_names is not a list of names")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> LSTMClassifier:
    """Rebuild the model (eval mode, CPU) from a loaded checkpoint dict; its config's types and
    sizes are checked (:class:`ModelConfig`) before the model is allocated."""
    try:
        config = ModelConfig.from_dict(ckpt["model_config"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"checkpoint has an invalid model config: {exc}") from exc
    model = LSTMClassifier(config)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
        detail = _misfit(model.state_dict(), ckpt["state_dict"]) or first_line(exc)
        arch = f"hidden_size {config.hidden_size}, num_layers {config.num_layers}"
        raise CheckpointError(
            f"checkpoint weights do not fit its model config ({arch}): {detail}"
        ) from exc
    return model.eval()


def _misfit(expected: dict[str, Any], state: Any) -> str:
    """Which tensors of ``state`` do not fit the model's ``expected`` ones, in words."""
    if not isinstance(state, dict):
        return f"state_dict is a {type(state).__name__}, not a dict of tensors"
    problems = []
    for key, want in expected.items():
        got = state.get(key)
        if got is None:
            problems.append(f"{key} is missing")
        elif not isinstance(got, torch.Tensor):
            problems.append(f"{key} is a {type(got).__name__}, not a tensor")
        elif tuple(got.shape) != tuple(want.shape):
            problems.append(
                f"{key} has shape {tuple(got.shape)} in the file, {tuple(want.shape)} for the config"
            )
    problems += [f"{key} is not a weight of this model" for key in state if key not in expected]
    if len(problems) > 3:
        problems = [*problems[:3], f"and {len(problems) - 3} more"]
    return "; ".join(problems)


def _pickled_code(message: str, path: Path) -> str | None:
    """The code a refused pickle refers to (``posix.system``...), or None: from torch's message
    (``unsupported GLOBAL posix.system``), else from a raw pickle's opcodes (read, never run), the
    first import of anything but torch's own types."""
    if found := re.search(r"GLOBAL ([\w.]+)", message, flags=re.IGNORECASE):
        return found.group(1)
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f.read(1 << 24)):
                if isinstance(arg, str):
                    strings = [*strings[-1:], arg]
                name = str(arg).replace(" ", ".") if op.name in ("GLOBAL", "INST") else None
                if op.name == "STACK_GLOBAL" and len(strings) == 2:
                    name = ".".join(strings)
                if name and not name.startswith(("torch.", "collections.OrderedDict")):
                    return name
    except Exception:  # not a pickle at all, or a broken one
        return None
    return None


def load_model(path: Path) -> tuple[LSTMClassifier, dict[str, Any]]:
    """Load a checkpoint file and rebuild its model: ``(model, checkpoint_dict)``."""
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt), ckpt


def resolve_checkpoint(path: Path | str) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file (CheckpointError if neither)."""
    path = Path(path)
    if path.is_dir():
        candidate = path / Artifact.checkpoint.value
        if not candidate.is_file():
            raise CheckpointError(f"run folder {path} has no {Artifact.checkpoint.value}")
        return candidate
    if not path.exists():
        raise CheckpointError(f"{path} not found (expected a run folder or a checkpoint file)")
    return path
