"""Load test of ``lstm-export serve``: requests/s and latency for single-image binary requests.

For each server and each concurrency (1, 8, 32 by default), a closed loop of ``concurrency``
clients, each on a kept-alive connection of its own, sends one digit per request (``pixels``
FP32 ``[1, 28, 28]`` -> ``logits``, in Triton's binary tensor format: a small asyncio HTTP/1.1
client resending one prebuilt request, so that the client costs little of the machine) until
``--requests`` requests are answered or ``--time-cap`` seconds pass. Before each cell,
``--warmup`` requests go through tritonclient's own asyncio HTTP client, and the logits it
decodes are checked against ONNX Runtime in this process. Servers, each started on a free
port of 127.0.0.1 and stopped by its pid (SIGTERM):

1. ``serve (batching)``: ``lstm-export serve MODEL`` with its dynamic batching (defaults, or
   ``--max-batch-size`` / ``--max-queue-delay-us``);
2. ``serve (no batching)``: the same with ``--max-batch-size 1``;
3. ``kserve``: a peer, KServe's Python model server (``kserve.Model`` running the same ONNX file
   on ONNX Runtime, OIP v2 REST), run by ``--peer-python`` (a Python with ``kserve`` and
   ``onnxruntime``; KServe pins protobuf and FastAPI versions of its own, so it usually lives in
   a virtual environment of its own). ``--peer-python ''`` leaves it out.

Where ``--perf-analyzer`` names a runnable perf_analyzer (tritonclient's wheels up to 2.60 carry
one), it is run against each lstm-export server at the same concurrencies (binary HTTP, batch 1,
windows of ``--perf-analyzer-ms``, at most three: ``-r 3``) and its figures are added; otherwise
the reason it did not run is recorded.

    python benchmarks/serve_load.py [--model model.onnx] [--requests 2000] [--time-cap 20]
        [--concurrency 1,8,32] [--peer-python /path/to/venv/bin/python]
        [--perf-analyzer /path/to/perf_analyzer [--perf-analyzer-libs DIR]
        [--perf-analyzer-ms 2000]] [--json benchmarks/results/serve-load.json]
        [--md benchmarks/results/serve-load.md]

Without ``--model`` a seeded, untrained model of the seed architecture is exported (the load
does not depend on the weights). The client runs in this process, on the same machine as the
server: on a small machine the two compete for the cores, for every server alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: the peer server, run with ``--peer-python`` (which has kserve and onnxruntime)
PEER_SERVER = r"""
import sys

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferResponse, Model, ModelServer


class LstmModel(Model):
    def __init__(self, name, path):
        super().__init__(name)
        options = ort.SessionOptions()
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        self.ready = True

    def predict(self, payload, headers=None):
        x = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        y = self.session.run([self.output], {self.input: x})[0]
        out = InferOutput(name=self.output, shape=list(y.shape), datatype="FP32", data=y)
        return InferResponse(
            response_id=payload.id,
            model_name=self.name,
            infer_outputs=[out],
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )


