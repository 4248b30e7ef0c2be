"""A restricted unpickler that only rebuilds numpy arrays: never ``pickle.load`` downloaded bytes."""

from __future__ import annotations

import io
import pickle
from typing import Any

from lstm_export.errors import DataError

# The only callables a pickle of plain numpy arrays needs.
_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Protocol-2 pickles written by Python 3 encode bytes through this pure function.
        ("_codecs", "encode"),
    }
)


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler admitting numpy array reconstruction and builtin containers, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")


def loads_numpy_only(data: bytes) -> Any:
    """Unpickle ``data`` (Python 2 pickles too) admitting only numpy arrays."""
    try:
        return NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except DataError:
        raise
    except Exception as exc:  # malformed pickle: many exception types are possible
        raise DataError(f"cannot read pickle: {exc}") from exc
