#!/usr/bin/env bash
# The GPU proof in one command: environment report, CUDA tests, the CUDA-graph shape test, and
# `lstm-export bench --device cuda` with parity, written to benchmarks/results/gpu/.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#
# Needs: an NVIDIA GPU and driver; torch with CUDA; onnxruntime-gpu built for the same CUDA
# major as torch (1.31 wheels: CUDA 13, so torch >= 2.9 cu13x); the package's dependencies; and
# MNIST (LSTM_EXPORT_DATA_DIR, the cache, or network to fetch it). Each need is checked first.
# PYTHON picks the interpreter (default: .venv/bin/python, else python3); the package is run
# from src/ without installing it. On a machine without a package index, GPU_CHECK_WHEELS names a
# folder of wheels (onnxruntime-gpu, say) that are installed into GPU_CHECK_SITE (default
# /tmp/gpu-check-site) and put ahead of the interpreter's own packages; a wheel split into parts
# (`split -b 60M NAME.whl NAME.whl.part-`) is joined first.
#
# Exit codes: 0 all checks passed; 1 a check failed; 2 no usable GPU (the checks that need none
# ran, and the report says what could not be checked); 3 a prerequisite is missing.
# Budget: about 5 minutes on one H200 (training the seed model on the CPU takes most of it; a
# model.pt already in GPU_CHECK_RUN, default runs/gpu-check, is used as it is).
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT="${GPU_CHECK_OUT:-benchmarks/results/gpu}"
RUN="${GPU_CHECK_RUN:-runs/gpu-check}"
mkdir -p "$OUT"
LOG="$OUT/gpu-check.log"
: >"$LOG"
say() { echo "gpu_check: $*" | tee -a "$LOG"; }
cli() { "$PYTHON" -m lstm_export "$@"; }

say "interpreter $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

