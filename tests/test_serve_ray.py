"""`serve --engine ray`: the same routes and answers from two Ray Serve replicas on a local Ray."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from _serve_helpers import Server, call, digits, free_port, tiny_onnx

MODEL = "mnist"


def _ray_temp_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("lstm-serve-ray-*")}


@pytest.mark.ray
@pytest.mark.slow
def test_two_replicas_answer_as_the_in_process_server(tmp_path: Path) -> None:
    pytest.importorskip("ray.serve")
    http = pytest.importorskip("tritonclient.http")
    from lstm_export.infer.registry import load_runner

    model = tiny_onnx(tmp_path)
    before = _ray_temp_dirs()
    port = free_port()
    args = [str(model), "--name", MODEL, "--engine", "ray", "--replicas", "2", "--port", str(port)]
    server = Server(args, tmp_path / "serve.log").start()
    try:
        client = http.InferenceServerClient(server.url)
        assert client.is_server_ready() and client.is_model_ready(MODEL)
        meta = client.get_model_metadata(MODEL)
        assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 28, 28]}]
        assert client.get_model_config(MODEL)["max_batch_size"] == 64
        x = digits(6, seed=20)
        answers = []
        for i in range(6):  # spread over the replicas
            tensor = http.InferInput("pixels", [1, 28, 28], "FP32")
            tensor.set_data_from_numpy(x[i : i + 1])
            answers.append(client.infer(MODEL, [tensor]).as_numpy("logits"))
        status, _, body = call(f"http://{server.url}/v2/models/nope/infer", b"{}")
        assert status == 404 and "unknown model" in json.loads(body)["error"]
    finally:
        code = server.stop(timeout_s=120)
    assert code == 0, server.text()
    assert "2 replicas" in server.text()
    with load_runner(model, device="cpu") as runner:
        expected = runner.infer(x)
    np.testing.assert_allclose(np.concatenate(answers), expected, rtol=1e-5, atol=1e-6)
    assert _ray_temp_dirs() <= before  # the local Ray's folder is removed


def test_a_stateful_model_is_refused_with_replicas(tmp_path: Path) -> None:
    """A sequence's state lives in one replica: two replicas would lose it between requests."""
    from typer.testing import CliRunner

    from lstm_export.cli import app

    model = tiny_onnx(tmp_path, with_state=True)
    result = CliRunner().invoke(app, ["serve", str(model), "--engine", "ray", "--replicas", "2"])
    assert result.exit_code == 1
    assert "serve it with one replica" in result.output
    assert "Traceback" not in result.output
