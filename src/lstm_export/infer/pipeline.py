"""Decode image files in parallel with batched inference, sharing the cores between the two:
:func:`plan_run` chooses how many of each, :func:`pipelined` runs them, results in order."""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_export.devices import usable_cores
from lstm_export.errors import InputError
from lstm_export.infer.images import Invert, decode_files

log = logging.getLogger(__name__)

#: images per inference call on the CPU (about the fastest for one ORT thread) and on CUDA
CPU_BATCH_SIZE = 64
CUDA_BATCH_SIZE = 512
#: most decode processes chosen automatically
MAX_AUTO_WORKERS = 8
#: most images per batch (a batch is decoded and held whole: 3 KiB per image as model input)
MAX_BATCH_SIZE = 8192

#: ``(uint8 digits (B, 28, 28), per-file error or None)``
Decoded = tuple[np.ndarray, list[str | None]]


@dataclass(frozen=True)
class Plan:
    """How a run shares the cores. ``workers``: 0 decodes in the calling thread, 1 in one
    background thread, more in that many processes; ``threads``: the model's intra-op threads;
    ``streams``: inference threads."""

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
    """Choose decode workers, inference threads and streams that do not fight over ``cores``
    (default: the cores this process may use; docs/design.md says why).

    Automatically: decode in one thread on up to 3 cores, else in processes (about 2 in 5 cores,
    or with ``fit`` all cores but one; at most 8); inference threads: the cores decoding leaves (1
    on CUDA); a second, low-priority stream where inference runs on 1 thread beside the decoder.
    Knobs beyond ``cores`` (a batch beyond :data:`MAX_BATCH_SIZE`) are capped, with a warning."""
    cores = cores or usable_cores()

    def capped(what: str, value: int | None, low: int, top: int) -> int | None:
        if value is not None and value < low:
            raise InputError(f"{what} must be >= {low}, got {value}")
        if value is None or value <= top:
            return value
        usable = " (the usable cores)" if top == cores else ""
        log.warning("%s %s capped at %s%s", f"{value:,}", what, f"{top:,}", usable)
        return top

    batch_size = capped("images per batch", batch_size, 1, MAX_BATCH_SIZE)
    workers = capped("decode workers", workers, 0, cores)
    threads = capped("inference threads", threads, 1, cores)
    streams = capped("inference streams", streams, 1, cores)
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
    threads = threads or (1 if cuda else max(1, cores - min(workers, cores - 1)))
    streams = streams or (2 if not cuda and workers >= 1 and threads == 1 and cores >= 2 else 1)
    batch_size = batch_size or (CUDA_BATCH_SIZE if cuda else CPU_BATCH_SIZE)
    return Plan(workers, threads, batch_size, streams)


def decoded_batches(
    paths: Sequence[str], plan: Plan, *, invert: Invert | str = Invert.auto, fit: bool = False
) -> Generator[Decoded, None, None]:
    """:data:`Decoded` batches of ``plan.batch_size``, in order: decoded in the calling thread, or
    with ``plan.workers >= 2`` by that many processes a few batches ahead."""
    mode = Invert(invert).value
    chunks = [list(paths[i : i + plan.batch_size]) for i in range(0, len(paths), plan.batch_size)]
    if plan.workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield decode_files(chunk, mode, fit)
        return
    # forkserver: safe with the model's threads already running; spawn where there is no fork.
    # The workers ignore Ctrl-C (SIGINT): this run handles it and shuts them down.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    ignore_sigint = (signal.SIGINT, signal.SIG_IGN)
    pool = ProcessPoolExecutor(plan.workers, context, signal.signal, ignore_sigint)
    pending: collections.deque[Future[Decoded]] = collections.deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(decode_files, chunk, mode, fit))
            if len(pending) >= 2 * plan.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool as exc:
        raise InputError(
            "a decode worker process died (out of memory, killed, or started from a script"
            " without an `if __name__ == '__main__':` guard); one decode worker decodes in a"
            " thread instead"
        ) from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def pipelined(
    paths: Sequence[str],
    plan: Plan,
    infer: Callable[[np.ndarray, list[str | None]], Any],
    *,
    invert: Invert | str = Invert.auto,
    fit: bool = False,
) -> Generator[tuple[list[str | None], Any], None, None]:
    """Decode ``paths`` and run ``infer(digits, errors)`` on each batch, overlapping the two.

    ``infer`` gets uint8 digits ``(B, 28, 28)`` and the per-file errors of one batch, possibly in
    several threads at once. Yields ``(errors, infer's result)`` per batch, in order; closing the
    generator stops every thread it started. One thread decodes into a short queue that
    ``plan.streams`` threads infer from; those after the first, at the lowest priority, take only
    a surplus (the queue nearly full, or decoding ended), so they never slow the decoder."""
    batches = decoded_batches(paths, plan, invert=invert, fit=fit)
    n_batches = -(-len(paths) // plan.batch_size)
    if plan.workers == 0 or n_batches <= 1:
        for digits, errors in batches:
            yield errors, infer(digits, errors)
        return
    cond = threading.Condition()
    capacity = plan.streams + 2
    todo: collections.deque[tuple[int, Decoded]] = collections.deque()
    done: dict[int, tuple[list[str | None], Any]] = {}
    failures: list[BaseException] = []
    ended = {"decoding": False, "run": False}

    def recorded(work: Callable[..., None], *args: Any) -> None:
        """``work(*args)``, its failure kept for the caller, who raises it in order."""
        try:
            work(*args)
        except BaseException as exc:
            with cond:
                failures.append(exc)
                cond.notify_all()

    def produce() -> None:
        try:
            for item in enumerate(batches):
                with cond:
                    cond.wait_for(lambda: len(todo) < capacity or ended["run"])
                    if ended["run"]:
                        return
                    todo.append(item)
                    cond.notify_all()
        finally:
            batches.close()
            with cond:
                ended["decoding"] = True
                cond.notify_all()

    def consume(surplus: bool) -> None:
        need = capacity - 1 if surplus else 1
        if surplus and sys.platform.startswith("linux"):  # nice 19: only otherwise idle cores
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while True:
            with cond:
                cond.wait_for(lambda: ended["run"] or ended["decoding"] or len(todo) >= need)
                if ended["run"] or not todo:
                    return
                index, (digits, errors) = todo.popleft()
                cond.notify_all()
            result = (errors, infer(digits, errors))
            with cond:
                done[index] = result
                cond.notify_all()

    jobs = [(produce,), *((consume, s > 0) for s in range(plan.streams))]
    threads = [threading.Thread(target=recorded, args=job, daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    try:
        for index in range(n_batches):
            with cond:
                while index not in done and not failures:
                    cond.wait()
                if index not in done:
                    raise failures[0]
                result = done.pop(index)
            yield result
    finally:
        with cond:
            ended["run"] = True
            cond.notify_all()
        for thread in threads:
            thread.join()
