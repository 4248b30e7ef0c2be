"""Export parity on the full MNIST test set: eager vs ONNX Runtime vs TorchScript vs onnx.reference.

Exports a checkpoint with ``lstm-export``'s library (dynamo ONNX, legacy ONNX, TorchScript, int8),
then runs all 10,000 test images through every backend and prints, for each pair, the largest
absolute logit difference and the argmax agreement, plus each backend's accuracy and the export
timings. Exits 1 when any fp32 pair differs by more than ``--tolerance`` or disagrees on any
argmax, or when the int8 file loses more than 0.3 points.

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
from collections.abc import Callable
from pathlib import Path

import numpy as np

BATCH = 1000


def _run_all(
    predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray
) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = np.concatenate([predict(images[i : i + BATCH]) for i in range(0, len(images), BATCH)])
    return out.astype(np.float32), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="run folder or model.pt")
    parser.add_argument("--out-dir", type=Path, help="where to write the exports (default: temp)")
    parser.add_argument(
        "--data-dir", type=Path, help="MNIST folder (default: $LSTM_EXPORT_DATA_DIR)"
    )
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation notices

    import onnx
    import onnxruntime as ort
    import torch
    from onnx.reference import ReferenceEvaluator

    from lstm_export.export.quantize import quantize_int8
    from lstm_export.export.source import load_source
    from lstm_export.export.to_onnx import export_onnx
    from lstm_export.export.to_torchscript import export_torchscript
    from lstm_export.export.validate import (
        eager_predict,
        load_test_set,
        ort_predict,
        ort_session,
        torchscript_predict,
    )

    images, labels = load_test_set(args.data_dir)
    work = tempfile.TemporaryDirectory(prefix="export-parity-")
    out_dir = args.out_dir or Path(work.name)
    out_dir.mkdir(parents=True, exist_ok=True)

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    onnx_report = export_onnx(args.checkpoint, out_dir / "model.onnx", data_dir=args.data_dir)
    timings["onnx (dynamo) export+validate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    legacy_report = export_onnx(
        args.checkpoint, out_dir / "model.legacy.onnx", legacy=True, data_dir=args.data_dir
    )
    timings["onnx (legacy) export+validate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ts_report = export_torchscript(args.checkpoint, out_dir / "model.ts", data_dir=args.data_dir)
    timings["torchscript export+validate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    int8_report = quantize_int8(onnx_report.path, data_dir=args.data_dir)
    timings["int8 quantize+guard (10k)"] = time.perf_counter() - t0

    source = load_source(args.checkpoint)
    reference = ReferenceEvaluator(onnx.load(str(onnx_report.path)))

    def onnx_reference(x: np.ndarray) -> np.ndarray:
        return np.asarray(reference.run(None, {"pixels": x})[0])

    backends: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "eager": eager_predict(source.model),
        "onnxruntime (dynamo)": ort_predict(ort_session(onnx_report.path)),
        "onnxruntime (legacy)": ort_predict(ort_session(legacy_report.path)),
        "torchscript": torchscript_predict(torch.jit.load(str(ts_report.path))),
        "onnx.reference": onnx_reference,
    }
    logits: dict[str, np.ndarray] = {}
    run_seconds: dict[str, float] = {}
    for name, predict in backends.items():
        logits[name], run_seconds[name] = _run_all(predict, images)

    names = list(logits)
    pairs = []
    ok = True
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            diff = float(np.abs(logits[a].astype(np.float64) - logits[b]).max())
            agree = int((logits[a].argmax(1) == logits[b].argmax(1)).sum())
            good = diff <= args.tolerance and agree == len(labels)
            ok &= good
            pairs.append({"a": a, "b": b, "max_abs_diff": diff, "argmax_agree": agree, "ok": good})
    accuracies = {n: float((lg.argmax(1) == labels).mean()) for n, lg in logits.items()}
    int8_ok = int8_report.accuracy_drop <= 0.003
    ok &= int8_ok

    print(f"checkpoint {source.path} (sha256 {source.sha256[:12]}), {len(labels)} test images")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, threads {torch.get_num_threads()}"
    )
    print("\nexports")
    for name, seconds in timings.items():
        print(f"  {name:<32} {seconds:6.1f} s")
    for label, rep in (("dynamo", onnx_report), ("legacy", legacy_report)):
        print(
            f"  onnx ({label}): opset {rep.opset}, {rep.audit.node_count} nodes, "
            f"{len(rep.audit.lstm_nodes)} native LSTM, {rep.file_size:,} bytes"
        )
    print(f"  torchscript: {ts_report.method}, {ts_report.file_size:,} bytes")
    print("\naccuracy (10k) and time for the whole test set")
    for name in names:
        print(f"  {name:<22} {accuracies[name] * 100:6.2f} %   {run_seconds[name]:6.2f} s")
    print(
        f"  {'onnxruntime int8':<22} {int8_report.int8_accuracy * 100:6.2f} %   "
        f"(fp32 {int8_report.fp32_accuracy * 100:.2f} %, drop {int8_report.accuracy_drop * 100:.2f}"
        f" points, {int8_report.quantized_lstm_nodes} DynamicQuantizeLSTM)"
    )
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
                    "checkpoint": str(source.path),
                    "timings_s": timings,
                    "accuracy": accuracies,
                    "int8": {
                        "fp32": int8_report.fp32_accuracy,
                        "int8": int8_report.int8_accuracy,
                        "drop": int8_report.accuracy_drop,
                    },
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
    sys.exit(main())
