"""The files of a run folder, named in one table used by train, export, bench and demo: the
checkpoint ``model.pt`` and what is exported from it, each named after the checkpoint's stem."""

from __future__ import annotations

from enum import Enum
from pathlib import Path


class Artifact(str, Enum):
    """A file of a run folder; the value is its name beside ``model.pt``."""

    checkpoint = "model.pt"
    torchscript = "model.ts"
    onnx = "model.onnx"
    onnx_int8 = "model.int8.onnx"
    onnx_fp16 = "model.fp16.onnx"

    def beside(self, checkpoint: Path) -> Path:
        """This artifact's path next to ``checkpoint``, named after its stem (``run/best.pt`` ->
        ``run/best.onnx``, ``run/best.int8.onnx``...)."""
        checkpoint = Path(checkpoint)
        return checkpoint.with_name(checkpoint.stem + self.value.removeprefix("model"))


#: metrics written by training beside the checkpoint
METRICS_FILE = "metrics.json"
