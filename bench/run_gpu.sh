#!/usr/bin/env bash
# Runs the GPU benchmark on a machine with torch/transformers/accelerate, installing diffusers from local wheels
# if it is missing (no network needed). Results: $OUT/gpu.json and $OUT/BENCHMARKS.md (default OUT: build/bench).
#
#   bash bench/run_gpu.sh                    # every point that fits in the time budget (--budget-s 420: a 10-minute call)
#   bash bench/run_gpu.sh --resume           # measure the points not yet in $OUT/gpu.json (or build/gpu.json)
# Wheels: pip download --no-deps -d build/wheels diffusers==0.42.1 importlib_metadata zipp (and pillow if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-build/bench}"
PY="${PYTHON:-$(command -v python || command -v python3)}"
mkdir -p "$OUT"
if ! "$PY" -c "import diffusers, sys; sys.exit(diffusers.__version__ != '0.42.1')" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --find-links build/wheels diffusers==0.42.1
fi
if [[ -f build/gpu.json && ! -f "$OUT/gpu.json" ]]; then
    cp build/gpu.json "$OUT/gpu.json"  # an earlier, partial run carried in: --resume continues it
fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv || true
"$PY" bench/gpu.py --json "$OUT/gpu.json" --doc "$OUT/BENCHMARKS.md" --budget-s 420 "$@"
