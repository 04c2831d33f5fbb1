#!/usr/bin/env bash
# Issue 28, item 3: fine-tune the shipped StackMFF-V2 on physically rendered stacks (core.render), mixed with
# today's synthetic stacks so nothing is lost there. 2-core CPU, no GPU lent; on a GPU add --device cuda and
# raise --workers. Training seeds start at 0 (held-out benchmark seeds start at 900000: bench_physical.py).
set -euo pipefail
DATA=${DATA:-runs/physdata}

# 1. Data (about 2 s per microscope stack and 15 s per lens stack on one core; --workers N processes).
OMP_NUM_THREADS=1 stackmff synth "$DATA/brightfield" --physical brightfield --count 240 --size 192 --n-max 12 --workers 1
OMP_NUM_THREADS=1 stackmff synth "$DATA/fluorescence" --physical fluorescence --count 240 --size 192 --n-max 12 --workers 1
OMP_NUM_THREADS=1 stackmff synth "$DATA/macro" --physical macro --count 60 --size 160 --n-max 8 --workers 1
OMP_NUM_THREADS=1 stackmff synth "$DATA/synthetic" --count 200 --size 192 --n-min 4 --n-max 16 --seed 5000

# 2. One labelled folder (training takes one): links to every scene of the four.
mkdir -p "$DATA/all"
for sub in stacks depth_maps aif; do
  mkdir -p "$DATA/all/$sub"
  for kind in brightfield fluorescence macro synthetic; do
    for p in "$DATA/$kind/$sub"/*; do ln -sfn "$(readlink -f "$p")" "$DATA/all/$sub/"; done
  done
done

# 3. Fine-tune from the shipped weights (hybrid objective, as stage 3 of train_stackmff_v2.sh), lower lr.
OMP_NUM_THREADS=1 stackmff train --model stackmff-v2 --objective hybrid --data "$DATA/all" \
    --init-weights weights/stackmff_v2.pt --epochs 12 --steps 60 --batch-size 4 --crop 96 --val-stacks 24 \
    --lr 2e-4 --lr-gamma 0.93 --seed 3 --checkpoint runs/physical_v2/stackmff_v2.pt

# 4. Compare on the held-out physical benchmark, the synthetic one and the real stacks before shipping:
#   python benchmarks/bench_physical.py --weights physical=runs/physical_v2/stackmff_v2.best.pt
