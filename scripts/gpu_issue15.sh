#!/usr/bin/env bash
# Issue 15's GPU figures in one device call. Here:  bash scripts/gpu_issue15.sh --prepare
# (copies the official V2 checkpoint into the git-ignored .device/), then with the `run` tool:
#   command: bash scripts/gpu_issue15.sh   carry: [".device"]   timeout_s: 560
# The tables go to $OUT/bench_gpu.txt (classical first: it is the shorter part, so a cut-off run keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
    mkdir -p .device && cp ../shared/reference/stackmff_v2_official/model.pth .device/official_v2.pth
    exit 0
fi
export PYTHONPATH=src
out=${OUT:-.device}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/bench_gpu.txt"
timeout 200 python benchmarks/bench_gpu.py --only classical 2>&1 | tee -a "$out/bench_gpu.txt" || true
timeout 330 python benchmarks/bench_gpu.py --only v2 --official .device/official_v2.pth 2>&1 | tee -a "$out/bench_gpu.txt"
