#!/usr/bin/env bash
# The exact recipe behind weights/stackmff_v2.pt (see weights/stackmff_v2.md for metrics).
# CPU, one thread per run (two runs side by side on 2 cores slow each other badly otherwise);
# on a GPU drop OMP_NUM_THREADS and add --device cuda: the data are the same, only faster.
# Each stage checkpoints every epoch; add --resume to go on after an interruption.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# Stage 1: the published depth-regression objective from scratch (25 epochs x 80 batches).
stackmff train --model stackmff-v2 --objective depth --epochs 25 --steps 80 --batch-size 4 --crop 96 \
    --n-min 4 --n-max 16 --val-stacks 12 --refresh-every 6 --seed 0 --checkpoint runs/v2/stackmff_v2.pt

# Stage 2: fine-tune with the hybrid objective (depth + two-hot cross-entropy + image L1 against the
# all-in-focus truth) on longer stacks (3-24 slices); selection by validation PSNR.
stackmff train --model stackmff-v2 --objective hybrid --init-weights runs/v2/stackmff_v2.best.pt \
    --epochs 30 --steps 100 --batch-size 4 --crop 96 --n-min 3 --n-max 24 --val-stacks 24 \
    --pool-size 36 --refresh-every 6 --lr 5e-4 --lr-gamma 0.95 --seed 1 --checkpoint runs/ft_hybrid/stackmff_v2.pt

# Ship: the best checkpoint of stage 2, once benchmarks/bench_v2.py says it is better.
# cp runs/ft_hybrid/stackmff_v2.best.pt weights/stackmff_v2.pt
