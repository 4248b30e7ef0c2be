"""Sequences: a stream sent in chunks with Triton's sequence parameters gets the whole answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _serve_helpers import Server, call, cpu_runner, digits, running, stats, tiny_onnx

MODEL = "stream"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _params(seq_id: int | str, start: bool = False, end: bool = False) -> Any:
    from lstm_export.serve.protocol import SequenceParams

    return SequenceParams(seq_id, start, end)


def _store(clock: Clock, timeout: float = 10.0, most: int = 2) -> Any:
    from lstm_export.serve.sequences import SequenceStore

    return SequenceStore(timeout, most, clock)


def _state(value: float) -> Any:
    from lstm_export.infer.base import LstmState

    return LstmState(np.full((1, 1, 4), value, np.float32), np.full((1, 1, 4), value, np.float32))


def test_store_keeps_state_until_the_end() -> None:
    store = _store(Clock())
    first = store.open(_params(1, start=True))
    assert first.state is None
    store.update(first, _state(1.0), end=False)
    assert store.open(_params(1)).state is first.state
    store.update(first, _state(2.0), end=True)
    assert len(store) == 0


def test_store_refuses_unknown_and_expired_sequences() -> None:
    from lstm_export.serve.protocol import RequestError

    clock = Clock()
    store = _store(clock, timeout=10.0)
    with pytest.raises(RequestError, match="unknown or expired") as unknown:
        store.open(_params(7))
    assert unknown.value.status == 400
    store.update(store.open(_params(7, start=True)), _state(1.0), end=False)
    clock.now += 9.0
    store.open(_params(7))  # used again: idle from now on
    clock.now += 10.5
    with pytest.raises(RequestError, match="unknown or expired"):
        store.open(_params(7))


def test_store_bounds_live_sequences_and_restarts_on_start() -> None:
    from lstm_export.serve.protocol import RequestError

    clock = Clock()
    store = _store(clock, timeout=10.0, most=2)
    for seq_id in (1, "two"):
        store.update(store.open(_params(seq_id, start=True)), _state(1.0), end=False)
    with pytest.raises(RequestError, match="2 sequences are live") as full:
        store.open(_params(3, start=True))
    assert full.value.status == 429
    assert store.open(_params(1, start=True)).state is None  # a start begins the sequence again
    clock.now += 11.0
    store.open(_params(3, start=True))  # the others expired and made room
    assert len(store) == 1


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("stream_model"), with_state=True)


@pytest.fixture(scope="module")
def server(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    args = [str(model_file), "--name", MODEL, "--max-sequences", "3", "--sequence-idle-s", "30"]
    yield from running(args, tmp_path_factory.mktemp("stream_log") / "serve.log")


@pytest.fixture(scope="module")
def runner(model_file: Path) -> Iterator[Any]:
    yield from cpu_runner(model_file)


def _infer(client: Any, x: np.ndarray, **sequence: Any) -> np.ndarray:
    import tritonclient.http as http

    tensor = http.InferInput("pixels", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return np.asarray(client.infer(MODEL, [tensor], **sequence).as_numpy("logits"))


def test_metadata_of_a_stateful_model(server: Server) -> None:
    http = pytest.importorskip("tritonclient.http")
    client = http.InferenceServerClient(server.url)
    meta = client.get_model_metadata(MODEL)
    assert meta["inputs"][0]["shape"] == [-1, -1, 28]  # any number of rows per chunk
    config = client.get_model_config(MODEL)
    assert config["sequence_batching"]["oldest"]["max_candidate_sequences"] == 3
    assert config["sequence_batching"]["max_sequence_idle_microseconds"] == 30_000_000


def test_interleaved_streams_in_chunks_get_the_whole_answers(server: Server, runner: Any) -> None:
    http = pytest.importorskip("tritonclient.http")
    client = http.InferenceServerClient(server.url)
    a, b = digits(1, seed=11), digits(2, seed=12)  # a sequence may hold several streams
    whole_a, whole_b = runner.infer(a), runner.infer(b)
    np.testing.assert_allclose(_infer(client, a), whole_a, rtol=1e-5, atol=1e-6)  # no sequence
    _infer(client, a[:, :7], sequence_id=41, sequence_start=True)
    _infer(client, b[:, :14], sequence_id="b-42", sequence_start=True)
    _infer(client, a[:, 7:21], sequence_id=41)
    last_a = _infer(client, a[:, 21:], sequence_id=41, sequence_end=True)
    last_b = _infer(client, b[:, 14:], sequence_id="b-42", sequence_end=True)
    np.testing.assert_allclose(last_a, whole_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(last_b, whole_b, rtol=1e-5, atol=1e-5)
    with pytest.raises(http.InferenceServerException, match="unknown or expired"):
        _infer(client, a[:, :7], sequence_id=41)  # ended: forgotten
    counted = stats(server.url, MODEL)["inference_stats"]
    phases = ("queue", "compute_input", "compute_infer", "compute_output")
    assert len({counted[p]["count"] for p in phases}) == 1  # each chunk once in each


def _post(server: Server, parameters: dict[str, Any], rows: int = 28) -> tuple[int, dict[str, Any]]:
    x = digits(1, rows=rows)
    body = {
        "parameters": parameters,
        "inputs": [
            {
                "name": "pixels",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ],
    }
    status, _, answer = call(
        f"http://{server.url}/v2/models/{MODEL}/infer", json.dumps(body).encode()
    )
    return status, json.loads(answer)


@pytest.mark.parametrize(
    ("parameters", "status", "words"),
    [
        ({"sequence_id": 999}, 400, "unknown or expired"),
        ({"sequence_id": "never-started", "sequence_end": True}, 400, "unknown or expired"),
        ({"sequence_start": True}, 400, "needs a sequence_id"),
        ({"sequence_id": 1.5, "sequence_start": True}, 400, "whole number or a string"),
        ({"sequence_id": 5, "sequence_start": "yes"}, 400, "true or false"),
        ({"sequence_id": "x" * 200, "sequence_start": True}, 400, "longer than"),
    ],
)
def test_bad_sequence_requests_are_4xx(
    server: Server, parameters: dict[str, Any], status: int, words: str
) -> None:
    got, answer = _post(server, parameters)
    assert got == status and words in answer["error"], answer
    assert _post(server, {})[0] == 200


def test_live_sequences_are_bounded(server: Server) -> None:
    ids = [f"bound-{i}" for i in range(3)]
    for seq_id in ids:
        assert _post(server, {"sequence_id": seq_id, "sequence_start": True}, rows=4)[0] == 200
    status, answer = _post(server, {"sequence_id": "bound-x", "sequence_start": True})
    assert status == 429 and "3 sequences are live" in answer["error"]
    for seq_id in ids:
        assert _post(server, {"sequence_id": seq_id, "sequence_end": True}, rows=4)[0] == 200
    assert (
        _post(server, {"sequence_id": "bound-x", "sequence_start": True, "sequence_end": True})[0]
        == 200
    )


def test_a_chunk_that_does_not_fit_the_state_leaves_it(server: Server, runner: Any) -> None:
    """A chunk of another batch size than the sequence's state is a 400; the sequence goes on."""
    http = pytest.importorskip("tritonclient.http")
    client = http.InferenceServerClient(server.url)
    x = digits(1, seed=13)
    _infer(client, x[:, :10], sequence_id=77, sequence_start=True)
    with pytest.raises(http.InferenceServerException, match=r"\[400\]"):
        _infer(client, digits(2, rows=5), sequence_id=77)
    last = _infer(client, x[:, 10:], sequence_id=77, sequence_end=True)
    np.testing.assert_allclose(last, runner.infer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_idle_sequences_expire(model_file: Path, tmp_path: Path) -> None:
    import time

    args = [str(model_file), "--name", MODEL, "--sequence-idle-s", "0.5"]
    with Server(args, tmp_path / "serve.log") as server:
        assert _post(server, {"sequence_id": 1, "sequence_start": True}, rows=4)[0] == 200
        time.sleep(1.0)
        status, answer = _post(server, {"sequence_id": 1}, rows=4)
    assert status == 400 and "unknown or expired" in answer["error"]
