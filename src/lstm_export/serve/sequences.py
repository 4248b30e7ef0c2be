"""LSTM state carried across requests, per sequence, as Triton's sequence batcher does.

A model exported with ``--with-state`` takes its state as input and returns the next one. A
client sends a stream in chunks with Triton's sequence parameters: the first request with
``sequence_start`` and a ``sequence_id``, the next ones with the same id, the last one with
``sequence_end``. The store keeps each live sequence's :class:`LstmState` between requests,
so the answer to the last chunk is that of the whole stream sent at once. A sequence idle for
longer than ``idle_timeout_s`` is dropped; at most ``max_sequences`` are live (a start beyond
that is refused until one ends or expires), so the state held is bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lstm_export.infer.base import LstmState
from lstm_export.serve.protocol import RequestError, SequenceParams


@dataclass
class Sequence:
    """One live sequence: its state after the last chunk (None before the first)."""

    id: int | str
    state: LstmState | None = None
    last_used: float = 0.0
    #: held while a chunk runs: the chunks of one sequence run one after the other
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SequenceStore:
    """The live sequences of one model."""

    def __init__(
        self,
        idle_timeout_s: float,
        max_sequences: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.max_sequences = max_sequences
        self.clock = clock
        self._live: dict[int | str, Sequence] = {}

    def __len__(self) -> int:
        return len(self._live)

    def expire(self) -> int:
        """Drop sequences idle for longer than the timeout (not one a chunk is running on)."""
        limit = self.clock() - self.idle_timeout_s
        old = [k for k, s in self._live.items() if s.last_used < limit and not s.lock.locked()]
        for key in old:
            del self._live[key]
        return len(old)

    def open(self, params: SequenceParams) -> Sequence:
        """The sequence a request belongs to: a new one on ``sequence_start`` (a live one of
        the same id starts over), else the live one; RequestError for an unknown or expired id
        or when ``max_sequences`` are live."""
        self.expire()
        now = self.clock()
        if params.start:
            if params.id not in self._live and len(self._live) >= self.max_sequences:
                raise RequestError(
                    f"{len(self._live)} sequences are live, the most this server keeps: end "
                    "one (sequence_end) or let it expire before starting another",
                    429,
                )
            sequence = self._live.get(params.id) or Sequence(params.id)
            sequence.state = None
            self._live[params.id] = sequence
        else:
            found = self._live.get(params.id)
            if found is None:
                raise RequestError(
                    f"sequence {params.id!r} is unknown or expired (idle for more than "
                    f"{self.idle_timeout_s:g} s): start it with sequence_start"
                )
            sequence = found
        sequence.last_used = now
        return sequence

    def update(self, sequence: Sequence, state: LstmState, end: bool) -> None:
        """Keep ``state`` for the next chunk, or forget the sequence at its end."""
        sequence.state = state
        sequence.last_used = self.clock()
        if end:
            self.close(sequence.id)

    def close(self, seq_id: int | str) -> None:
        self._live.pop(seq_id, None)
