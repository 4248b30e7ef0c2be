"""Decode image files in parallel with batched inference, and share the cores between the two.

One producer decodes batches of files in order (in its own thread, or feeding from decode
processes); ``plan.streams`` inference threads take decoded batches as they come and run the
model; the caller gets the results back in order. Python decoding holds the GIL while the
inference backends release it, so one decode thread overlaps well with inference. On a small
machine the decode thread leaves part of a core idle when inference is the slower stage: a
second, low-priority inference stream (Linux: per-thread nice 19) that only takes batches the
first cannot keep up with soaks that up.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_export.errors import InputError
from lstm_export.infer.images import Invert, decode_files

#: images per inference call on the CPU (about the fastest for one ORT thread) and on CUDA
CPU_BATCH_SIZE = 64
CUDA_BATCH_SIZE = 512
#: most decode processes chosen automatically
MAX_AUTO_WORKERS = 8

#: ``(uint8 digits (B, 28, 28), per-file error or None)``
Decoded = tuple[np.ndarray, list[str | None]]


@dataclass(frozen=True)
class Plan:
    """How a run shares the cores.

    ``workers``: 0 decodes in the calling thread (no overlap), 1 in one background thread,
    2 or more in that many processes. ``threads``: intra-op threads of the model.
    ``streams``: inference threads; the ones after the first run at the lowest priority.
    """

    workers: int
    threads: int
    batch_size: int = CPU_BATCH_SIZE
    streams: int = 1

    def describe(self) -> str:
        decode = {0: "inline", 1: "1 thread"}.get(self.workers, f"{self.workers} processes")
        extra = f" + {self.streams - 1} low-priority" if self.streams > 1 else ""
        return (
            f"decode {decode}, inference {self.threads} thread(s){extra}, batch {self.batch_size}"
        )


def usable_cores() -> int:
    """Cores this process may run on (affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def plan_run(
    *,
    workers: int | None = None,
    threads: int | None = None,
    batch_size: int | None = None,
    streams: int | None = None,
    fit: bool = False,
    device: str = "cpu",
    cores: int | None = None,
) -> Plan:
    """Choose decode workers, inference threads and streams that do not fight over ``cores``.

    Measured on 2 cores: a 28x28 PNG decodes in about 40 us (mostly with the GIL held), the
    fp32 ONNX model infers in about 60 us per image on one thread (33 us on two), and ORT
    threads slow down badly when a decoder preempts one of them in the middle of an LSTM step.
    So, automatically:

    - decode: one thread on up to 3 cores (a second thread only adds GIL contention); decode
      processes on 4+ cores (about 2 in 5 cores), or with ``fit`` (5 to 8 times dearer) on 2+
      cores (all cores but one); at most 8;
    - inference threads: the cores decoding leaves (at least 1); 1 on CUDA;
    - streams: a second, low-priority stream where inference runs on 1 thread beside the
      decoder (it takes only the decoder's idle time); 1 on CUDA;
    - batch: 64 on the CPU, 512 on CUDA.
    """
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise InputError(f"workers must be >= 0, got {workers}")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    if streams is not None and streams < 1:
        raise InputError(f"streams must be >= 1, got {streams}")
    cores = cores or usable_cores()
    cuda = device == "cuda"
    if workers is None:
        if cuda:
            workers = 1 if cores <= 2 else min(MAX_AUTO_WORKERS, cores - 1)
        elif fit and cores >= 2:
            workers = max(2, min(MAX_AUTO_WORKERS, cores - 1))
        elif cores >= 4:
            workers = max(2, min(MAX_AUTO_WORKERS, round(cores * 2 / 5)))
        else:
            workers = 1
    if threads is None:
        busy = 0 if workers == 0 else (1 if workers == 1 else min(workers, cores - 1))
        threads = 1 if cuda else max(1, cores - busy)
    if streams is None:
        streams = 2 if not cuda and workers >= 1 and threads == 1 and cores >= 2 else 1
    if batch_size is None:
        batch_size = CUDA_BATCH_SIZE if cuda else CPU_BATCH_SIZE
    return Plan(workers=workers, threads=threads, batch_size=batch_size, streams=streams)


def runner_options(plan: Plan, backend: str = "onnxruntime") -> dict[str, Any]:
    """Options of the ``backend`` runner for a plan: ``threads``, and no spinning where the
    backend has that option (spinning threads would steal the decoder's core while they wait)."""
    import dataclasses

    from lstm_export.infer.registry import RUNNERS

    known = {f.name for f in dataclasses.fields(RUNNERS[backend].Options)}
    wanted = {"threads": plan.threads, "spinning": False}
    return {k: v for k, v in wanted.items() if k in known}


# -- decoding --------------------------------------------------------------------------------------
def _decode_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` decode processes."""
    methods = multiprocessing.get_all_start_methods()
    # forkserver: safe with the model's threads already running; spawn where there is no fork.
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    return ProcessPoolExecutor(workers, mp_context=context)


def chunked(paths: Sequence[str], size: int) -> list[list[str]]:
    """``paths`` cut into consecutive batches of ``size`` (the last may be shorter)."""
    return [list(paths[i : i + size]) for i in range(0, len(paths), size)]


def decoded_batches(
    paths: Sequence[str], plan: Plan, *, invert: Invert | str = Invert.auto, fit: bool = False
) -> Generator[Decoded, None, None]:
    """Decode ``paths`` batch by batch, in order.

    With ``plan.workers <= 1`` the batches are decoded in the calling thread as they are asked
    for; with more, that many processes work a few batches ahead. Yields
    ``(uint8 digits (B, 28, 28), per-file error or None)`` per batch of ``plan.batch_size``.
    """
    mode = Invert(invert).value
    chunks = chunked(paths, plan.batch_size)
    if plan.workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield decode_files(chunk, mode, fit)
        return
    pool = _decode_pool(plan.workers)
    pending: collections.deque[Future[Decoded]] = collections.deque()
    todo = iter(chunks)
    try:
        for chunk in todo:
            pending.append(pool.submit(decode_files, chunk, mode, fit))
            if len(pending) >= 2 * plan.workers:
                break
        while pending:
            try:
                result = pending.popleft().result()
            except BrokenProcessPool as exc:
                raise InputError(
                    "a decode worker process died (out of memory, killed, or started from a"
                    " script without an `if __name__ == '__main__':` guard); one decode worker"
                    " decodes in a thread instead"
                ) from exc
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(decode_files, nxt, mode, fit))
            yield result
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


# -- decoding and inference together ---------------------------------------------------------------
def lower_thread_priority() -> None:
    """Make the calling thread run only on otherwise idle cores (Linux: nice 19, this thread)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class WorkQueue:
    """Decoded batches waiting for inference, bounded; closing it wakes every waiter.

    Low-priority streams take only a surplus (:meth:`get` with ``surplus=True``): when decoding
    is the slower stage the queue stays short and they stay out of the decoder's way (measured:
    a second stream that always takes work slows the decoder by 15-20 %); when inference is the
    slower stage the queue fills and they run on the decoder's idle time.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: collections.deque[tuple[int, Decoded]] = collections.deque()
        self.finished = False  # no more batches will come
        self.closed = False  # stop now
        self.cond = threading.Condition()

    def put(self, item: tuple[int, Decoded]) -> bool:
        """Wait for room and add ``item``; False when the queue was closed meanwhile."""
        with self.cond:
            while len(self.items) >= self.capacity and not self.closed:
                self.cond.wait()
            if self.closed:
                return False
            self.items.append(item)
            self.cond.notify_all()
            return True

    def get(self, surplus: bool = False) -> tuple[int, Decoded] | None:
        """The oldest batch, waiting for one; None once decoding ended (or the queue closed).

        ``surplus``: only take a batch when the queue is nearly full (decoding is ahead of
        inference) or decoding has ended.
        """
        with self.cond:
            while not self.closed:
                enough = len(self.items) >= self.capacity - 1 or self.finished
                if self.items and (enough or not surplus):
                    item = self.items.popleft()
                    self.cond.notify_all()
                    return item
                if self.finished:
                    return None
                self.cond.wait()
            return None

    def finish(self) -> None:
        with self.cond:
            self.finished = True
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def pipelined(
    paths: Sequence[str],
    plan: Plan,
    infer: Callable[[np.ndarray, list[str | None]], Any],
    *,
    invert: Invert | str = Invert.auto,
    fit: bool = False,
) -> Generator[tuple[list[str | None], Any], None, None]:
    """Decode ``paths`` and run ``infer(digits, errors)`` on each batch, overlapping the two.

    ``infer`` gets uint8 digits ``(B, 28, 28)`` and the per-file errors of one batch and may run
    in several threads at once. Yields ``(errors, infer's result)`` per batch, in order. Closing
    the generator early stops every thread it started.
    """
    n_batches = -(-len(paths) // plan.batch_size)
    if plan.workers == 0 or n_batches <= 1:
        for digits, errors in decoded_batches(paths, plan, invert=invert, fit=fit):
            yield errors, infer(digits, errors)
        return

    work = WorkQueue(capacity=plan.streams + 2)
    results: dict[int, tuple[list[str | None], Any]] = {}
    failures: list[BaseException] = []
    changed = threading.Condition()

    def fail(exc: BaseException) -> None:
        with changed:
            failures.append(exc)
            changed.notify_all()

    def produce() -> None:
        batches = decoded_batches(paths, plan, invert=invert, fit=fit)
        try:
            for index, batch in enumerate(batches):
                if not work.put((index, batch)):
                    return
        except BaseException as exc:
            fail(exc)
        finally:
            batches.close()
            work.finish()

    def consume(stream: int) -> None:
        if stream > 0:
            lower_thread_priority()
        while (item := work.get(surplus=stream > 0)) is not None:
            index, (digits, errors) = item
            try:
                out = infer(digits, errors)
            except BaseException as exc:
                fail(exc)
                return
            with changed:
                results[index] = (errors, out)
                changed.notify_all()

    threads = [threading.Thread(target=produce, name="lstm-export-decode", daemon=True)]
    threads += [
        threading.Thread(target=consume, args=(s,), name=f"lstm-export-infer-{s}", daemon=True)
        for s in range(plan.streams)
    ]
    for thread in threads:
        thread.start()
    try:
        for index in range(n_batches):
            with changed:
                while index not in results and not failures:
                    changed.wait()
                if index not in results:
                    raise failures[0]
                result = results.pop(index)
            yield result
    finally:
        work.close()
        for thread in threads:
            thread.join()
