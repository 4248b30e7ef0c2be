"""The export stage's side of the terminal, where library code never prints: progress through a
callback the CLI passes (:data:`ProgressFn`); the exporters' own chatter (warnings, prints, log
records of torch.onnx, torch.jit, onnxscript...) re-logged at DEBUG by :func:`quiet_exporters`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

#: ``progress(description, completed, total)``; ``total == 0`` means "no count, just a status".
ProgressFn = Callable[[str, int, int], None]


def status(progress: ProgressFn | None, description: str) -> None:
    """Announce a step without a count (a spinner in the CLI)."""
    if progress is not None:
        progress(description, 0, 0)


_NOISY_LOGGERS = (
    "onnxscript",
    "onnx_ir",
    "torch.onnx",
    "torch.export",
    "torch._export",
    "torch._dynamo",
    "torch.fx",
    "onnxruntime",
)


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """Silence exporter warnings, stdout prints and third-party loggers inside the block."""
    saved = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in saved:
        logging.getLogger(name).setLevel(logging.ERROR)
    stdout = io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(stdout):
            warnings.simplefilter("always")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
    for w in caught:
        log.debug("exporter warning: %s: %s", w.category.__name__, str(w.message).splitlines()[0])
    if stdout.getvalue().strip():
        log.debug("exporter output: %s", stdout.getvalue().strip()[:2000])
