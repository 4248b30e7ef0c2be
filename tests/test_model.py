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
        ModelConfig(hidden_size=8, num_layers=3, bias=False),
        ModelConfig(hidden_size=8, bidirectional=True, batch_first=False),
        ModelConfig(hidden_size=8, proj_size=3, bidirectional=True),
    ],
    ids=["default", "bidirectional", "one-layer", "normalised", "no-bias", "time-major", "proj"],
)
def test_output_shape(config: ModelConfig) -> None:
    model = build_model(config).eval()
    for n, rows in ((1, 28), (7, 28), (2, 1), (3, 60)):
        assert model(torch.rand(n, rows, 28)).shape == (n, 10)
    logits, h_n, c_n = model.forward_with_state(torch.rand(2, 5, 28))
    assert logits.shape == (2, 10)
    assert h_n.shape == (config.state_layers, 2, config.output_size)
    assert c_n.shape == (config.state_layers, 2, config.hidden_size)


def test_state_zeros_and_chunks() -> None:
    """No state is zeros; chunks with the state carried give the whole sequence's answer."""
    model = build_model(ModelConfig(hidden_size=8, num_layers=2)).eval()
    x = torch.rand(4, 28, 28)
    with torch.inference_mode():
        logits, h, c = model.forward_with_state(x)
        torch.testing.assert_close(logits, model(x), rtol=0, atol=0)
        _, h1, c1 = model.forward_with_state(x[:, :10])
        end, h2, c2 = model.forward_with_state(x[:, 10:], h1, c1)
    for got, want in ((end, logits), (h2, h), (c2, c)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_checkpoint_without_the_newer_config_fields_loads(tmp_path: Path) -> None:
    """A checkpoint written before bias / batch_first / proj_size existed loads with defaults."""
    torch.manual_seed(1)
    model = build_model(ModelConfig(hidden_size=8)).eval()
    ckpt = make_checkpoint(model)
    for key in ("bias", "batch_first", "proj_size"):
        del ckpt["model_config"][key]
    path = tmp_path / "old.pt"
    save_checkpoint(ckpt, path)
    rebuilt, _ = load_model(path)
    assert rebuilt.config == ModelConfig(hidden_size=8)
    x = torch.rand(2, 28, 28)
    torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


def test_default_is_the_seed_architecture() -> None:
    model = build_model(ModelConfig())
    assert model.lstm.input_size == 28 and model.lstm.hidden_size == 128
    assert model.lstm.num_layers == 2 and model.lstm.batch_first
    assert model.lstm.bias and model.lstm.proj_size == 0 and not model.lstm.bidirectional
    assert model.fc.in_features == 128 and model.fc.out_features == 10


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ConfigError):
        ModelConfig(hidden_size=0)
    with pytest.raises(ConfigError):
        ModelConfig.from_dict({"hidden_size": 8, "colour": "blue"})
    with pytest.raises(ConfigError, match="proj_size must be 0"):
        ModelConfig(hidden_size=8, proj_size=8)
    with pytest.raises(ConfigError, match="proj_size must be 0"):
        ModelConfig(proj_size=-1)


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


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(),
        ModelConfig(bidirectional=True, num_layers=3, bias=False),
        ModelConfig(hidden_size=8, proj_size=3, bidirectional=True, num_classes=7),
        ModelConfig(input_size=5, hidden_size=4, num_layers=1),
    ],
)
def test_parameter_count_is_pytorchs(config: ModelConfig) -> None:
    assert config.parameter_count == sum(p.numel() for p in build_model(config).parameters())


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"hidden_size": 10**6}, r"hidden_size must be in 1\.\.4,096, got 1,000,000"),
        ({"num_layers": 10**7}, r"num_layers must be in 1\.\.16"),
        ({"num_classes": 10**9}, r"num_classes must be in 1\.\.100,000"),
        ({"hidden_size": 4096, "num_layers": 16}, r"the model would have [\d,]+ parameters"),
        ({"hidden_size": "128"}, "hidden_size must be a whole number, got '128'"),
        ({"hidden_size": 12.5}, "hidden_size must be a whole number"),
        ({"num_layers": True}, "num_layers must be a whole number"),
        ({"bidirectional": "yes"}, "bidirectional must be true or false"),
        ({"dropout": float("nan")}, "dropout must be finite"),
        ({"input_std": float("inf")}, "input_std must be finite"),
    ],
)
def test_absurd_or_mistyped_configs_are_refused_before_anything_is_built(
    fields: dict[str, object], needle: str, tmp_path: Path, make_checkpoint: Callable[..., Path]
) -> None:
    with pytest.raises(ConfigError, match=needle):
        ModelConfig.from_dict(fields)
    raw = torch.load(make_checkpoint(hidden_size=8), weights_only=True)
    raw["model_config"].update(fields)
    path = tmp_path / "absurd.pt"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=f"invalid model config: {needle}"):
        load_model(path)
