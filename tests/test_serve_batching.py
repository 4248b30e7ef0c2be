"""Dynamic batching: concurrent requests merged into fewer runs, each answer the unbatched one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _serve_helpers import Server, cpu_runner, digits, stats, tiny_onnx

MODEL = "mnist"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("batching_model")
    return {"fixed": tiny_onnx(folder), "free": tiny_onnx(folder, with_state=True)}


@pytest.fixture(scope="module")
def runner(models: dict[str, Path]) -> Iterator[Any]:
    yield from cpu_runner(models["fixed"])


def _batcher(runner: Any, **options: Any) -> Any:
    from lstm_export.serve.batching import Batcher
    from lstm_export.serve.metrics import ModelStats

    return Batcher(runner, ModelStats(MODEL, "1"), **options)


async def _all(batcher: Any, inputs: list[np.ndarray]) -> list[Any]:
    """What each request got (:class:`Ran`: logits, queue and run nanoseconds)."""
    try:
        return list(await asyncio.gather(*(batcher.infer(x) for x in inputs)))
    finally:
        await batcher.close()


def _logits(batcher: Any, inputs: list[np.ndarray]) -> list[np.ndarray]:
    return [ran.result for ran in asyncio.run(_all(batcher, inputs))]


def _runs(batcher: Any) -> dict[int, int]:
    """Batch size -> model runs of that size."""
    return {size: runs.count for size, runs in batcher.stats.batches.items()}


def test_concurrent_requests_share_runs_and_keep_their_own_rows(runner: Any) -> None:
    x = digits(12, seed=4)
    batcher = _batcher(runner, max_batch_size=8, max_queue_delay_us=50_000)
    ran = asyncio.run(_all(batcher, [x[i : i + 1] for i in range(12)]))
    for i, got in enumerate(ran):
        np.testing.assert_allclose(got.result, runner.infer(x[i : i + 1]), rtol=1e-5, atol=1e-6)
        assert got.result.argmax() == runner.infer(x[i : i + 1]).argmax()
    assert batcher.stats.inference_count == 12
    assert batcher.stats.execution_count == 2  # 8 + 4: never more than max_batch_size
    assert _runs(batcher) == {8: 1, 4: 1}
    # each request of a run gets that run's time; the first waited longest for its batch
    assert len({got.infer_ns for got in ran[:8]}) == 1 and ran[0].infer_ns > 0
    assert ran[0].queue_ns >= ran[7].queue_ns >= 0


def test_requests_of_several_images_are_not_split(runner: Any) -> None:
    x = digits(9, seed=5)
    batcher = _batcher(runner, max_batch_size=6, max_queue_delay_us=50_000)
    parts = [x[0:4], x[4:7], x[7:9]]
    answers = _logits(batcher, parts)
    for part, answer in zip(parts, answers, strict=True):
        assert answer.shape == (len(part), 10)
        np.testing.assert_allclose(answer, runner.infer(part), rtol=1e-5, atol=1e-6)
    assert _runs(batcher) == {4: 1, 5: 1}  # 4+3 would pass 6: the 3 waits


def test_batching_off_runs_each_request_alone(runner: Any) -> None:
    x = digits(5, seed=6)
    batcher = _batcher(runner, max_batch_size=8, max_queue_delay_us=50_000, batching=False)
    asyncio.run(_all(batcher, [x[i : i + 1] for i in range(5)]))
    assert batcher.stats.execution_count == 5


def test_other_row_counts_wait_for_their_own_run(models: dict[str, Path]) -> None:
    """A model with a free time axis: a 7-row request never joins a 28-row batch."""
    from lstm_export.infer.registry import load_runner

    with load_runner(models["free"], device="cpu") as free:
        batcher = _batcher(free, max_batch_size=8, max_queue_delay_us=50_000)
        inputs = [digits(1, seed=7), digits(1, rows=7, seed=8), digits(1, seed=9)]
        answers = _logits(batcher, inputs)
        for x, answer in zip(inputs, answers, strict=True):
            np.testing.assert_allclose(answer, free.infer(x), rtol=1e-5, atol=1e-6)
        assert batcher.stats.execution_count == 3


def test_a_failed_run_fails_its_requests_only(runner: Any) -> None:
    """Rows the model refuses (a fixed 28-row file given 7) fail that run; the next one works."""
    from lstm_export.errors import InferenceError

    async def scenario() -> tuple[Any, np.ndarray]:
        batcher = _batcher(runner, max_batch_size=8, max_queue_delay_us=0)
        try:
            bad = await asyncio.gather(batcher.infer(digits(1, rows=7)), return_exceptions=True)
            return bad[0], (await batcher.infer(digits(1))).result
        finally:
            await batcher.close()

    error, good = asyncio.run(scenario())
    assert isinstance(error, InferenceError)
    np.testing.assert_allclose(good, runner.infer(digits(1)), rtol=1e-5, atol=1e-6)


def test_server_batches_concurrent_tritonclient_requests(
    models: dict[str, Path], runner: Any, tmp_path: Path
) -> None:
    """48 single-image binary requests, 16 at a time, through tritonclient's async API."""
    http = pytest.importorskip("tritonclient.http")
    args = [str(models["fixed"]), "--name", MODEL, "--max-batch-size", "16"]
    with Server([*args, "--max-queue-delay-us", "20000"], tmp_path / "serve.log") as server:
        client = http.InferenceServerClient(server.url, concurrency=16)
        x = digits(48, seed=10)
        pending = []
        for i in range(48):
            tensor = http.InferInput("pixels", [1, 28, 28], "FP32")
            tensor.set_data_from_numpy(x[i : i + 1])
            pending.append(client.async_infer(MODEL, [tensor]))
        answers = [p.get_result().as_numpy("logits") for p in pending]
        client.close()
        counts = stats(server.url, MODEL)
    for i, answer in enumerate(answers):
        expected = runner.infer(x[i : i + 1])
        np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-6)
        assert answer.argmax() == expected.argmax()
    assert counts["inference_count"] == 48
    assert counts["execution_count"] < counts["inference_count"]
    assert counts["inference_stats"]["success"]["count"] == 48
    assert counts["inference_stats"]["queue"]["ns"] > 0
    assert max(b["batch_size"] for b in counts["batch_stats"]) <= 16
