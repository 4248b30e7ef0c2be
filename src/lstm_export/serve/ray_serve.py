"""``serve --engine ray``: the same OIP v2 application as a Ray Serve deployment.

Each replica builds the FastAPI application of :mod:`lstm_export.serve.app` from the
:class:`ServeConfig` (``serve.ingress`` with a builder, run when the replica starts), so the
routes, answers, batching and statistics are those of the in-process server, per replica. Ray
Serve's proxy listens on ``host:port`` and spreads requests over ``replicas``.

Ray is local (started for the run with a temporary folder of its own, stopped and removed
after it) or the cluster at ``address`` (joined; the application is deleted from it at the
end, the cluster left running). A sequence's state lives in one replica and Ray Serve does not
route a sequence's requests to the same one, so a stateful model is served by one replica.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

from lstm_export.console import count
from lstm_export.errors import ConfigError, LstmExportError, first_line
from lstm_export.serve.models import ServeConfig, close_models, load_models

APP_NAME = "lstm-export"


def _build(config: ServeConfig) -> Callable[[], Any]:
    """The builder each replica runs: load the models, return the application."""

    def build() -> Any:
        from lstm_export.serve.app import create_app

        return create_app(load_models(config), max_body_bytes=config.max_body_bytes)

    return build


def _import_serve() -> tuple[Any, Any]:
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ConfigError("serving on Ray needs pip install 'lstm-export[ray,serve]'") from None
    return ray, serve


def _check_models(config: ServeConfig, replicas: int) -> list[str]:
    """Load the models here once (a bad file fails before Ray starts); describe them."""
    models = load_models(config)
    try:
        if replicas > 1 and any(m.sequences is not None for m in models):
            raise ConfigError(
                "a stateful model keeps each sequence's state in one replica: serve it with "
                "one replica"
            )
        return [f"{m.name} v{m.version}: {m.runner.description}" for m in models]
    finally:
        close_models(models)


class _Stop(threading.Event):
    """Set by SIGTERM or SIGINT; ``name`` says which."""

    name = ""


@contextlib.contextmanager
def _stop_signals() -> Iterator[_Stop]:
    """While active, SIGTERM and SIGINT set the event instead of ending the process (Ray's own
    handler would abort it, mid-deployment or not)."""
    stop = _Stop()

    def handler(signum: int, frame: object) -> None:
        stop.name = signal.Signals(signum).name
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def serve_on_ray(
    config: ServeConfig,
    *,
    host: str,
    port: int,
    replicas: int,
    address: str | None,
    say: Callable[[str], None],
) -> None:
    """Deploy the server on Ray Serve with ``replicas`` and serve until SIGTERM or SIGINT."""
    if port == 0:
        raise ConfigError("Ray Serve listens on a port given in advance: choose one, not 0")
    for line in _check_models(config, replicas):
        say(f"model    {line}")
    ray, serve = _import_serve()
    temp_dir = None
    try:
        if address is None:
            from lstm_export.devices import usable_cores

            temp_dir = tempfile.mkdtemp(prefix="lstm-serve-ray-")
            ray.init(
                address="local",
                num_cpus=usable_cores(),
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
                _temp_dir=temp_dir,
            )
        else:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        deployment = serve.deployment(
            serve.ingress(_build(config))(),
            name="oip",
            num_replicas=replicas,
            max_ongoing_requests=256,
            ray_actor_options={"num_cpus": min(1.0, cpus / (replicas + 1))},
            logging_config={"log_level": "WARNING"},
        )
        with _stop_signals() as stop:
            serve.start(
                http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"}
            )
            serve.run(deployment.bind(), name=APP_NAME, route_prefix="/")
            say(f"serving  http://{host}:{port}/v2 on Ray Serve, {count(replicas, 'replica')}")
            while not stop.wait(0.5):
                pass
            say(f"stopped  ({stop.name}): stopping Ray Serve")
    except LstmExportError:
        raise
    except Exception as exc:
        raise ConfigError(f"Ray Serve failed: {first_line(exc)}") from exc
    finally:
        if ray.is_initialized():
            if address is None:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
            ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
