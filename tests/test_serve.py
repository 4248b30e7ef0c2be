"""`lstm-export serve` driven by Triton's own HTTP client (tritonclient) and by raw HTTP.

One server (a tiny ONNX model, batches of at most 8, bodies of at most 0.5 MiB) answers the
metadata, config, statistics, inference and error tests; a second one is stopped with SIGTERM
while a request is in flight.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _serve_helpers import Server, call, cpu_runner, digits, running, stats, tiny_onnx

tritonclient_http = pytest.importorskip("tritonclient.http")
MODEL = "mnist"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("serve_model"))


@pytest.fixture(scope="module")
def server(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    args = [str(model_file), "--name", MODEL, "--max-batch-size", "8", "--max-body-mb", "0.5"]
    yield from running(args, tmp_path_factory.mktemp("serve_log") / "serve.log")


@pytest.fixture(scope="module")
def runner(model_file: Path) -> Iterator[Any]:
    yield from cpu_runner(model_file)


@pytest.fixture
def client(server: Server) -> Any:
    return tritonclient_http.InferenceServerClient(server.url)


def _input(x: np.ndarray, binary: bool = True) -> Any:
    tensor = tritonclient_http.InferInput("pixels", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def test_server_and_model_metadata(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "lstm-export"
    assert {"binary_tensor_data", "classification", "statistics"} <= set(server["extensions"])
    assert {"model_configuration", "sequence"} <= set(server["extensions"])
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 28, 28]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get_model_metadata(MODEL, "1")["versions"] == ["1"]
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready(MODEL, "2")
    assert not client.is_model_ready("other")


def test_model_config_is_tritons_json(client: Any) -> None:
    config = client.get_model_config(MODEL)
    assert config["name"] == MODEL
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 8
    assert config["input"] == [{"name": "pixels", "data_type": "TYPE_FP32", "dims": [28, 28]}]
    assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] >= 0
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert "sequence_batching" not in config  # a stateless file


def test_binary_and_json_inference_give_the_runners_logits(client: Any, runner: Any) -> None:
    x = digits(5, seed=1)
    expected = runner.infer(x)
    binary = client.infer(MODEL, [_input(x)])  # tritonclient's default: binary both ways
    assert binary.get_response()["model_name"] == MODEL
    np.testing.assert_array_equal(binary.as_numpy("logits"), expected)
    as_json = client.infer(
        MODEL,
        [_input(x, binary=False)],
        outputs=[tritonclient_http.InferRequestedOutput("logits", binary_data=False)],
        request_id="r-1",
    )
    assert as_json.get_response()["id"] == "r-1"
    assert "data" in as_json.get_response()["outputs"][0]
    np.testing.assert_allclose(as_json.as_numpy("logits"), expected, rtol=1e-6, atol=1e-7)
    versioned = client.infer(MODEL, [_input(x)], model_version="1")
    np.testing.assert_array_equal(versioned.as_numpy("logits"), expected)


@pytest.mark.parametrize("binary", [True, False])
def test_classification_extension(client: Any, runner: Any, binary: bool) -> None:
    from lstm_export.infer.rows import class_names_of

    x = digits(3, seed=2)
    logits = runner.infer(x)
    names = class_names_of(runner)
    wanted = tritonclient_http.InferRequestedOutput("logits", binary_data=binary, class_count=3)
    top = client.infer(MODEL, [_input(x)], outputs=[wanted]).as_numpy("logits")
    assert top.shape == (3, 3)
    for row, entries in zip(logits, top, strict=True):
        # BYTES come back as bytes from binary data, as str from JSON (as from Triton)
        parsed = [(e.decode() if isinstance(e, bytes) else e).split(":") for e in entries]
        order = np.argsort(-row, kind="stable")[:3]
        assert [int(p[1]) for p in parsed] == order.tolist()
        assert [p[2] for p in parsed] == [names[i] for i in order]
        np.testing.assert_allclose([float(p[0]) for p in parsed], row[order], atol=1e-6)


def test_statistics_and_prometheus_count_requests(client: Any, server: Server) -> None:
    before = stats(server.url, MODEL)
    for _ in range(3):
        client.infer(MODEL, [_input(digits(2))])
    after = client.get_inference_statistics(MODEL)["model_stats"][0]
    assert after["name"] == MODEL and after["version"] == "1"
    assert after["inference_count"] - before["inference_count"] == 6
    assert after["execution_count"] - before["execution_count"] == 3
    success = after["inference_stats"]["success"]
    assert success["count"] - before["inference_stats"]["success"]["count"] == 3
    assert success["ns"] > before["inference_stats"]["success"]["ns"]
    # as Triton: each request counted once in queue and each compute phase (perf_analyzer's check)
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        now, then = after["inference_stats"][phase], before["inference_stats"][phase]
        assert (now["count"] - then["count"], now["ns"] > then["ns"]) == (3, True), phase
    everything = client.get_inference_statistics()["model_stats"]
    assert [s["name"] for s in everything] == [MODEL]
    status, headers, body = call(f"http://{server.url}/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    found = re.search(
        rf'^nv_inference_count{{model="{MODEL}",version="1"}} (\d+)$', body.decode(), re.M
    )
    assert found and int(found.group(1)) >= after["inference_count"]
    assert "# TYPE nv_inference_exec_count counter" in body.decode()


def _json(shape: list[int], data: Any = None, **extra: Any) -> bytes:
    count = int(np.prod(shape))
    tensor = {"name": "pixels", "shape": shape, "datatype": "FP32"}
    tensor["data"] = [0.5] * count if data is None else data
    tensor.update(extra)
    return json.dumps({"inputs": [tensor]}).encode()


def _binary(
    json_part: dict[str, Any], raw: bytes, length: str | None = None
) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(json_part).encode()
    return head + raw, {"Inference-Header-Content-Length": length or str(len(head))}


_ONE = np.zeros((1, 28, 28), np.float32).tobytes()
_BINARY_INPUT = {"name": "pixels", "shape": [1, 28, 28], "datatype": "FP32"}

#: (case, path, body, headers, status, words in the error)
BAD_REQUESTS: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    (
        "wrong-name",
        MODEL,
        json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 28, 28], "datatype": "FP32", "data": [0] * 784}]}
        ).encode(),
        {},
        400,
        "unexpected inference input 'x'",
    ),
    ("wrong-shape", MODEL, _json([1, 28, 27]), {}, 400, "unexpected shape"),
    ("zero-batch", MODEL, _json([0, 28, 28], []), {}, 400, "unexpected shape"),
    (
        "wrong-datatype",
        MODEL,
        json.dumps(
            {
                "inputs": [
                    {"name": "pixels", "shape": [1, 28, 28], "datatype": "FP64", "data": [0] * 784}
                ]
            }
        ).encode(),
        {},
        400,
        "datatype",
    ),
    ("short-data", MODEL, _json([1, 28, 28], [0.5] * 783), {}, 400, "783 values"),
    (
        "ragged-data",
        MODEL,
        _json([1, 28, 28], [[0.5] * 28] * 27 + [[0.5]]),
        {},
        400,
        "regular list",
    ),
    ("string-data", MODEL, _json([1, 28, 28], ["0.5"] * 784), {}, 400, "numbers only"),
    (
        "nan-text",
        MODEL,
        b'{"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "FP32", "data": [NaN'
        + b", 0" * 783
        + b"]}]}",
        {},
        400,
        "NaN",
    ),
    (
        "huge-number",
        MODEL,
        _json([1, 28, 28], [1e999] + [0] * 783).replace(b"Infinity", b"1e999"),
        {},
        400,
        "infinite",
    ),
    ("malformed-json", MODEL, b'{"inputs": [', {}, 400, "not valid JSON"),
    ("not-an-object", MODEL, b"[1, 2]", {}, 400, "JSON object"),
    ("no-inputs", MODEL, b"{}", {}, 400, "exactly one input"),
    (
        "unknown-output",
        MODEL,
        json.dumps(
            {
                "inputs": [
                    {"name": "pixels", "shape": [1, 28, 28], "datatype": "FP32", "data": [0] * 784}
                ],
                "outputs": [{"name": "probs"}],
            }
        ).encode(),
        {},
        400,
        "unexpected inference output 'probs'",
    ),
    (
        "too-many-classes",
        MODEL,
        json.dumps(
            {
                "inputs": [
                    {"name": "pixels", "shape": [1, 28, 28], "datatype": "FP32", "data": [0] * 784}
                ],
                "outputs": [{"name": "logits", "parameters": {"classification": 11}}],
            }
        ).encode(),
        {},
        400,
        "classification 11",
    ),
    ("batch-too-large", MODEL, _json([9, 28, 28]), {}, 400, "batch-size must be <= 8"),
    (
        "sequence-on-stateless",
        MODEL,
        json.dumps(
            {
                "parameters": {"sequence_id": 3, "sequence_start": True},
                "inputs": [
                    {"name": "pixels", "shape": [1, 28, 28], "datatype": "FP32", "data": [0] * 784}
                ],
            }
        ).encode(),
        {},
        400,
        "carries no state",
    ),
    ("unknown-model", "nope", _json([1, 28, 28]), {}, 404, "unknown model 'nope'"),
    ("unknown-version", f"{MODEL}/versions/7", _json([1, 28, 28]), {}, 404, "unknown version '7'"),
    (
        "binary-header-not-a-number",
        MODEL,
        *_binary(
            {"inputs": [{**_BINARY_INPUT, "parameters": {"binary_data_size": len(_ONE)}}]},
            _ONE,
            "abc",
        ),
        400,
        "Inference-Header-Content-Length",
    ),
    (
        "binary-header-too-long",
        MODEL,
        *_binary(
            {"inputs": [{**_BINARY_INPUT, "parameters": {"binary_data_size": len(_ONE)}}]},
            _ONE,
            "999999",
        ),
        400,
        "Inference-Header-Content-Length",
    ),
    (
        "binary-size-short",
        MODEL,
        *_binary({"inputs": [{**_BINARY_INPUT, "parameters": {"binary_data_size": 100}}]}, _ONE),
        400,
        "bytes",
    ),
    (
        "binary-past-end",
        MODEL,
        *_binary(
            {"inputs": [{**_BINARY_INPUT, "parameters": {"binary_data_size": len(_ONE) + 4}}]}, _ONE
        ),
        400,
        "past the end",
    ),
    (
        "binary-nan",
        MODEL,
        *_binary(
            {"inputs": [{**_BINARY_INPUT, "parameters": {"binary_data_size": len(_ONE)}}]},
            np.full((1, 28, 28), np.nan, np.float32).tobytes(),
        ),
        400,
        "NaN",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "words"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_request_is_a_4xx_with_an_error_body(
    server: Server, path: str, body: bytes, headers: dict[str, str], status: int, words: str
) -> None:
    got, answer_headers, answer = call(
        f"http://{server.url}/v2/models/{path}/infer",
        body,
        {"Content-Type": "application/json", **headers},
    )
    assert got == status, answer
    assert answer_headers["content-type"] == "application/json"
    error = json.loads(answer)["error"]
    assert isinstance(error, str) and words in error, error
    assert "Traceback" not in error
    # the server keeps serving
    ok, _, logits = call(f"http://{server.url}/v2/models/{MODEL}/infer", _json([1, 28, 28]))
    assert ok == 200 and len(json.loads(logits)["outputs"][0]["data"]) == 10


def _raw_post(port: int, head: str, chunks: list[bytes]) -> tuple[int, bytes]:
    """POST ``head`` (headers) then ``chunks`` on a socket, then read the answer: a client that
    stops sending once it has sent what it means to (the server may answer before reading all)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
        for chunk in chunks:
            sock.sendall(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


def test_body_over_the_limit_is_refused_before_or_while_read(server: Server) -> None:
    """Over 0.5 MiB: refused by its declared length before the body is sent; a chunked body
    (no declared length) is refused once the bytes read pass the limit."""
    status, body = _raw_post(server.port, "Content-Length: 614400\r\n", [])
    assert status == 413 and "over 524,288 bytes" in json.loads(body)["error"]
    chunk = b"10000\r\n" + b" " * 65536 + b"\r\n"  # 64 KiB chunks, 9 of them: 576 KiB
    status, body = _raw_post(server.port, "Transfer-Encoding: chunked\r\n", [chunk] * 9)
    assert status == 413 and "over 524,288 bytes" in json.loads(body)["error"]
    assert call(f"http://{server.url}/v2/health/ready")[0] == 200


def test_errors_are_counted_as_failures(client: Any, server: Server) -> None:
    before = stats(server.url, MODEL)["inference_stats"]["fail"]["count"]
    with pytest.raises(tritonclient_http.InferenceServerException, match="unexpected shape"):
        client.infer(MODEL, [_input(digits(1, rows=27))])
    after = stats(server.url, MODEL)["inference_stats"]
    assert after["fail"]["count"] == before + 1
    assert after["compute_input"]["count"] == after["compute_output"]["count"]
    assert after["compute_input"]["count"] == after["compute_infer"]["count"]


def test_unknown_route_is_an_oip_error(server: Server) -> None:
    status, _, body = call(f"http://{server.url}/v2/nothing")
    assert status == 404 and "error" in json.loads(body)


def test_sigterm_answers_the_request_in_flight_and_exits_0(
    model_file: Path, tmp_path: Path, runner: Any
) -> None:
    """The request waits 3 s for a batch to fill; SIGTERM arrives meanwhile."""
    server = Server(
        [str(model_file), "--name", MODEL, "--max-queue-delay-us", "3000000"],
        tmp_path / "serve.log",
    ).start()
    x = digits(1, seed=3)
    answers: list[tuple[int, dict[str, str], bytes]] = []
    sender = threading.Thread(
        target=lambda: answers.append(
            call(
                f"http://{server.url}/v2/models/{MODEL}/infer",
                _json([1, 28, 28], x.ravel().tolist()),
            )
        )
    )
    sender.start()
    deadline = time.monotonic() + 30
    while (
        stats(server.url, MODEL)["inference_stats"]["success"]["count"] == 0
        and time.monotonic() < deadline
    ):
        metrics = call(f"http://{server.url}/metrics")[2].decode()
        if re.search(r"^nv_inference_pending_request_count\S* 1$", metrics, re.M):
            break
        time.sleep(0.05)
    assert server.stop() == 0, server.text()
    sender.join(60)
    assert answers and answers[0][0] == 200, answers
    logits = np.array(json.loads(answers[0][2])["outputs"][0]["data"], np.float32)
    np.testing.assert_allclose(logits, runner.infer(x)[0], rtol=1e-6, atol=1e-7)
    assert "Traceback" not in server.text()


def test_serves_each_model_and_version_of_a_triton_repository(
    tmp_path: Path, runner: Any, model_file: Path
) -> None:
    """A repository written by `lstm-export triton`: two versions of a model and a stateful one."""
    from typer.testing import CliRunner

    from _serve_helpers import tiny_onnx as export
    from lstm_export.cli import app

    repo = tmp_path / "repo"
    state_file = export(tmp_path / "stateful", with_state=True)
    for args in (
        [str(model_file), "--name", MODEL, "--version", "1", "--max-batch-size", "4"],
        [str(model_file), "--name", MODEL, "--version", "2", "--max-batch-size", "4"],
        [str(state_file), "--name", "stream", "--max-sequences", "5"],
    ):
        written = CliRunner().invoke(app, ["triton", *args, "-o", str(repo)])
        assert written.exit_code == 0, written.output
    with Server([str(repo)], tmp_path / "serve.log") as server:
        client = tritonclient_http.InferenceServerClient(server.url)
        assert client.get_model_metadata(MODEL)["versions"] == ["1", "2"]
        assert client.get_model_config(MODEL, "2")["max_batch_size"] == 4
        x = digits(2, seed=30)
        for version in ("1", "2"):
            got = client.infer(MODEL, [_input(x)], model_version=version).as_numpy("logits")
            np.testing.assert_array_equal(got, runner.infer(x))
        with pytest.raises(
            tritonclient_http.InferenceServerException, match="batch-size must be <= 4"
        ):
            client.infer(MODEL, [_input(digits(5))])
        stream = client.get_model_config("stream")
        assert stream["sequence_batching"]["oldest"]["max_candidate_sequences"] == 5
        one = digits(1, seed=31)
        client.infer("stream", [_input(one[:, :10])], sequence_id=9, sequence_start=True)
        last = client.infer("stream", [_input(one[:, 10:])], sequence_id=9, sequence_end=True)
        np.testing.assert_allclose(last.as_numpy("logits"), runner.infer(one), rtol=1e-5, atol=1e-5)
        per_version = client.get_inference_statistics(MODEL)["model_stats"]
        assert [(s["version"], s["inference_count"]) for s in per_version] == [("1", 2), ("2", 2)]
        assert len(client.get_inference_statistics()["model_stats"]) == 3


def test_a_missing_serve_extra_is_one_line(
    monkeypatch: pytest.MonkeyPatch, model_file: Path
) -> None:
    import sys

    from typer.testing import CliRunner

    from lstm_export.cli import app

    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now raises ImportError
    result = CliRunner().invoke(app, ["serve", str(model_file)])
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == "error: serving needs the serve extra: pip install 'lstm-export[serve]'"
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["eager", "torchscript"])
def test_other_backends_serve_their_runners_logits(backend: str, tmp_path: Path) -> None:
    from _model_helpers import tiny_checkpoint
    from lstm_export.export.to_torchscript import export_torchscript
    from lstm_export.infer.registry import load_runner

    model = tiny_checkpoint(tmp_path)
    if backend == "torchscript":
        model = Path(export_torchscript(model, tmp_path / "model.ts", validate=False).path)
    x = digits(3, seed=40)
    with load_runner(model, backend, "cpu") as local:
        expected = local.infer(x)
    with Server([str(model), "--name", MODEL, "--device", "cpu"], tmp_path / "serve.log") as server:
        client = tritonclient_http.InferenceServerClient(server.url)
        assert client.get_model_metadata(MODEL)["platform"] in ("pytorch", "pytorch_libtorch")
        got = client.infer(MODEL, [_input(x)]).as_numpy("logits")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_the_served_runner_shares_the_machine(model_file: Path) -> None:
    """ONNX Runtime opened as a run beside other work wants it (its idle threads do not spin),
    with --threads."""
    from lstm_export.infer.runners.ort import OnnxRuntimeRunner
    from lstm_export.serve.models import ServeConfig, close_models, load_models

    for threads in (1, 2):
        models = load_models(ServeConfig(model_file, threads=threads))
        try:
            planned = OnnxRuntimeRunner.planned_options(threads)
            assert models[0].runner.options == OnnxRuntimeRunner.Options(**planned)
            assert models[0].runner.options.threads == threads
        finally:
            close_models(models)


