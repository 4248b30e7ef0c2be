"""Make sure every file the bench needs exists and is fresh, exporting what is missing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from lstm_export.artifacts import Artifact

log = logging.getLogger(__name__)


def is_fresh(path: Path, checkpoint: Path) -> bool:
    """An export is fresh when it exists and is not older than its checkpoint."""
    return path.is_file() and path.stat().st_mtime >= checkpoint.stat().st_mtime


def ensure_artifacts(
    checkpoint: Path,
    needed: Iterable[Artifact],
    *,
    data_dir: Path | None = None,
    force: bool = False,
    on_export: Callable[[Artifact], None] | None = None,
) -> dict[Artifact, Path]:
    """Paths of the needed artifacts beside ``checkpoint``; stale or missing ones are exported
    (and validated against eager PyTorch by the export stage)."""
    wanted = set(needed)
    if Artifact.onnx_int8 in wanted or Artifact.onnx_fp16 in wanted:
        wanted.add(Artifact.onnx)  # both are made from the fp32 graph
    paths: dict[Artifact, Path] = {Artifact.checkpoint: checkpoint}
    order = [Artifact.torchscript, Artifact.onnx, Artifact.onnx_int8, Artifact.onnx_fp16]
    for artifact in order:
        if artifact not in wanted:
            continue
        path = artifact.beside(checkpoint)
        if force or not is_fresh(path, checkpoint):
            if on_export is not None:
                on_export(artifact)
            log.info("exporting %s", path)
            _export(artifact, checkpoint, path, data_dir)
        paths[artifact] = path
    return paths


def _export(artifact: Artifact, checkpoint: Path, path: Path, data_dir: Path | None) -> None:
    if artifact == Artifact.torchscript:
        from lstm_export.export.to_torchscript import export_torchscript

        export_torchscript(checkpoint, path, data_dir=data_dir)
    elif artifact == Artifact.onnx:
        from lstm_export.export.to_onnx import export_onnx

        export_onnx(checkpoint, path, data_dir=data_dir)
    elif artifact == Artifact.onnx_int8:
        from lstm_export.export.quantize import quantize_int8

        quantize_int8(Artifact.onnx.beside(checkpoint), path, data_dir=data_dir)
    elif artifact == Artifact.onnx_fp16:
        from lstm_export.export.fp16 import convert_fp16

        convert_fp16(Artifact.onnx.beside(checkpoint), path, data_dir=data_dir)
