"""Model shapes across configs, and the checkpoint round trip."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lstm_export.checkpoint import load_checkpoint, load_model, make_checkpoint, save_checkpoint
from lstm_export.config import ModelConfig
from lstm_export.errors import CheckpointError, ConfigError
from lstm_export.model import build_model


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(),
        ModelConfig(bidirectional=True),
        ModelConfig(num_layers=1, hidden_size=32),
        ModelConfig(input_mean=0.1307, input_std=0.3081, dropout=0.2),
    ],
    ids=["default", "bidirectional", "one-layer", "normalised"],
)
def test_output_shape(config: ModelConfig) -> None:
    model = build_model(config).eval()
    for n in (1, 7):
        assert model(torch.rand(n, 28, 28)).shape == (n, 10)


def test_default_is_the_seed_architecture() -> None:
    model = build_model(ModelConfig())
    assert model.lstm.input_size == 28 and model.lstm.hidden_size == 128
    assert model.lstm.num_layers == 2 and model.lstm.batch_first
    assert model.fc.in_features == 128 and model.fc.out_features == 10


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ConfigError):
        ModelConfig(hidden_size=0)
    with pytest.raises(ConfigError):
        ModelConfig.from_dict({"hidden_size": 8, "colour": "blue"})


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = build_model(ModelConfig(hidden_size=16, bidirectional=True)).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint(model, metrics={"test_accuracy": 0.5}), path)
    raw = torch.load(path, weights_only=True)  # plain dict, no custom classes
    assert raw["class_names"] == [str(i) for i in range(10)]
    assert raw["model_config"]["bidirectional"] is True
    assert raw["preprocessing"]["range"] == [0.0, 1.0]
    assert raw["metrics"]["test_accuracy"] == 0.5
    assert "torch" in raw["versions"]
    rebuilt, ckpt = load_model(path)
    x = torch.rand(5, 28, 28)
    torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    assert ckpt["format_version"] == 1


def test_missing_truncated_and_foreign_checkpoints(
    tmp_path: Path, make_checkpoint: Callable[..., Path]
) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    good = make_checkpoint(hidden_size=8)
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not an lstm-export checkpoint"):
        load_checkpoint(foreign)
    wrong_arch = torch.load(good, weights_only=True)
    wrong_arch["model_config"]["hidden_size"] = 16
    mismatched = tmp_path / "mismatch.pt"
    torch.save(wrong_arch, mismatched)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(mismatched)
