"""The model: an LSTM that reads a 28x28 digit row by row, and a linear head on the last step."""

from __future__ import annotations

import torch
from torch import nn

from lstm_export.config import ModelConfig


class LSTMClassifier(nn.Module):
    """``x`` (N, T=28, F=28) float32 in [0, 1] -> logits (N, num_classes)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # Plain attributes (not the dataclass) so the module can be scripted by TorchScript.
        self.normalize: bool = config.input_mean != 0.0 or config.input_std != 1.0
        self.input_mean: float = config.input_mean
        self.input_std: float = config.input_std
        self.lstm = nn.LSTM(
            config.input_size,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.bidirectional: bool = config.bidirectional
        directions = 2 if config.bidirectional else 1
        self.fc = nn.Linear(config.hidden_size * directions, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = (x - self.input_mean) / self.input_std
        out, (h_n, _) = self.lstm(x)  # out (N, T, H * directions), h_n (layers * directions, N, H)
        # Unidirectional: h_n[-1] holds the same numbers as out[:, -1, :], and exported it reads
        # the LSTM's final-state output directly instead of reshaping and slicing the sequence.
        # Bidirectional: forward state after the last row, backward state after one row.
        last = out[:, -1, :] if self.bidirectional else h_n[-1]  # (N, H * directions)
        return self.fc(last)  # (N, num_classes)


def build_model(config: ModelConfig) -> LSTMClassifier:
    """A freshly initialised model for ``config``."""
    return LSTMClassifier(config)
