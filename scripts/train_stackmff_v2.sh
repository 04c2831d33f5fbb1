#!/usr/bin/env bash
# The exact recipe behind weights/stackmff_v2.pt (model card with metrics: weights/stackmff_v2.md).
# Three stages on a 2-core CPU (no GPU was lent). On a GPU add --device cuda; the data are the same.
# Every stage checkpoints each epoch; add --resume to go on after an interruption.
set -euo pipefail

# Stage 1 (39 min, 1 thread): the published depth-regression objective from scratch.
OMP_NUM_THREADS=1 stackmff train --model stackmff-v2 --objective depth --epochs 25 --steps 80 --batch-size 4 \
    --crop 96 --n-min 4 --n-max 16 --val-stacks 12 --refresh-every 6 --seed 0 --checkpoint runs/v2/stackmff_v2.pt

# Stage 2 (54 min, 1 thread): the hybrid objective (depth + two-hot cross-entropy + image L1 against the
# all-in-focus truth) on 3-24 slices; selection by validation PSNR (best: epoch 18 of 22).
OMP_NUM_THREADS=1 stackmff train --model stackmff-v2 --objective hybrid --init-weights runs/v2/stackmff_v2.best.pt \
    --epochs 22 --steps 100 --batch-size 4 --crop 96 --n-min 3 --n-max 24 --val-stacks 24 \
    --pool-size 36 --refresh-every 6 --lr 5e-4 --lr-gamma 0.95 --seed 1 --checkpoint runs/ft_hybrid/stackmff_v2.pt

# Stage 3 (2 threads): the same with 30% noise-free stacks, so well-exposed data are covered too.
OMP_NUM_THREADS=2 stackmff train --model stackmff-v2 --objective hybrid --init-weights runs/ft_hybrid/stackmff_v2.best.pt \
    --epochs 14 --steps 100 --batch-size 4 --crop 96 --n-min 3 --n-max 24 --val-stacks 24 \
    --pool-size 36 --refresh-every 6 --lr 3e-4 --lr-gamma 0.93 --clean-fraction 0.3 --seed 2 \
    --checkpoint runs/ft_mix/stackmff_v2.pt

# Ship the best checkpoint of the last stage once benchmarks/bench_v2.py says it is better:
#   cp runs/ft_mix/stackmff_v2.best.pt weights/stackmff_v2.pt
