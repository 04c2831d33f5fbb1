#!/usr/bin/env bash
# Realism ablation (issue 10): fine-tune the shipped V2 weights for a fixed budget on synthetic stacks
# with one real-optics effect at a time (core/realism.py), plus a control without any and one with all.
# Two queues, one thread each (2-core CPU). Then evaluate all checkpoints side by side:
#   python benchmarks/bench_real.py --max-side 384 $(for v in ...; do echo --weights $v=runs/realism/$v/v2.pt; done)
#   python benchmarks/bench_v2.py --skip real speed ablation --weights ...
set -euo pipefail
OUT=${OUT:-runs/realism}
STEPS=${STEPS:-100}
EPOCHS=${EPOCHS:-2}
run() {
    local v=$1 flag=""
    [ "$v" != none ] && flag="--realism $v"
    OMP_NUM_THREADS=1 stackmff --quiet train --model stackmff-v2 --objective hybrid \
        --init-weights weights/stackmff_v2.pt --epochs "$EPOCHS" --steps "$STEPS" --batch-size 4 --crop 96 \
        --n-min 3 --n-max 24 --val-stacks 8 --pool-size 16 --refresh-every 4 --lr 3e-4 --lr-gamma 0.93 \
        --clean-fraction 0.3 --seed 5 $flag --realism-p 0.7 --checkpoint "$OUT/$v/v2.pt" > "$OUT/$v.log" 2>&1
}
mkdir -p "$OUT"
# Variants as arguments (default: all of them); each queue takes every other one.
VARIANTS=("${@:-none psf breathing shift jpeg vignetting sensor all}")
read -r -a VARIANTS <<< "${VARIANTS[*]}"
( for ((i = 0; i < ${#VARIANTS[@]}; i += 2)); do run "${VARIANTS[i]}"; done ) &
( for ((i = 1; i < ${#VARIANTS[@]}; i += 2)); do run "${VARIANTS[i]}"; done ) &
wait
