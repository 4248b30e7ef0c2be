"""Helpers of the serve tests: tiny exported models, and `lstm-export serve` as a subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from _model_helpers import tiny_checkpoint

#: how long a server may take to load its model and answer /v2/health/ready
START_TIMEOUT_S = 120
_BANNER = re.compile(r"serving\s+http://127\.0\.0\.1:(\d+)/v2")


def tiny_onnx(folder: Path, *, with_state: bool = False) -> Path:
    """An untrained hidden-16 model exported to ONNX (unvalidated): stateless or streaming."""
    from lstm_export.export.to_onnx import export_onnx

    checkpoint = tiny_checkpoint(folder)
    name = "state.onnx" if with_state else "model.onnx"
    return Path(
        export_onnx(
            checkpoint, folder / name, legacy=True, validate=False, with_state=with_state
        ).path
    )


def cpu_runner(model: Path) -> Iterator[Any]:
    """The in-process runner `lstm-export infer` uses, loaded on the CPU: the expected logits."""
    from lstm_export.infer.registry import load_runner

    with load_runner(model, device="cpu") as runner:
        yield runner


def running(args: list[str], log: Path) -> Iterator[Server]:
    """A started :class:`Server`, stopped after the ``yield`` (for module fixtures)."""
    with Server(args, log) as server:
        yield server


def digits(count: int, rows: int = 28, seed: int = 0) -> np.ndarray:
    """Random float32 pixels (count, rows, 28) in [0, 1]."""
    return np.random.default_rng(seed).random((count, rows, 28), dtype=np.float32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``lstm-export serve ARGS`` on 127.0.0.1 (``--port 0`` unless ARGS name one), its log in
    ``log``; started by :meth:`start`, stopped by pid with SIGTERM in :meth:`stop`."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args if "--port" in args else [*args, "--port", "0"]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> Server:
        env = dict(os.environ, COLUMNS="200", PYTHONUNBUFFERED="1")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lstm_export", "serve", *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited {self.proc.returncode}:\n{self.text()}")
            found = _BANNER.search(self.text())
            if found and self.ready():
                self.port = int(found.group(1))
                return self
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"the server did not get ready in {START_TIMEOUT_S} s:\n{self.text()}")

    def ready(self) -> bool:
        found = _BANNER.search(self.text())
        if not found:
            return False
        try:
            return call(f"http://127.0.0.1:{found.group(1)}/v2/health/ready")[0] == 200
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM by pid; the exit code (killed after ``timeout_s``: the test fails)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the server ignored SIGTERM:\n{self.text()}") from None
        return int(self.proc.returncode)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def call(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """An HTTP request without a client library: (status, headers, body), 4xx/5xx included."""
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def stats(url: str, model: str) -> dict[str, Any]:
    """The model's entry of ``GET /v2/models/{m}/stats``."""
    status, _, body = call(f"http://{url}/v2/models/{model}/stats")
    assert status == 200, body
    return dict(json.loads(body)["model_stats"][0])