# -- 0. wheels brought along for an offline machine --------------------------------------------
if [[ -n "${GPU_CHECK_WHEELS:-}" ]]; then
    site="${GPU_CHECK_SITE:-/tmp/gpu-check-site}"
    joined=$(mktemp -d)
    trap 'rm -rf "$joined"' EXIT
    shopt -s nullglob
    for whl in "$GPU_CHECK_WHEELS"/*.whl; do ln -s "$(realpath "$whl")" "$joined/"; done
    for first in "$GPU_CHECK_WHEELS"/*.whl.part-aa; do
        whl="${first%.part-aa}"
        cat "$whl".part-* >"$joined/$(basename "$whl")"
    done
    wheels=("$joined"/*.whl)
    shopt -u nullglob
    if [[ ${#wheels[@]} -eq 0 ]]; then
        say "GPU_CHECK_WHEELS=$GPU_CHECK_WHEELS holds no wheel (NAME.whl or NAME.whl.part-aa, -ab, ...)"
        exit 3
    fi
    if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade \
            --target "$site" "${wheels[@]}" >>"$LOG" 2>&1; then
        say "could not install the wheels in $GPU_CHECK_WHEELS into $site (see $LOG)"
        exit 3
    fi
    export PYTHONPATH="$PWD/src:$site${PYTHONPATH#"$PWD/src"}"
    say "installed into $site: $(cd "$joined" && ls -- *.whl | tr '\n' ' ')"
fi

# -- 1. prerequisites ---------------------------------------------------------------------------
missing=$("$PYTHON" - <<'EOF'
import importlib.util
need = ["torch", "onnx", "onnxruntime", "onnxscript", "typer", "rich", "numpy", "PIL",
        "matplotlib", "pytest"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
if [[ -n "$missing" ]]; then
    say "missing Python packages: $missing (install the project's dependencies first)"
    exit 3
fi

# -- 2. environment report (which providers a real session obtains, not which are listed) -------
"$PYTHON" - <<'EOF' | tee "$OUT/environment.json" | tee -a "$LOG"
import json, platform, subprocess
import onnxruntime as ort, torch
from lstm_export import devices, ort_session

def smi():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None

report = {
    "python": platform.python_version(),
    "nvidia_smi": smi(),
    "nvidia_driver": devices.nvidia_driver_present(),
    "torch": torch.__version__,
    "torch_cuda": torch.version.cuda,
    "torch_cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
    "torch_cuda_problem": devices.torch_cuda_problem(),
    "onnxruntime": ort.__version__,
    "onnxruntime_cuda_build": ort_session.ort_has_cuda_build(),
    "onnxruntime_cuda_major": ort_session.ort_cuda_major(),
    "onnxruntime_pairing_problem": ort_session.cuda_pairing_problem(),
    "onnxruntime_diagnosis": None,
    "below_tested_floors": None,
}
try:  # the dependencies' versions against the floors pyproject.toml declares (tested ones)
    import importlib.metadata as md
    import tomllib
    from packaging.requirements import Requirement

    with open("pyproject.toml", "rb") as f:
        declared = tomllib.load(f)["project"]["dependencies"]
    low = []
    for req in map(Requirement, declared):
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            low.append(f"{req.name} not installed")
            continue
        if not req.specifier.contains(have, prereleases=True):
            low.append(f"{req.name} {have} (declared {req.specifier})")
    report["below_tested_floors"] = low
except ImportError:  # Python 3.10 (no tomllib) or no packaging: not checked
    pass
if not report["onnxruntime_cuda_build"] or report["onnxruntime_pairing_problem"]:
    report["onnxruntime_diagnosis"] = ort_session.cuda_diagnosis()
print(json.dumps(report, indent=2))
EOF

low=$("$PYTHON" -c 'import json, sys; print("; ".join(json.load(sys.stdin)["below_tested_floors"] or []))' <"$OUT/environment.json")
[[ -n "$low" ]] && say "WARNING: outside the versions this project declares and tested: $low"

gpu=$("$PYTHON" -c 'from lstm_export.devices import torch_cuda_problem as p; print("yes" if p() is None else "no")')
ort_gpu=$("$PYTHON" -c 'from lstm_export import ort_session as s; print("yes" if s.ort_has_cuda_build() and s.cuda_pairing_problem() is None else "no")')

# -- 3. checks that need no GPU (the CUDA logic tested on the CPU) -------------------------------
say "CPU-side checks of the CUDA code paths"
if ! "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda_logic.py 2>&1 | tee -a "$LOG"; then
    say "FAILED: CPU-side checks of the CUDA code paths"
    exit 1
fi

if [[ "$gpu" != yes ]]; then
    say "no GPU: torch cannot use CUDA here ($("$PYTHON" -c 'from lstm_export.devices import torch_cuda_problem as p; print(p())'))"
    say "not checked: CUDA tests, the CUDA-graph shape test, the CUDA bench table"
    exit 2
fi
if [[ "$ort_gpu" != yes ]]; then
    say "ONNX Runtime cannot use CUDA: $("$PYTHON" -c 'from lstm_export.ort_session import cuda_diagnosis as d; print(d())')"
    say "install onnxruntime-gpu for torch's CUDA major, then run this again"
    exit 3
fi

# -- 4. MNIST ----------------------------------------------------------------------------------
if ! cli data --json >"$OUT/data.json" 2>>"$LOG"; then
    say "MNIST is not available (set LSTM_EXPORT_DATA_DIR to a folder with the four IDX files)"
    exit 3
fi

# -- 5. CUDA tests, the CUDA-graph shape test among them -----------------------------------------
say "CUDA tests"
if ! "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tee -a "$LOG"; then
    say "FAILED: CUDA tests"
    exit 1
fi

# -- 6. the CUDA bench table -----------------------------------------------------------------------
say "training the seed model and exporting (fp32, fp16 validated on CUDA, TorchScript)"
if [[ ! -f "$RUN/model.pt" ]]; then
    cli train --out "$RUN" >>"$LOG" 2>&1 || { say "FAILED: train"; exit 1; }
fi
cli onnx "$RUN" --fp16 >>"$LOG" 2>&1 || { say "FAILED: onnx --fp16"; exit 1; }
cli torchscript "$RUN" >>"$LOG" 2>&1 || { say "FAILED: torchscript"; exit 1; }
say "bench --device cuda --batch-sizes 1,64,1024"
# half a second per batch size is thousands of calls on a GPU; at most 5 rounds bounds the time
if ! cli bench "$RUN" --device cuda --batch-sizes 1,64,1024 --seconds 0.5 --rounds 3 --max-rounds 5 \
        -o "$OUT/bench-cuda.json" --markdown >"$OUT/bench-cuda.md" 2>>"$LOG"; then
    say "FAILED: bench --device cuda"
    exit 1
fi
say "done: $OUT/bench-cuda.md, $OUT/bench-cuda.json, $OUT/environment.json, $LOG"
