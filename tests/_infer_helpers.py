"""Helpers shared by the infer tests: exported models (made once per session) and PNG folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

_EXPORTS: dict[Path, dict[str, Path]] = {}


def exported_models(checkpoint: Path, factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{backend: model file}`` for every registered runner, exported once per session."""
    if checkpoint not in _EXPORTS:
        from lstm_export.export.to_onnx import export_onnx
        from lstm_export.export.to_torchscript import export_torchscript

        out = factory.mktemp("exported")
        onnx_path = export_onnx(checkpoint, out / "model.onnx", validate=False).path
        ts_path = export_torchscript(checkpoint, out / "model.ts", validate=False).path
        _EXPORTS[checkpoint] = {
            "eager": checkpoint,
            "torchscript": Path(ts_path),
            "onnxruntime": Path(onnx_path),
            # OpenVINO reads the .onnx file as is; its own IR keeps the suffix test unambiguous
            "openvino": _openvino_ir(Path(onnx_path)),
        }
    return _EXPORTS[checkpoint]


def _openvino_ir(onnx_path: Path) -> Path:
    """The exported ONNX file as OpenVINO IR (``.xml``), metadata kept; needs ``openvino``."""
    from lstm_export.infer.runners.openvino_runner import save_ir

    return save_ir(onnx_path, onnx_path.with_suffix(".xml"))


def write_digits(
    folder: Path,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    ext: str = "png",
    transform: Callable[[np.ndarray], Image.Image] | None = None,
) -> list[Path]:
    """Save uint8 digits ``(N, 28, 28)``; in ``<label>/`` subfolders when labels are given."""
    paths = []
    for i, img in enumerate(images):
        sub = folder / str(int(labels[i])) if labels is not None else folder
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{i:05d}.{ext}"
        (transform(img) if transform else Image.fromarray(img)).save(path)
        paths.append(path)
    return paths


def png_bytes(img: np.ndarray) -> bytes:
    """uint8 ``(H, W)`` or ``(H, W, C)`` -> PNG bytes."""
    import io

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def uint8_test_set(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST test split as uint8 images ``(N, 28, 28)`` and int64 labels."""
    from lstm_export.data.mnist import load_split

    split = load_split(mnist_dir, "test")
    return split.images, split.labels
