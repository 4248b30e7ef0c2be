"""Dynamic batching: concurrent requests to one model merged into one run, as Triton does.

One asyncio queue per model and one worker thread that owns the runner. The batching loop
takes the oldest request, then adds queued requests of the same row count until the batch
holds ``max_batch_size`` images or ``max_queue_delay_us`` has passed since the oldest arrived,
runs the runner once on the stacked images and hands each request its own rows of the logits.
Each answer equals the unbatched one: rows of an LSTM batch never mix. Requests of another row
count (a model with a free time axis) wait for the next run. With batching off, each request
runs alone. Everything else that runs the model (a sequence's step) goes through
:meth:`Batcher.call`, on the same thread, so the runner is never used by two threads at once.
The batcher counts model runs in the statistics; each request's times come back with its
answer (:class:`Ran`), for the server to count when it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_export.infer.base import Runner
from lstm_export.serve.metrics import ModelStats


@dataclass(frozen=True)
class Ran:
    """What a request got: its ``result`` (logits (N, C), or what a call returned), the
    nanoseconds it waited for its run (``queue_ns``) and those of the run (``infer_ns``)."""

    result: Any
    queue_ns: int
    infer_ns: int


@dataclass
class _Pending:
    """A queued request: its images (N, T, 28), the future of its :class:`Ran`, its arrival."""

    x: np.ndarray
    future: asyncio.Future[Ran]
    arrived_ns: int

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


class Batcher:
    """Run ``runner`` for the requests of one model, merging them when ``batching`` is on."""

    def __init__(
        self,
        runner: Runner,
        stats: ModelStats,
        *,
        max_batch_size: int,
        max_queue_delay_us: int,
        batching: bool = True,
    ) -> None:
        self.runner = runner
        self.stats = stats
        self.max_batch_size = max(1, max_batch_size)
        self.delay_s = max(0, max_queue_delay_us) / 1e6
        self.batching = batching
        self._queue: asyncio.Queue[_Pending] | None = None
        self._held: _Pending | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    def _start(self) -> asyncio.Queue[_Pending]:
        """Start the worker thread and the batching loop on the running event loop (once)."""
        if self._queue is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"model-{self.stats.name}")
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._loop())
        return self._queue

    async def infer(self, x: np.ndarray) -> Ran:
        """Logits (N, C) of ``x`` (N, T, 28), computed in a batch with other requests."""
        queue = self._start()
        future: asyncio.Future[Ran] = asyncio.get_running_loop().create_future()
        queue.put_nowait(_Pending(x, future, time.perf_counter_ns()))
        return await future

    async def call(self, fn: Callable[..., Any], *args: Any) -> Ran:
        """``fn(*args)`` on the model's thread, counted as one run of ``args[0]``'s rows."""
        self._start()
        started = time.perf_counter_ns()
        result = await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        ns = time.perf_counter_ns() - started
        self.stats.execution(int(args[0].shape[0]), ns)
        return Ran(result, 0, ns)

    async def _next_batch(self, queue: asyncio.Queue[_Pending]) -> list[_Pending]:
        """The oldest request and those that join it (same row count, within size and delay)."""
        first = self._held or await queue.get()
        self._held = None
        batch, rows = [first], first.rows
        if not self.batching:
            return batch
        deadline = first.arrived_ns / 1e9 + self.delay_s
        while rows < self.max_batch_size:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                wait = deadline - time.perf_counter_ns() / 1e9
                if wait <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), wait)
                except asyncio.TimeoutError:
                    break
            if rows + item.rows > self.max_batch_size or item.x.shape[1:] != first.x.shape[1:]:
                self._held = item
                break
            batch.append(item)
            rows += item.rows
        return batch

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch(self._queue)
            x = batch[0].x if len(batch) == 1 else np.concatenate([p.x for p in batch])
            started = time.perf_counter_ns()
            try:
                logits = await loop.run_in_executor(self._executor, self.runner.infer, x)
            except Exception as exc:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            ns = time.perf_counter_ns() - started
            self.stats.execution(int(x.shape[0]), ns)
            start = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result(
                        Ran(logits[start : start + p.rows], started - p.arrived_ns, ns)
                    )
                start += p.rows

    async def close(self) -> None:
        """Stop the loop and the worker thread (after the last request was answered).

        The loop may run on another event loop than the caller's (Ray Serve runs a replica's
        requests and its shutdown on loops of their own): it is then cancelled there.
        """
        task, executor = self._task, self._executor
        self._queue = self._task = self._executor = None
        if task is not None:
            if task.get_loop() is asyncio.get_running_loop():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            else:
                task.get_loop().call_soon_threadsafe(task.cancel)
        if executor is not None:
            executor.shutdown(wait=True)
