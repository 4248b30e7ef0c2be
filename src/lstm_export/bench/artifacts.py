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
    from lstm_export.export.fp16 import convert_fp16
    from lstm_export.export.quantize import quantize_int8
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.export.to_torchscript import export_torchscript

    wanted = set(needed)
    if Artifact.onnx_int8 in wanted or Artifact.onnx_fp16 in wanted:
        wanted.add(Artifact.onnx)  # both are made from the fp32 graph
    paths: dict[Artifact, Path] = {Artifact.checkpoint: checkpoint}
    make: dict[Artifact, Callable[..., object]] = {  # in order: int8 and fp16 need the ONNX
        Artifact.torchscript: export_torchscript,
        Artifact.onnx: export_onnx,
        Artifact.onnx_int8: quantize_int8,
        Artifact.onnx_fp16: convert_fp16,
    }
    for artifact in [a for a in make if a in wanted]:
        path = artifact.beside(checkpoint)
        if force or not path.is_file() or path.stat().st_mtime < checkpoint.stat().st_mtime:
            if on_export is not None:
                on_export(artifact)
            log.info("exporting %s", path)
            source = paths.get(Artifact.onnx, checkpoint)  # int8, fp16: the ONNX made before
            make[artifact](source, path, data_dir=data_dir)
        paths[artifact] = path
    return paths
