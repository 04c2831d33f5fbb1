#!/usr/bin/env bash
# Issue 10 runs (2-core CPU, no GPU lent): unsupervised fine-tuning and training from scratch, and the
# real-optics candidate. Figures: benchmarks/RESULTS.md ("Issue 10"). Data licences: weights/stackmff_v2.md.
set -euo pipefail
D=${SHARED:-../shared}/data
# Permissive real stacks (../shared/data README) used for unsupervised training. Held out for
# evaluation: lytro_pairs (research use only), pcb_depthmap_stack, cells3d_nuclei, the pseudoscorpion.
REAL=("$D/keyboard_sweep" "$D/pcb_stack" "$D/smoke/leaves" "$D/real_stacks/beetle_mandibles_nikon"
      "$D/real_stacks/diamond_ring_macro" "$D/real_stacks/rpi_cam_sweep_johnnewto")

case "${1:-}" in
  unsup-ft)  # the shipped (supervised) weights, fine-tuned without labels for a fixed budget: 8 x 40 steps
    OMP_NUM_THREADS=1 stackmff --quiet train --objective unsupervised --data "${REAL[@]}" --epochs 8 \
        --seed 3 --checkpoint runs/unsup_ft/v2.pt ;;
  unsup-scratch)  # random init, labels never used, synthetic stacks: the objective alone
    OMP_NUM_THREADS=1 stackmff --quiet train --objective unsupervised --init-weights none --data synthetic \
        --epochs 12 --steps 60 --batch-size 4 --crop 64 --lr 1e-3 --lr-gamma 0.9 --n-min 3 --n-max 12 \
        --val-stacks 8 --pool-size 16 --refresh-every 4 --seed 4 --checkpoint runs/unsup_scratch/v2.pt ;;
  candidate)  # realism fine-tune (scripts/ablate_realism.sh, the variant kept) + unsupervised on real stacks
    OMP_NUM_THREADS=1 stackmff --quiet train --objective unsupervised --init-weights "${2:?realism checkpoint}" \
        --data "${REAL[@]}" --epochs 8 --seed 6 --checkpoint runs/candidate/v2.pt ;;
  *) echo "usage: $0 unsup-ft | unsup-scratch | candidate CHECKPOINT" >&2; exit 2 ;;
esac
# The candidate's first stage (the realism effects that helped in the ablation, benchmarks/RESULTS.md):
#   OMP_NUM_THREADS=1 stackmff --quiet train --model stackmff-v2 --objective hybrid \
#       --init-weights weights/stackmff_v2.pt --epochs 4 --steps 100 --batch-size 4 --crop 96 --n-min 3 \
#       --n-max 24 --val-stacks 8 --pool-size 16 --refresh-every 4 --lr 3e-4 --lr-gamma 0.93 \
#       --clean-fraction 0.3 --seed 7 --realism breathing,shift --realism-p 0.7 --checkpoint runs/realism_ft/v2.pt
#   then: scripts/train_issue10.sh candidate runs/realism_ft/v2.pt
