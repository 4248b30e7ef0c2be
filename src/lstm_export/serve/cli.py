"""``lstm-export serve``: serve a model file or a Triton repository over OIP v2 REST."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lstm_export.cli_options import (
    RAY,
    TUNING,
    Engine,
    ThreadsOption,
    TrustFlag,
    cap_threads,
    positive_finite,
)
from lstm_export.console import err_console, plain
from lstm_export.devices import Device
from lstm_export.infer.registry import Backend

if TYPE_CHECKING:
    from lstm_export.serve.models import ServeConfig

MISSING_EXTRA = "serving needs the serve extra: pip install 'lstm-export[serve]'"


def _check_extra() -> None:
    from lstm_export.errors import ConfigError

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None


def _option(flag: str, help_text: str, panel: str | None = TUNING, **extra: Any) -> Any:
    return typer.Option(flag, help=help_text, rich_help_panel=panel, **extra)


_FROM_REPO = "; a repository: its config"
# fmt: off
ModelArg = Annotated[Path, typer.Argument(
    help="Model file (.onnx, .ts, .pt, .xml) or a Triton repository (lstm-export triton).",
    show_default=False)]
MaxBatch = Annotated[int | None, _option(
    "--max-batch-size", "Largest batch of a request or a merged run.", min=1,
    show_default="64" + _FROM_REPO)]
QueueDelay = Annotated[int | None, _option(
    "--max-queue-delay-us", "How long a request waits for others to batch with.", min=0,
    show_default="200" + _FROM_REPO)]
Batching = Annotated[bool, _option(
    "--dynamic-batching/--no-dynamic-batching", "Merge concurrent requests into one run.")]
SequenceIdle = Annotated[float | None, _option(
    "--sequence-idle-s", "Stateful models: an idle sequence is dropped after this.",
    callback=positive_finite, show_default="60" + _FROM_REPO)]
MaxSequences = Annotated[int | None, _option(
    "--max-sequences", "Stateful models: live sequences kept at once.", min=1,
    show_default="1000" + _FROM_REPO)]
MaxBody = Annotated[float, _option(
    "--max-body-mb", "Largest request body, in MiB.", callback=positive_finite)]
EngineOption = Annotated[Engine, _option(
    "--engine", "ray: as a Ray Serve deployment (pip install 'lstm-export\\[ray]').", RAY)]
Replicas = Annotated[int, _option(
    "--replicas", "--engine ray: replicas of the server.", RAY, min=1)]
Address = Annotated[str | None, _option(
    "--address", "--engine ray: join this Ray cluster. Default: a local Ray for the run.", RAY,
    show_default=False)]
# fmt: on


def serve(
    model: ModelArg,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: a free one)."),
    name: str | None = typer.Option(
        None, "--name", help="Model name in the URLs. Default: the file's stem.", show_default=False
    ),
    backend: Backend = typer.Option(Backend.auto, "--backend", help="auto: from MODEL's suffix."),
    device: Device = typer.Option(
        Device.auto,
        "--device",
        help="auto: CUDA when it really loads, else CPU (a repository: its instance kind).",
    ),
    max_batch_size: MaxBatch = None,
    max_queue_delay_us: QueueDelay = None,
    batching: Batching = True,
    sequence_idle_s: SequenceIdle = None,
    max_sequences: MaxSequences = None,
    max_body_mb: MaxBody = 32.0,
    threads: ThreadsOption = None,
    trust_model: TrustFlag = False,
    engine: EngineOption = Engine.in_process,
    replicas: Replicas = 1,
    address: Address = None,
) -> None:
    """Serve MODEL over the Open Inference Protocol v2 (KServe, Triton): REST on HOST:PORT.

    Clients of Triton (tritonclient, perf_analyzer) and KServe talk to it unchanged: JSON or binary tensors, model metadata, config and statistics, Prometheus metrics at /metrics. Concurrent requests are batched; a model exported with --with-state keeps each sequence's LSTM state between requests (Triton's sequence_id, sequence_start, sequence_end).

    SIGTERM or Ctrl-C stops it after answering the requests in flight.
    """
    from lstm_export.errors import ConfigError
    from lstm_export.serve.models import ServeConfig

    _check_extra()
    if engine != Engine.ray and (replicas != 1 or address is not None):
        raise ConfigError("--replicas and --address go with --engine ray")
    config = ServeConfig(
        source=model,
        name=name,
        backend=backend.value,
        device=device.value,
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        batching=batching,
        sequence_timeout_s=sequence_idle_s,
        max_sequences=max_sequences,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        threads=cap_threads(threads),
        trusted=trust_model,
    )
    if engine == Engine.ray:
        from lstm_export.serve.ray_serve import serve_on_ray

        serve_on_ray(config, host=host, port=port, replicas=replicas, address=address, say=_say)
        return
    _serve_here(config, host, port)


def _say(text: str) -> None:
    err_console.print(text, highlight=False, soft_wrap=True)


def _serve_here(config: ServeConfig, host: str, port: int) -> None:
    from lstm_export.serve.app import create_app, listen, run_server
    from lstm_export.serve.models import close_models, load_models

    sock = listen(host, port)
    with err_console.status(f"loading {plain(config.source)}"):
        try:
            models = load_models(config)
        except BaseException:
            sock.close()
            raise
    for m in models:
        note = f" ({m.runner.device_note})" if m.runner.device_note else ""
        kind = ", stateful" if m.sequences is not None else ""
        _say(
            f"model    {plain(m.name)} v{m.version}: {plain(m.runner.description)} on "
            f"{m.runner.device}{plain(note)}{kind}"
        )
    bound = sock.getsockname()
    url = f"http://{host if ':' not in host else f'[{host}]'}:{bound[1]}"
    _say(f"serving  {url}/v2 (OIP v2 REST); SIGTERM or Ctrl-C stops")
    try:
        app = create_app(models, max_body_bytes=config.max_body_bytes)
    except BaseException:
        close_models(models)
        raise
    if run_server(app, sock):
        _say("stopped  (SIGTERM): requests in flight answered")
