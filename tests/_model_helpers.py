"""Small builders shared by tests that need a model file but no trained weights."""

from __future__ import annotations

from pathlib import Path


def tiny_checkpoint(folder: Path, *, hidden_size: int = 16, num_layers: int = 1) -> Path:
    """An untrained (seeded) checkpoint ``folder/run/model.pt``."""
    import torch

    from lstm_export.checkpoint import make_checkpoint, save_checkpoint
    from lstm_export.config import ModelConfig
    from lstm_export.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_size=hidden_size, num_layers=num_layers)).eval()
    path = folder / "run" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(make_checkpoint(model), path)
    return path
