"""The model: an LSTM that reads a 28x28 digit row by row, and a linear head on the last step.

Shapes, with ``D`` = 2 if bidirectional else 1, ``L`` = num_layers, ``H`` = hidden_size and
``H_out`` = proj_size or hidden_size (see :class:`lstm_export.config.ModelConfig`):

* pixels ``x`` (N, T, input_size): one image row per step; any T >= 1 (28 for an MNIST digit);
* the LSTM's input: ``x`` itself with ``batch_first``, else ``x.transpose(0, 1)`` (T, N, F);
* ``h_0``/``h_n`` (D*L, N, H_out) and ``c_0``/``c_n`` (D*L, N, H); zeros are the default start;
* the LSTM's output (N, T, D*H_out) with ``batch_first``, else (T, N, D*H_out);
* logits (N, num_classes): the linear head on the output's last step.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lstm_export.config import ModelConfig
from lstm_export.errors import ConfigError

#: an optional LSTM state tensor (TorchScript needs ``Optional``, not ``X | None``)
State = Optional[torch.Tensor]  # noqa: UP045
#: ``(logits, h_n, c_n)``
Logits = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class LSTMClassifier(nn.Module):
    """``x`` (N, T, F=28) float32 in [0, 1] -> logits (N, num_classes), for any T >= 1."""

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
            bias=config.bias,
            batch_first=config.batch_first,
            bidirectional=config.bidirectional,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            proj_size=config.proj_size,
        )
        self.bidirectional: bool = config.bidirectional
        self.batch_first: bool = config.batch_first
        self.state_layers: int = config.state_layers
        self.output_size: int = config.output_size
        self.cell_size: int = config.hidden_size
        self.fc = nn.Linear(config.output_size * config.directions, config.num_classes)

    def _lstm_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = (x - self.input_mean) / self.input_std
        return x if self.batch_first else x.transpose(0, 1)

    def _last_step(self, out: torch.Tensor, h_n: torch.Tensor) -> torch.Tensor:
        # Unidirectional: h_n[-1] is the output's last step, read without slicing the sequence.
        # Bidirectional: forward state after the last row, backward state after one row.
        if not self.bidirectional:
            return h_n[-1]  # (N, H_out)
        return out[:, -1, :] if self.batch_first else out[-1]  # (N, 2 * H_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, (h_n, _) = self.lstm(self._lstm_input(x))
        return self.fc(self._last_step(out, h_n))  # (N, num_classes)

    def forward_with_state(self, x: torch.Tensor, h_0: State = None, c_0: State = None) -> Logits:
        """``(logits, h_n, c_n)`` after the rows ``x``, starting from ``(h_0, c_0)`` (None: zeros,
        :meth:`forward`'s answer); chunks fed one after another give the whole's answer."""
        if h_0 is None:
            h_0 = torch.zeros(
                self.state_layers, x.size(0), self.output_size, dtype=x.dtype, device=x.device
            )
        if c_0 is None:
            c_0 = torch.zeros(
                self.state_layers, x.size(0), self.cell_size, dtype=x.dtype, device=x.device
            )
        out, (h_n, c_n) = self.lstm(self._lstm_input(x), (h_0, c_0))
        return self.fc(self._last_step(out, h_n)), h_n, c_n


class StatefulClassifier(nn.Module):
    """The graph ``--with-state`` exports: ``(x, h_0, c_0) -> (logits, h_n, c_n)``, sharing
    ``model``'s parameters (TorchScript: ``h_0``, ``c_0`` may be left out, zeros)."""

    def __init__(self, model: LSTMClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, h_0: State = None, c_0: State = None) -> Logits:
        return self.model.forward_with_state(x, h_0, c_0)


def check_streamable(config: ModelConfig) -> None:
    """ConfigError unless a model of ``config`` can be fed a sequence in chunks (unidirectional)."""
    if config.bidirectional:
        raise ConfigError(
            "a stateful export feeds a sequence in chunks, which a bidirectional LSTM cannot do: "
            "its backward direction reads the rows from the last one, so a chunk's answer depends "
            "on rows not fed yet; export it with a dynamic sequence length (any length, fed at "
            "once) instead"
        )


def build_model(config: ModelConfig) -> LSTMClassifier:
    """A freshly initialised model for ``config``."""
    return LSTMClassifier(config)
