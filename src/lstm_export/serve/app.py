"""The OIP v2 REST application (FastAPI): health, metadata, config, statistics, metrics, infer
(the routes: docs/serve.md; without a version, a model's latest answers).

Every refusal is a 4xx with the OIP error body ``{"error": "..."}``; an unexpected failure
is a 500 with one line, never a traceback. The request body is read up to a limit: a larger
one is refused (413) while it is being read.

Imports FastAPI: import this module only where the ``serve`` extra is needed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from lstm_export import __version__
from lstm_export.errors import InferenceError, LstmExportError, first_line
from lstm_export.serve.batching import Ran
from lstm_export.serve.metrics import prometheus_text
from lstm_export.serve.models import ServedModel, close_models
from lstm_export.serve.protocol import (
    HEADER_LENGTH,
    InferRequest,
    RequestError,
    decompress,
    encode_infer,
    parse_infer,
)

log = logging.getLogger(__name__)

#: connections and requests at once; more are answered 503 (memory stays bounded)
MAX_CONNECTIONS = 512
#: request body bytes held at once by all requests (at least two of the largest)
BODY_BUDGET_BYTES = 256 * 1024 * 1024

EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "sequence",
    "statistics",
]


class Models:
    """The served model versions, found by name and version."""

    def __init__(self, models: list[ServedModel], max_body_bytes: int) -> None:
        self.all = models
        self.max_body_bytes = max_body_bytes
        self._by_name: dict[str, dict[str, ServedModel]] = {}
        for m in models:
            self._by_name.setdefault(m.name, {})[m.version] = m

    def versions(self, name: str) -> list[str]:
        return sorted(self._by_name.get(name, {}), key=int)

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The version asked for (None or empty: the latest); 404 RequestError if unknown."""
        versions = self._by_name.get(name)
        if not versions:
            raise RequestError(f"unknown model {name[:80]!r}", 404)
        if not version:
            return versions[self.versions(name)[-1]]
        if version not in versions:
            raise RequestError(f"unknown version {version[:20]!r} of model {name!r}", 404)
        return versions[version]


class BodyBudget:
    """Request body bytes held at once by all requests; past ``limit`` a request gets 503."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise RequestError("the server holds too many request bodies now: try again", 503)
        self.held += size


async def read_body(request: Request, limit: int, budget: BodyBudget) -> tuple[bytes, int]:
    """The request body and the bytes it took from ``budget`` (give them back when done).

    Refused with 413 as soon as it is known to be over ``limit`` bytes: by its declared
    length, else while it is read.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(f"the request body is over {limit:,} bytes", 413)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            if size + len(chunk) > limit:
                raise RequestError(f"the request body is over {limit:,} bytes", 413)
            budget.take(len(chunk))
            size += len(chunk)
            chunks.append(chunk)
    except BaseException as exc:
        budget.held -= size
        if isinstance(exc, ClientDisconnect):
            raise RequestError("the client disconnected before the body was sent") from None
        raise
    body = decompress(b"".join(chunks), request.headers.get("content-encoding"), limit)
    return body, size


async def run_request(model: ServedModel, request: InferRequest) -> Ran:
    """Logits for a checked request: batched with others, or a sequence's next chunk (its
    queue time: waiting for the sequence's earlier chunks)."""
    seq = request.sequence
    if seq is None:
        return await model.batcher.infer(request.pixels)
    if model.sequences is None:
        raise RequestError(
            f"model {model.name!r} carries no state between requests: sequence parameters "
            "need a model exported with its LSTM state"
        )
    sequence = model.sequences.open(seq)
    waited = time.perf_counter_ns()
    async with sequence.lock:
        waited = time.perf_counter_ns() - waited
        ran = await model.batcher.call(model.runner.step, request.pixels, sequence.state)
        logits, state = ran.result
        model.sequences.update(sequence, state, seq.end)
    return Ran(logits, waited, ran.infer_ns)


