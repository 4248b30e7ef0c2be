"""Export parity on the MNIST test set: eager vs ONNX Runtime vs TorchScript vs onnx.reference.

Exports a checkpoint with ``lstm-export``'s library (dynamo ONNX, legacy ONNX, TorchScript, int8),
then runs the test images (all 10,000 unless ``--images``) through every backend and prints, for
each pair, the largest absolute logit difference and the argmax agreement, plus each backend's
accuracy and the export timings. Exits 1 when any fp32 pair differs by more than ``--tolerance``
or disagrees on any argmax, or when the int8 file loses more than 0.3 points (``--int8-max-drop``).

Every file runs through the runner registry (``make_runner``: eager, TorchScript, ONNX Runtime,
all on the CPU) and every comparison is :func:`lstm_export.parity.compare`. The one exception is
``onnx.reference``: the ONNX specification's own Python interpreter, run on the dynamo ONNX file
as an oracle independent of the product (a measuring instrument, not a backend of lstm-export).

    LSTM_EXPORT_DATA_DIR=../shared/data/mnist \\
        .venv/bin/python benchmarks/export_parity.py runs/latest/model.pt [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lstm_export.errors import LstmExportError

#: images per call
BATCH = 1000
#: the int8 file may lose at most this much top-1 accuracy against fp32 (0.003 = 0.3 points)
MAX_INT8_DROP = 0.003


def run_backend(path: Path, backend: str, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Logits of ``images`` from ``path`` run by the ``backend`` runner on the CPU, and seconds."""
    from lstm_export.infer.registry import make_runner

    with make_runner(path, backend, "cpu") as runner:
        t0 = time.perf_counter()
        logits = runner.infer_all(images, batch_size=BATCH)
        return logits, time.perf_counter() - t0