name, path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ModelServer(http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False).start(
    [LstmModel(name, path)]
)
"""

MODEL_NAME = "mnist"


@dataclass
class ServerSpec:
    """How to start one server: ``argv`` with ``{port}`` filled in, and a label."""

    label: str
    argv: list[str]
    batching: str
    env: dict[str, str] = field(default_factory=dict)
    #: whether it has Triton's statistics extension (executions vs inferences)
    stats: bool = True


# -- servers ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), r.read()
    except OSError as exc:
        code = getattr(exc, "code", None)
        return (int(code) if isinstance(code, int) else 0), b""


@contextlib.contextmanager
def running(spec: ServerSpec, log: Path, start_timeout: float = 120.0) -> Iterator[str]:
    """Start ``spec`` on a free port of 127.0.0.1; yield ``host:port`` once the model is ready;
    stop it by its pid (SIGTERM, then SIGKILL after 20 s)."""
    port = free_port()
    argv = [a.replace("{port}", str(port)) for a in spec.argv]
    with open(log, "ab") as out:
        out.write(f"$ {shlex.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **spec.env}
        )
    try:
        url = f"127.0.0.1:{port}"
        deadline = time.monotonic() + start_timeout
        while http_get(f"http://{url}/v2/models/{MODEL_NAME}/ready")[0] != 200:
            if proc.poll() is not None:
                raise RuntimeError(f"{spec.label} exited with {proc.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{spec.label} not ready after {start_timeout:.0f} s; see {log}")
            time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def batching_of(url: str) -> str | None:
    """``max batch N, delay D us`` from the model's configuration (Triton's config extension)."""
    code, body = http_get(f"http://{url}/v2/models/{MODEL_NAME}/config")
    if code != 200:
        return None
    config = json.loads(body)
    size = config.get("max_batch_size", 0)
    delay = (config.get("dynamic_batching") or {}).get("max_queue_delay_microseconds")
    return f"max batch {size}" + (f", delay {delay} us" if delay is not None else "")


def server_stats(url: str) -> tuple[int, int] | None:
    """``(inference_count, execution_count)`` of the model (Triton's statistics extension)."""
    code, body = http_get(f"http://{url}/v2/models/{MODEL_NAME}/stats")
    if code != 200:
        return None
    entry = json.loads(body)["model_stats"][0]
    return int(entry["inference_count"]), int(entry["execution_count"])


# -- the client ------------------------------------------------------------------------------------
def _request(image: np.ndarray) -> tuple[list[Any], list[Any]]:
    import tritonclient.http.aio as httpclient

    pixels = httpclient.InferInput("pixels", [1, *image.shape], "FP32")
    pixels.set_data_from_numpy(image[None], binary_data=True)
    return [pixels], [httpclient.InferRequestedOutput("logits", binary_data=True)]


def raw_request(host: str, image: np.ndarray) -> bytes:
    """One whole HTTP/1.1 request in Triton's binary tensor format, built once and resent."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [1, *image.shape],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": image.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + image.astype(np.float32).tobytes()
    head = (
        f"POST /v2/models/{MODEL_NAME}/infer HTTP/1.1\r\nHost: {host}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> bytes:
    """Send ``request`` on a kept-alive connection and read the whole 200 answer (its body sized
    by Content-Length, or chunked)."""
    writer.write(request)
    status = await reader.readline()
    length, chunked = None, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.decode("latin-1").partition(":")
        key = key.strip().lower()
        if key == "content-length":
            length = int(value)
        elif key == "transfer-encoding":
            chunked = "chunked" in value.lower()
    if not status.startswith(b"HTTP/1.1 200") or (length is None and not chunked):
        raise RuntimeError(f"answer {status[:60]!r} (Content-Length {length})")
    if length is not None:
        return await reader.readexactly(length)
    body = b""
    while size := int((await reader.readline()).split(b";")[0], 16):
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    await reader.readline()  # the CRLF after the last, empty chunk
    return body


async def _first_logits(url: str, image: np.ndarray, warmup: int) -> np.ndarray | None:
    """Warm up with tritonclient's own client and return the logits it decodes."""
    import tritonclient.http.aio as httpclient

    client = httpclient.InferenceServerClient(url)
    inputs, outputs = _request(image)
    first = None
    try:
        for _ in range(warmup):
            result = await client.infer(MODEL_NAME, inputs, outputs=outputs)
            first = result.as_numpy("logits")
    finally:
        await client.close()
    return first


async def _load(
    url: str, image: np.ndarray, concurrency: int, requests: int, time_cap: float, warmup: int
) -> dict[str, Any]:
    """A closed loop of ``concurrency`` clients, each on a connection of its own: the latency of
    each answered request."""
    first = await _first_logits(url, image, warmup)
    host, port = url.rsplit(":", 1)
    request = raw_request(url, image)
    latencies: list[float] = []
    issued = 0
    deadline = time.perf_counter() + time_cap

    async def worker() -> None:
        nonlocal issued
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while issued < requests and time.perf_counter() < deadline:
                issued += 1
                t0 = time.perf_counter()
                await exchange(reader, writer, request)
                latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    ms = sorted(x * 1e3 for x in latencies)
    return {
        "requests": len(ms),
        "seconds": seconds,
        "requests_per_s": len(ms) / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": statistics.fmean(ms),
        "capped": len(ms) < requests,
        "first_logits": None if first is None else first.tolist(),
    }


def run_cell(
    url: str, image: np.ndarray, concurrency: int, requests: int, time_cap: float, warmup: int
) -> dict[str, Any]:
    return asyncio.run(_load(url, image, concurrency, requests, time_cap, warmup))


# -- perf_analyzer ---------------------------------------------------------------------------------
def perf_analyzer_problem(binary: str | None, libs: str | None) -> str | None:
    """None when ``binary`` runs here; else why it does not, in one line."""
    if not binary:
        return "not given (--perf-analyzer)"
    env = {**os.environ, "LD_LIBRARY_PATH": libs or ""}
    try:
        proc = subprocess.run(
            [binary, "--version"], capture_output=True, env=env, timeout=30, check=False
        )
    except OSError as exc:
        return f"{binary}: {exc.strerror or exc}"
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    if "error while loading shared libraries" in text or "not found (required by" in text:
        return text.strip().splitlines()[0][:300]
    return None


def run_perf_analyzer(
    binary: str, libs: str | None, url: str, concurrency: int, interval_ms: int, workdir: Path
) -> dict[str, Any]:
    """perf_analyzer's throughput and p50/p99 at one concurrency (binary HTTP, batch 1): three
    windows of ``interval_ms`` at most (``-r 3``), the last one reported."""
    csv = workdir / f"pa-{url.rsplit(':', 1)[1]}-{concurrency}.csv"
    argv = [
        binary, "-m", MODEL_NAME, "-u", url, "-i", "http", "-b", "1",
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "--measurement-interval", str(interval_ms), "-r", "3", "--stability-percentage", "1000",
        "--percentile", "99", "--input-data", "zero", "-f", str(csv),
    ]  # fmt: skip
    env = {**os.environ, "LD_LIBRARY_PATH": libs or ""}
    proc = subprocess.run(argv, capture_output=True, env=env, timeout=180, check=False)
    if proc.returncode != 0 or not csv.is_file():
        lines = [
            x.strip() for x in (proc.stdout + proc.stderr).decode(errors="replace").splitlines()
        ]
        why = [x for x in lines if "what():" in x or "rror" in x] or lines[-1:] or ["no output"]
        return {"error": why[-1][:300]}
    header, row = csv.read_text().splitlines()[:2]
    values = dict(zip(header.split(","), row.split(","), strict=True))
    return {
        "requests_per_s": float(values["Inferences/Second"]),
        "p50_ms": float(values["p50 latency"]) / 1e3,
        "p99_ms": float(values["p99 latency"]) / 1e3,
    }


# -- the run ---------------------------------------------------------------------------------------
def make_model(root: Path) -> Path:
    import torch

    from lstm_export.checkpoint import make_checkpoint, save_checkpoint
    from lstm_export.config import ModelConfig
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig()).eval()
    save_checkpoint(make_checkpoint(model, metrics={}), root / "model.pt")
    return Path(export_onnx(root / "model.pt", root / "model.onnx", validate=False).path)


