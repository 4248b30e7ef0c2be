"""Shared fixtures: real MNIST (found or fetched as the CLI does), small checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lstm_export.config import ModelConfig


def _cuda_works() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False, "torch missing"
    if not torch.cuda.is_available():
        return False, "no CUDA device on this machine"
    return True, ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ok, why = _cuda_works()
    if ok:
        return
    skip = pytest.mark.skip(reason=f"needs CUDA: {why}")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """Verified MNIST, found as the CLI finds it, fetched at most once per session.

    $LSTM_EXPORT_DATA_DIR if set (CI: ../shared/data/mnist), else the cache
    ``${XDG_CACHE_HOME:-~/.cache}/lstm-export/mnist``, fetched into if empty. A failed lookup
    or fetch fails every test that needs MNIST (with the reason); it never skips them.
    """
    from lstm_export.data.mnist import ensure_mnist
    from lstm_export.errors import DataError

    try:
        return ensure_mnist(None, fetch=True)
    except DataError as exc:
        pytest.fail(
            f"the tests need MNIST and it could not be found or fetched: {exc}", pytrace=False
        )


@pytest.fixture(scope="session")
def mnist_test(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 10k test set: float32 images (N, 28, 28) in [0, 1] and int64 labels (N,)."""
    from lstm_export.data.mnist import load_split
    from lstm_export.data.preprocess import to_model_input

    split = load_split(mnist_dir, "test")
    return to_model_input(split.images), split.labels


@pytest.fixture(scope="session")
def trained_run(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with a quickly trained seed-architecture model (about 60 % accurate)."""
    from lstm_export.train.loop import train
    from lstm_export.train.presets import TrainConfig
    from lstm_export.train.run_dir import save_run

    out = tmp_path_factory.mktemp("trained_run")
    result = train(TrainConfig(epochs=1, subset=6000, test_subset=2000, seed=0), mnist_dir)
    save_run(result, out)
    return out


@pytest.fixture(scope="session")
def trained_checkpoint(trained_run: Path) -> Path:
    """``model.pt`` of :func:`trained_run`."""
    return trained_run / "model.pt"


@pytest.fixture
def make_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """Factory: an untrained (seeded) checkpoint of any architecture, saved under tmp_path."""
    from lstm_export.checkpoint import make_checkpoint as bundle
    from lstm_export.checkpoint import save_checkpoint

    def factory(name: str = "model", seed: int = 0, **config: Any) -> Path:
        import torch

        from lstm_export.model import build_model

        torch.manual_seed(seed)
        model = build_model(ModelConfig(**config)).eval()
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.pt"
        save_checkpoint(bundle(model, metrics={"test_accuracy": 0.0}), path)
        return path

    return factory