async def infer(
    models: Models, request: Request, name: str, version: str | None, budget: BodyBudget
) -> Response:
    """``POST .../infer``: parse, run, answer; counted in the model's statistics."""
    model = models.get(name, version)
    started = time.perf_counter_ns()
    model.stats.pending += 1
    held = 0
    try:
        body, held = await read_body(request, models.max_body_bytes, budget)
        read = time.perf_counter_ns()
        parsed = parse_infer(
            body,
            request.headers.get(HEADER_LENGTH),
            model=model.name,
            input_spec=model.input,
            output_spec=model.output,
            max_batch_size=model.max_batch_size,
        )
        decoded = time.perf_counter_ns()
        ran = await run_request(model, parsed)
        answered = time.perf_counter_ns()
        try:
            content, headers = encode_infer(
                model.name, model.version, parsed, ran.result, model.labels
            )
        finally:
            encoded = time.perf_counter_ns()
            model.stats.computed(ran.queue_ns, decoded - read, ran.infer_ns, encoded - answered)
    except BaseException:
        model.stats.request(False, time.perf_counter_ns() - started)
        raise
    finally:
        model.stats.pending -= 1
        budget.held -= held
    model.stats.request(True, time.perf_counter_ns() - started)
    return Response(content, headers=headers)


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def refused(_: Request, exc: RequestError) -> Response:
        return _error(exc.status, str(exc))

    @app.exception_handler(LstmExportError)
    async def library_error(_: Request, exc: LstmExportError) -> Response:
        status = 500 if isinstance(exc, InferenceError) else 400
        return _error(status, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        return _error(400, f"invalid request: {first_line(exc)}")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        log.error("request failed: %s", first_line(exc), exc_info=exc)
        return _error(500, f"internal error: {first_line(exc)}")


def create_app(served: list[ServedModel], *, max_body_bytes: int) -> FastAPI:
    """The application serving ``served``; it closes their batchers and runners at shutdown."""
    models = Models(served, max_body_bytes)
    budget = BodyBudget(max(BODY_BUDGET_BYTES, 2 * max_body_bytes))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        for model in served:
            await model.batcher.close()
        close_models(served)

    app = FastAPI(
        title="lstm-export",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    _add_error_handlers(app)

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "lstm-export", "version": __version__, "extensions": EXTENSIONS}

    @app.get("/v2/health/live")
    @app.get("/v2/health/ready")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v2/models/stats")
    @app.get("/v2/models/{name}/stats")
    @app.get("/v2/models/{name}/versions/{version}/stats")
    async def model_stats(name: str | None = None, version: str | None = None) -> dict[str, Any]:
        if name is None:
            return {"model_stats": [m.stats.to_triton() for m in models.all]}
        if version:
            return {"model_stats": [models.get(name, version).stats.to_triton()]}
        models.get(name)
        return {
            "model_stats": [models.get(name, v).stats.to_triton() for v in models.versions(name)]
        }

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None) -> dict[str, Any]:
        return models.get(name, version).metadata(
            models.versions(name) if not version else [version]
        )

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> Response:
        models.get(name, version)
        return Response(status_code=200)

    @app.get("/v2/models/{name}/config")
    @app.get("/v2/models/{name}/versions/{version}/config")
    async def model_config(name: str, version: str | None = None) -> dict[str, Any]:
        return models.get(name, version).config()

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def model_infer(request: Request, name: str, version: str | None = None) -> Response:
        return await infer(models, request, name, version, budget)

    @app.get("/metrics")
    async def metrics() -> Response:
        text = prometheus_text([m.stats for m in models.all])
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def listen(host: str, port: int) -> Any:
    """A listening TCP socket on ``host:port`` (port 0: a free one); ConfigError if it cannot."""
    import socket

    from lstm_export.errors import ConfigError

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run_server(app: FastAPI, sock: Any, *, drain_timeout_s: int = 30) -> bool:
    """Serve ``app`` on the listening ``sock`` until SIGINT or SIGTERM (uvicorn).

    On either, the server stops accepting, answers the requests in flight (up to
    ``drain_timeout_s``), shuts the models down and returns: True after SIGTERM. SIGINT then
    raises KeyboardInterrupt, as Ctrl-C does.
    """
    import signal

    import uvicorn

    terminated: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    try:
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            server_header=False,
            lifespan="on",
            timeout_graceful_shutdown=drain_timeout_s,
            limit_concurrency=MAX_CONNECTIONS,
        )
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    return bool(terminated)