def test_trust_model_serves_a_checkpoint_too(model_file: Path) -> None:
    """A checkpoint is only weights: trust changes nothing for eager, and is no error there."""
    from lstm_export.serve.models import ServeConfig, close_models, load_models

    for source in (model_file.parent / "run" / "model.pt", model_file):
        models = load_models(ServeConfig(source, trusted=True))
        try:
            assert getattr(models[0].runner.options, "trusted", True) is True
        finally:
            close_models(models)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script's deprecation
def test_a_torchscript_file_that_prints_is_served_only_with_trust_model(tmp_path: Path) -> None:
    import torch
    from typer.testing import CliRunner

    from lstm_export.cli import app

    class Prints(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            print("hello from the model")
            return x.sum(1)[:, :10]

    model = tmp_path / "prints.ts"
    torch.jit.save(torch.jit.script(Prints()), str(model))
    refused = CliRunner().invoke(app, ["serve", str(model), "--port", "0"])
    assert refused.exit_code == 1 and refused.output.count("\n") == 1, refused.output
    assert "prim::Print" in refused.output and "refused" in refused.output
    x = digits(2, seed=41)
    args = [str(model), "--name", MODEL, "--device", "cpu", "--trust-model"]
    with Server(args, tmp_path / "serve.log") as server:
        client = tritonclient_http.InferenceServerClient(server.url)
        got = client.infer(MODEL, [_input(x)]).as_numpy("logits")
    np.testing.assert_allclose(got, x.sum(1)[:, :10], rtol=1e-5, atol=1e-5)
