"""Architecture of the model, as a plain dataclass (no torch import, so the CLI stays fast)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from lstm_export.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`LSTMClassifier`. The seed model is the default."""

    input_size: int = 28
    hidden_size: int = 128
    num_layers: int = 2
    num_classes: int = 10
    bidirectional: bool = False
    dropout: float = 0.0
    # Input normalisation applied inside the model, so exported graphs take raw [0, 1] pixels.
    input_mean: float = 0.0
    input_std: float = 1.0

    def __post_init__(self) -> None:
        for name in ("input_size", "hidden_size", "num_layers", "num_classes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.input_std <= 0:
            raise ConfigError(f"input_std must be > 0, got {self.input_std}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)