def servers(args: argparse.Namespace, model: Path) -> list[ServerSpec]:
    serve = [sys.executable, "-m", "lstm_export", "serve", str(model), "--name", MODEL_NAME]
    serve += ["--port", "{port}", "--device", args.device]
    tuning = []
    if args.max_batch_size:
        tuning += ["--max-batch-size", str(args.max_batch_size)]
    if args.max_queue_delay_us is not None:
        tuning += ["--max-queue-delay-us", str(args.max_queue_delay_us)]
    specs = [
        ServerSpec("serve (batching)", serve + tuning, "on"),
        ServerSpec("serve (no batching)", [*serve, "--max-batch-size", "1"], "off"),
    ]
    if args.peer_python:
        argv = [args.peer_python, "-c", PEER_SERVER, MODEL_NAME, str(model), "{port}"]
        specs.append(ServerSpec("kserve", argv, "none: one request per run", stats=False))
    return specs


def reference_logits(model: Path, image: np.ndarray) -> np.ndarray:
    from lstm_export.infer.registry import load_runner

    with load_runner(model, "onnxruntime", "cpu") as runner:
        return np.asarray(runner.infer(image[None]))


def model_ceiling(
    model: Path, batches: tuple[int, ...] = (1, 64), seconds: float = 1.0
) -> dict[str, float]:
    """Images/s of the model itself in this process (ONNX Runtime, CPU) at each batch size: what
    no server can beat, and ``img/s at 64 / img/s at 1`` bounds what batching can give."""
    from lstm_export.infer.registry import load_runner

    out = {}
    with load_runner(model, "onnxruntime", "cpu") as runner:
        for b in batches:
            x = np.random.default_rng(b).random((b, 28, 28), dtype=np.float32)
            for _ in range(5):
                runner.infer(x)
            runs, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                runner.infer(x)
                runs += 1
            out[f"batch_{b}_images_per_s"] = b * runs / (time.perf_counter() - t0)
    return out


