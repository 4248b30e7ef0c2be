"""Make sure every file the bench needs exists and is fresh, exporting what is missing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from lstm_export.artifacts import Artifact

log = logging.getLogger(__name__)


def ensure_artifacts(
    checkpoint: Path,
    needed: Iterable[Artifact],
    *,
    data_dir: Path | None = None,
    force: bool = False,
    on_export: Callable[[Artifact], None] | None = None,
) -> dict[Artifact, Path]:
    """Paths of the needed artifacts beside ``checkpoint``; missing ones and ones older than the
    checkpoint are exported (and validated against eager PyTorch by the export stage)."""
    wanted = set(needed)
    if Artifact.onnx_int8 in wanted or Artifact.onnx_fp16 in wanted:
        wanted.add(Artifact.onnx)  # both are made from the fp32 graph
    paths: dict[Artifact, Path] = {Artifact.checkpoint: checkpoint}
    order = [Artifact.torchscript, Artifact.onnx, Artifact.onnx_int8, Artifact.onnx_fp16]
    for artifact in order:
        if artifact not in wanted:
            continue
        path = artifact.beside(checkpoint)
        if force or not path.is_file() or path.stat().st_mtime < checkpoint.stat().st_mtime:
            if on_export is not None:
                on_export(artifact)
            log.info("exporting %s", path)
            _export(artifact, checkpoint, path, data_dir)
        paths[artifact] = path
    return paths


def _export(artifact: Artifact, checkpoint: Path, path: Path, data_dir: Path | None) -> None:
    from lstm_export.export.fp16 import convert_fp16
    from lstm_export.export.quantize import quantize_int8
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.export.to_torchscript import export_torchscript

    source = {Artifact.torchscript: checkpoint, Artifact.onnx: checkpoint}
    make: dict[Artifact, Callable[..., object]] = {
        Artifact.torchscript: export_torchscript,
        Artifact.onnx: export_onnx,
        Artifact.onnx_int8: quantize_int8,
        Artifact.onnx_fp16: convert_fp16,
    }
    make[artifact](source.get(artifact, Artifact.onnx.beside(checkpoint)), path, data_dir=data_dir)