def run_onnx_reference(path: Path, images: np.ndarray) -> tuple[np.ndarray, float]:
    """Logits from ``onnx.reference.ReferenceEvaluator``: the independent oracle (see above)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(onnx.load(str(path)))
    name = evaluator.input_names[0]
    t0 = time.perf_counter()
    parts = []
    for i in range(0, len(images), BATCH):
        outputs = evaluator.run(None, {name: images[i : i + BATCH]})
        first = outputs[0] if isinstance(outputs, list) else next(iter(outputs.values()))
        parts.append(np.asarray(first, dtype=np.float32))
    return np.concatenate(parts), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="run folder or model.pt")
    parser.add_argument("--out-dir", type=Path, help="where to write the exports (default: temp)")
    parser.add_argument(
        "--data-dir", type=Path, help="MNIST folder (default: $LSTM_EXPORT_DATA_DIR, the cache)"
    )
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument(
        "--images", type=int, default=10000, help="first N test images compared (default: all)"
    )
    parser.add_argument(
        "--int8-max-drop",
        type=float,
        default=MAX_INT8_DROP,
        help="accuracy the int8 file may lose, 0.003 = 0.3 points (a looser one for tiny models)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be >= 1, got {args.images}")
    if not 0 <= args.int8_max_drop < 1:
        parser.error(f"--int8-max-drop must be in [0, 1), got {args.int8_max_drop}")
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation notices

    import onnx
    import onnxruntime as ort
    import torch

    from lstm_export import parity
    from lstm_export.checkpoint import resolve_checkpoint
    from lstm_export.data.cli import require_mnist
    from lstm_export.data.mnist import load_split
    from lstm_export.data.preprocess import to_model_input
    from lstm_export.errors import ValidationError
    from lstm_export.export.quantize import quantize_int8
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.export.to_torchscript import export_torchscript
    from lstm_export.fileio import file_digest

    checkpoint = resolve_checkpoint(args.checkpoint)
    data_dir = require_mnist(args.data_dir)
    test = load_split(data_dir, "test")
    images = to_model_input(test.images[: args.images])
    labels = test.labels[: args.images]
    work = tempfile.TemporaryDirectory(prefix="export-parity-")
    out_dir = args.out_dir or Path(work.name)
    out_dir.mkdir(parents=True, exist_ok=True)

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    onnx_report = export_onnx(checkpoint, out_dir / "model.onnx", data_dir=data_dir)
    timings["onnx (dynamo) export+validate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    legacy_report = export_onnx(
        checkpoint, out_dir / "model.legacy.onnx", legacy=True, data_dir=data_dir
    )
    timings["onnx (legacy) export+validate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ts_report = export_torchscript(checkpoint, out_dir / "model.ts", data_dir=data_dir)
    timings["torchscript export+validate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    int8_path: Path | None = None
    int8_error = ""
    int8_nodes = 0
    try:
        int8_report = quantize_int8(
            onnx_report.path,
            out_dir / "model.int8.onnx",
            data_dir=data_dir,
            max_accuracy_drop=args.int8_max_drop,
        )
        int8_path, int8_nodes = int8_report.path, int8_report.quantized_lstm_nodes
    except ValidationError as exc:  # the export's own accuracy guard on the 10k test set
        int8_error = str(exc)
    timings["int8 quantize+guard (10k)"] = time.perf_counter() - t0

    backends: dict[str, tuple[Path, str]] = {
        "eager": (checkpoint, "eager"),
        "onnxruntime (dynamo)": (onnx_report.path, "onnxruntime"),
        "onnxruntime (legacy)": (legacy_report.path, "onnxruntime"),
        "torchscript": (ts_report.path, "torchscript"),
    }
    logits: dict[str, np.ndarray] = {}
    run_seconds: dict[str, float] = {}
    for name, (path, backend) in backends.items():
        logits[name], run_seconds[name] = run_backend(path, backend, images)
    name = "onnx.reference"
    logits[name], run_seconds[name] = run_onnx_reference(onnx_report.path, images)

    names = list(logits)
    pairs = []
    ok = True
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pair = parity.compare(logits[b], logits[a])
            good = not parity.problems(pair, tolerance=args.tolerance, min_agreement=1.0)
            ok &= good
            pairs.append(
                {
                    "a": a,
                    "b": b,
                    "max_abs_diff": pair.max_abs_diff,
                    "argmax_agree": pair.images - pair.disagreements,
                    "ok": good,
                }
            )
    accuracies = {
        n: parity.compare(lg, logits["eager"], labels).accuracy or 0.0 for n, lg in logits.items()
    }
    int8: dict[str, Any] = {}
    int8_line = f"FAIL: {int8_error}"
    if int8_path is not None:
        int8_logits, _ = run_backend(int8_path, "onnxruntime", images)
        guard = parity.compare(int8_logits, logits["onnxruntime (dynamo)"], labels)
        assert guard.accuracy is not None and guard.reference_accuracy is not None
        drop = guard.reference_accuracy - guard.accuracy
        found = parity.problems(guard, max_accuracy_drop=args.int8_max_drop)
        int8 = {"fp32": guard.reference_accuracy, "int8": guard.accuracy, "drop": drop}
        int8_line = (
            f"{guard.accuracy * 100:6.2f} %   (fp32 {guard.reference_accuracy * 100:.2f} %, "
            f"drop {drop * 100:.2f} points, {int8_nodes} DynamicQuantizeLSTM)"
            + "".join(f"  FAIL: {p}" for p in found)
        )
        ok &= not found
    else:
        int8 = {"error": int8_error}
        ok = False

    print(
        f"checkpoint {checkpoint} (sha256 {file_digest(checkpoint)[:12]}), "
        f"{len(labels)} test images"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, threads {torch.get_num_threads()}"
    )
    print("\nexports")
    for what, seconds in timings.items():
        print(f"  {what:<32} {seconds:6.1f} s")
    for label, rep in (("dynamo", onnx_report), ("legacy", legacy_report)):
        print(
            f"  onnx ({label}): opset {rep.opset}, {rep.audit.node_count} nodes, "
            f"{len(rep.audit.lstm_nodes)} native LSTM, {rep.file_size:,} bytes"
        )
    print(f"  torchscript: {ts_report.method}, {ts_report.file_size:,} bytes")
    print(f"\naccuracy ({len(labels)} images) and time for all of them")
    for n in names:
        print(f"  {n:<22} {accuracies[n] * 100:6.2f} %   {run_seconds[n]:6.2f} s")
    print(f"  {'onnxruntime int8':<22} {int8_line}")
    print(f"\npairwise parity (tolerance {args.tolerance:g}, argmax must agree on all)")
    for p in pairs:
        mark = "ok" if p["ok"] else "FAIL"
        print(
            f"  {p['a']:<22} vs {p['b']:<22} max |diff| {p['max_abs_diff']:.2e}  "
            f"argmax {p['argmax_agree']}/{len(labels)}  {mark}"
        )
    print("\nresult:", "PASS" if ok else "FAIL")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "checkpoint": str(checkpoint),
                    "images": len(labels),
                    "timings_s": timings,
                    "accuracy": accuracies,
                    "int8": int8,
                    "pairs": pairs,
                    "run_seconds": run_seconds,
                    "pass": ok,
                },
                indent=2,
            )
            + "\n"
        )
    work.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LstmExportError as exc:  # one line, as the lstm-export commands print it
        sys.exit(f"error: {exc}")