def measure(args: argparse.Namespace, model: Path, workdir: Path) -> dict[str, Any]:
    image = np.random.default_rng(0).random((28, 28), dtype=np.float32)
    expected = reference_logits(model, image)
    ceiling = model_ceiling(model)  # before any server, on a machine as quiet as it gets
    pa_problem = perf_analyzer_problem(args.perf_analyzer, args.perf_analyzer_libs)
    rows: list[dict[str, Any]] = []
    for spec in servers(args, model):
        with running(spec, workdir / "servers.log") as url:
            batching = (batching_of(url) if spec.stats else None) or spec.batching
            for c in args.concurrency:
                before = server_stats(url) if spec.stats else None
                cell = run_cell(url, image, c, args.requests, args.time_cap, args.warmup)
                after = server_stats(url) if spec.stats else None
                got = np.asarray(cell.pop("first_logits"), dtype=np.float32)
                cell["answers_match"] = bool(np.allclose(got, expected, atol=1e-4))
                if before and after and after[1] > before[1]:
                    cell["mean_batch"] = (after[0] - before[0]) / (after[1] - before[1])
                row = {"server": spec.label, "batching": batching, "concurrency": c, **cell}
                if spec.stats and pa_problem is None:
                    row["perf_analyzer"] = run_perf_analyzer(
                        args.perf_analyzer, args.perf_analyzer_libs, url, c, args.pa_ms, workdir
                    )
                rows.append(row)
                print(_line(row), flush=True)
    return {
        "rows": rows,
        "perf_analyzer": pa_problem or "ran",
        "targets": targets(rows),
        "model_in_process": ceiling,
    }


