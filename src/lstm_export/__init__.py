"""lstm-export: train, export, run and benchmark the MNIST row-by-row LSTM."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lstm-export")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
