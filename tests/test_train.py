"""Training: a short real run beats chance by far, is deterministic, and writes a run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lstm_export.checkpoint import resolve_checkpoint
from lstm_export.errors import ConfigError
from lstm_export.train.loop import random_affine, train
from lstm_export.train.presets import PRESETS, Preset, TrainConfig
from lstm_export.train.run_dir import save_run

QUICK = TrainConfig(epochs=2, subset=4000, test_subset=1000, hidden_size=64, seed=1)


def test_short_run_beats_chance_and_is_deterministic(mnist_dir: Path, tmp_path: Path) -> None:
    first = train(QUICK, mnist_dir)
    assert first.metrics["test_accuracy"] > 0.7  # chance is 0.1
    second = train(QUICK, mnist_dir)
    assert second.metrics["test_accuracy"] == first.metrics["test_accuracy"]
    for key, value in first.checkpoint["state_dict"].items():
        torch.testing.assert_close(second.checkpoint["state_dict"][key], value, rtol=0, atol=0)
    model_path = save_run(first, tmp_path / "run")
    assert resolve_checkpoint(tmp_path / "run") == model_path
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 1
    assert metrics["epochs"] == 2 and metrics["train_seconds"] > 0
    assert metrics["config"]["hidden_size"] == 64
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_best_preset_runs_its_recipe(mnist_dir: Path) -> None:
    config = PRESETS[Preset.best].with_overrides(epochs=2, subset=4000, test_subset=500)
    result = train(config, mnist_dir)
    assert result.model.normalize and result.metrics["test_accuracy"] > 0.5
    assert result.checkpoint["model_config"]["input_mean"] == pytest.approx(0.1307)


def test_seed_preset_is_the_seed_recipe() -> None:
    seed = PRESETS[Preset.seed]
    assert (seed.epochs, seed.batch_size, seed.lr) == (2, 100, 0.01)
    assert (seed.hidden_size, seed.num_layers, seed.bidirectional) == (128, 2, False)


def test_invalid_values_are_rejected() -> None:
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=-1.0)


def test_augmentation_keeps_shape_and_range() -> None:
    x = torch.zeros(4, 28, 28)
    x[:, 10:18, 12:16] = 1.0
    out = random_affine(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6
    assert not torch.equal(out, x)
