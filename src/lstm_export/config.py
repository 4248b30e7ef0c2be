"""Architecture of the model, as a plain dataclass (no torch import, so the CLI stays fast)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from lstm_export.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`LSTMClassifier`. The seed model is the default.

    ``input_size``, ``hidden_size``, ``num_layers``, ``bias``, ``batch_first``, ``dropout``,
    ``bidirectional`` and ``proj_size`` are ``nn.LSTM``'s arguments of the same names. Whatever
    ``batch_first`` says, the model takes pixels ``(N, T, input_size)``: with ``batch_first=False``
    it hands the LSTM ``(T, N, input_size)`` (the layout ONNX's LSTM op uses). ``dropout`` acts
    between layers in training only (it needs ``num_layers > 1``). ``proj_size > 0`` projects the
    hidden state to that size (``h`` is ``proj_size`` wide, ``c`` stays ``hidden_size``); ONNX
    has no such LSTM, so such a model exports to TorchScript only.

    Checkpoints written before ``bias``, ``batch_first`` and ``proj_size`` existed load with
    these defaults, which are the architecture they were trained with.
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
        for name in ("input_size", "hidden_size", "num_layers", "num_classes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.input_std <= 0:
            raise ConfigError(f"input_std must be > 0, got {self.input_std}")
        if not 0 <= self.proj_size < self.hidden_size:
            raise ConfigError(
                f"proj_size must be 0 (no projection) or in 1..hidden_size-1 "
                f"({self.hidden_size - 1}), got {self.proj_size}"
            )

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
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)