def _line(row: dict[str, Any]) -> str:
    batch = f"  mean batch {row['mean_batch']:.1f}" if "mean_batch" in row else ""
    return (
        f"{row['server']:<20} c={row['concurrency']:<3} {row['requests_per_s']:8.1f} req/s  "
        f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  n={row['requests']}{batch}"
    )


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets at the highest concurrency: batching >= 3x no batching in req/s;
    ahead of the peer in req/s with a lower p99."""
    top = max(r["concurrency"] for r in rows)
    at = {r["server"]: r for r in rows if r["concurrency"] == top}
    on, off, peer = at.get("serve (batching)"), at.get("serve (no batching)"), at.get("kserve")
    out: dict[str, Any] = {"concurrency": top}
    if on and off:
        out["batching_speedup"] = on["requests_per_s"] / off["requests_per_s"]
        out["batching_3x"] = out["batching_speedup"] >= 3.0
    if on and peer:
        out["vs_peer_rps"] = on["requests_per_s"] / peer["requests_per_s"]
        out["ahead_of_peer"] = on["requests_per_s"] > peer["requests_per_s"]
        out["lower_p99_than_peer"] = on["p99_ms"] < peer["p99_ms"]
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| server | batching | concurrency | requests | req/s | p50 ms | p99 ms | mean batch | answers |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        batch = f"{r['mean_batch']:.1f}" if "mean_batch" in r else "-"
        capped = " (time cap)" if r["capped"] else ""
        lines.append(
            f"| {r['server']} | {r['batching']} | {r['concurrency']} | {r['requests']}{capped} | "
            f"{r['requests_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {batch} | "
            f"{'= ONNX Runtime' if r['answers_match'] else 'DIFFER'} |"
        )
    pa = [r for r in result["rows"] if "perf_analyzer" in r]
    if pa:
        lines += ["", "perf_analyzer (same servers, binary HTTP, batch 1):", ""]
        lines += ["| server | concurrency | req/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
        for r in pa:
            p = r["perf_analyzer"]
            if "error" in p:
                lines.append(f"| {r['server']} | {r['concurrency']} | error: {p['error']} | | |")
            else:
                lines.append(
                    f"| {r['server']} | {r['concurrency']} | {p['requests_per_s']:,.0f} | "
                    f"{p['p50_ms']:.2f} | {p['p99_ms']:.2f} |"
                )
    else:
        lines += ["", f"perf_analyzer: {result['perf_analyzer']}"]
    t = result["targets"]
    lines += ["", f"Targets at concurrency {t['concurrency']}:"]
    if "batching_speedup" in t:
        lines.append(
            f"- batching on vs off: {t['batching_speedup']:.2f}x requests/s (target >= 3x)"
        )
    if "vs_peer_rps" in t:
        lines.append(
            f"- vs kserve: {t['vs_peer_rps']:.2f}x requests/s, lower p99: {t['lower_p99_than_peer']}"
        )
    ceiling = result.get("model_in_process") or {}
    if ceiling:
        one, many = ceiling["batch_1_images_per_s"], ceiling["batch_64_images_per_s"]
        lines.append(
            f"- the model alone, in process: {one:,.0f} images/s at batch 1, {many:,.0f} at batch "
            f"64 ({many / one:.1f}x: the most batching can give, before any per-request cost)"
        )
    lines += ["", f"Command: `{result['command']}`", f"Machine: {result['machine']}"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model", type=Path, help="ONNX file (default: a seeded, untrained model)")
    p.add_argument("--requests", type=int, default=2000, help="requests per cell")
    p.add_argument("--time-cap", type=float, default=20.0, help="seconds per cell, at most")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured requests per cell")
    p.add_argument(
        "--concurrency", default="1,8,32", type=lambda s: [int(c) for c in s.split(",") if c]
    )
    p.add_argument("--max-batch-size", type=int, default=None, help="serve's (default: its own)")
    p.add_argument(
        "--max-queue-delay-us", type=int, default=None, help="serve's (default: its own)"
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--peer-python", default=None, help="a Python with kserve and onnxruntime")
    p.add_argument("--perf-analyzer", default=None, help="a perf_analyzer binary")
    p.add_argument("--perf-analyzer-libs", default=None, help="LD_LIBRARY_PATH for perf_analyzer")
    p.add_argument(
        "--perf-analyzer-ms", dest="pa_ms", type=int, default=2000, help="its measurement window"
    )
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--md", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        workdir = Path(tmp)
        model = args.model or make_model(workdir)
        result = measure(args, model, workdir)
        log = (workdir / "servers.log").read_text(errors="replace")
    result["command"] = shlex.join(["python", "benchmarks/serve_load.py", *(argv or sys.argv[1:])])
    from lstm_export.bench.machine import cpu_model

    result["machine"] = (
        f"{cpu_model()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    result["server_log_tail"] = log.splitlines()[-20:]
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.md:
        args.md.write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
