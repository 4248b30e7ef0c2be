"""The training loop: deterministic under a seed, reports progress through callbacks."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lstm_export.checkpoint import make_checkpoint
from lstm_export.data.mnist import load_mnist
from lstm_export.data.preprocess import to_model_input
from lstm_export.model import LSTMClassifier, build_model
from lstm_export.train.presets import Schedule, TrainConfig

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, int, float], None]  # epoch, step, steps_per_epoch, loss
EpochCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    """The trained model, its checkpoint dict and the metrics written to ``metrics.json``."""

    model: LSTMClassifier
    checkpoint: dict[str, Any]
    metrics: dict[str, Any]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy in [0, 1]; ``x`` (N, 28, 28) float32, ``y`` (N,) int64."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / max(len(x), 1)


def random_affine(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small random rotation (±10°), scale (±10 %) and shift (±2 px) of each digit (N, 28, 28)."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 / 14)  # in [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, [n, 1, 28, 28], align_corners=False)
    return F.grid_sample(x.unsqueeze(1), grid, align_corners=False).squeeze(1)


def train(
    config: TrainConfig,
    data_dir: Path | None = None,
    *,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train on MNIST as ``config`` says and return the model with its checkpoint and metrics."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    train_split, test_split = load_mnist("train", data_dir), load_mnist("test", data_dir)
    n_train, n_test = config.subset or None, config.test_subset or None  # None: all
    x_train = torch.from_numpy(to_model_input(train_split.images[:n_train]))  # (N, 28, 28)
    y_train = torch.from_numpy(train_split.labels[:n_train])  # (N,)
    x_test = torch.from_numpy(to_model_input(test_split.images[:n_test]))
    y_test = torch.from_numpy(test_split.labels[:n_test])

    model = build_model(config.model_config())
    optimizer = (  # Adam, as the seed model is trained; AdamW only when decay is asked for
        torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        if config.weight_decay
        else torch.optim.Adam(model.parameters(), lr=config.lr)
    )
    steps = math.ceil(len(x_train) / config.batch_size)
    scheduler = None
    if config.schedule == Schedule.onecycle:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=config.epochs * steps
        )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=generator)
        total_loss = 0.0
        for step, idx in enumerate(perm.split(config.batch_size)):
            xb, yb = x_train[idx], y_train[idx]
            if config.augment:
                xb = random_affine(xb, generator)
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad_norm:
                nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_value = loss.item()
            total_loss += loss_value
            if on_step is not None:
                on_step(epoch, step, steps, loss_value)
        accuracy = evaluate(model, x_test, y_test)
        record = {
            "epoch": epoch + 1,
            "train_loss": total_loss / steps,
            "test_accuracy": accuracy,
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        log.info("epoch %d: loss %.4f, test accuracy %.4f", epoch + 1, total_loss / steps, accuracy)
        if on_epoch is not None:
            on_epoch(record)
    model.eval()
    metrics = {
        "test_accuracy": history[-1]["test_accuracy"],
        "test_examples": len(x_test),
        "train_examples": len(x_train),
        "epochs": config.epochs,
        "train_seconds": round(time.perf_counter() - start, 2),
        "config": config.to_dict(),
        "history": history,
        "torch_threads": torch.get_num_threads(),
    }
    checkpoint = make_checkpoint(model, metrics=metrics, train_config=config.to_dict())
    return TrainResult(model=model, checkpoint=checkpoint, metrics=metrics)
