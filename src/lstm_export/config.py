"""Architecture of the model, as a plain dataclass (no torch import, so the CLI stays fast)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from lstm_export.errors import ConfigError

#: upper bounds of a model's sizes (the lower bound of each is 1)
LIMITS = {"input_size": 4096, "hidden_size": 4096, "num_layers": 16, "num_classes": 100_000}
#: most parameters a model may have: 400 MB of float32 weights
MAX_PARAMETERS = 100_000_000
_KINDS = {"int": "a whole number", "bool": "true or false", "float": "a number"}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`LSTMClassifier`. The seed model is the default.

    ``input_size``, ``hidden_size``, ``num_layers``, ``bias``, ``batch_first``, ``dropout``,
    ``bidirectional`` and ``proj_size`` are ``nn.LSTM``'s arguments of the same names. Whatever
    ``batch_first`` says, the model takes pixels ``(N, T, input_size)``; with ``batch_first=False``
    it hands the LSTM ``(T, N, input_size)``. ``proj_size > 0`` (``h`` that wide, ``c`` stays
    ``hidden_size``) exports to TorchScript only: ONNX has no such LSTM.
    """

    input_size: int = 28
    hidden_size: int = 128
    num_layers: int = 2
    num_classes: int = 10
    bidirectional: bool = False
    dropout: float = 0.0
    # Input normalisation applied inside the model, so exported graphs take raw [0, 1] pixels.
    input_mean: float = 0.0
    input_std: float = 1.0
    bias: bool = True
    batch_first: bool = True
    proj_size: int = 0

    def __post_init__(self) -> None:
        """Types and bounds, checked before anything is allocated (a checkpoint may come from
        anywhere): see :data:`LIMITS` and :data:`MAX_PARAMETERS`."""
        for f in fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            number = not isinstance(value, bool) and isinstance(value, (int, float))
            if not (isinstance(value, bool) if kind == "bool" else number) or (
                kind == "int" and not isinstance(value, int)
            ):
                raise ConfigError(f"{f.name} must be {_KINDS[kind]}, got {value!r}")
            if number and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be finite, got {value!r}")
        for name, top in LIMITS.items():
            if not 1 <= getattr(self, name) <= top:
                raise ConfigError(f"{name} must be in 1..{top:,}, got {getattr(self, name):,}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.input_std <= 0:
            raise ConfigError(f"input_std must be > 0, got {self.input_std}")
        if not 0 <= self.proj_size < self.hidden_size:
            raise ConfigError(
                f"proj_size must be 0 (no projection) or in 1..hidden_size-1 "
                f"({self.hidden_size - 1}), got {self.proj_size}"
            )
        if self.parameter_count > MAX_PARAMETERS:
            raise ConfigError(
                f"the model would have {self.parameter_count:,} parameters "
                f"(limit {MAX_PARAMETERS:,}, {MAX_PARAMETERS * 4 // 2**20} MiB of float32)"
            )

    @property
    def parameter_count(self) -> int:
        """Parameters of the model, counted as PyTorch does (both LSTM biases ``b_ih``, ``b_hh``)."""
        d, h, out = self.directions, self.hidden_size, self.output_size
        count = 0
        for layer in range(self.num_layers):
            width = self.input_size if layer == 0 else d * out
            count += d * (
                4 * h * (width + out) + 8 * h * self.bias + h * out * (self.proj_size > 0)
            )
        return count + d * out * self.num_classes + self.num_classes

    @property
    def directions(self) -> int:
        """``D``: 2 for a bidirectional LSTM, else 1."""
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """``H_out``: the width of ``h`` (``proj_size`` when projecting, else ``hidden_size``)."""
        return self.proj_size or self.hidden_size

    @property
    def state_layers(self) -> int:
        """The first dimension of ``h_0``/``c_0``/``h_n``/``c_n``: ``D * num_layers``."""
        return self.directions * self.num_layers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """A config from a checkpoint's or a file's ``model_config``; keys it lacks keep the
        defaults (older checkpoints), a key it does not know is a ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"a model config is a mapping, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)
