#!/bin/bash
# mt10 from the camera alone, 20 demonstrations per task: `latent_policy` (the action expert alone on the aligned
# tokenizer's latents, trained from scratch for 8,000 steps: no pretraining, no ℓ, no forecast) for seeds 0, 1, 2,
# beside RepWAM's 0.625 +- 0.03 and the plain policy's 0.59 +- 0.05 at 8,000 steps on the same data and evaluation
# layouts (2026-12-06, twenty-seventh sitting). In outputs/mt10cam, where the plain policy's seeds 1 and 2 ran; its
# tokenizer and LAT were retrained there by the same seeded commands. One job on one core (~42 min of training at
# 3.2 steps/s, ~11 min of evaluation).
cd /work/main
export OMP_NUM_THREADS=1
.venv/bin/repwam ablate --out outputs/mt10cam --rows latent_policy --seeds 0 1 2 --tasks mt10 --episodes-per-task 20 \
  --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 8000 --plain-steps 8000 --eval-episodes 20 \
  --estimator-cameras corner3,corner --estimator-layouts-per-task 80 --jobs 1 --eval-workers 1 --keep-snapshots 8
R=benchmarks/results/mt10_adapt8000
cp -r outputs/mt10cam/eval/wam_latent_policy_s* $R/eval/
python benchmarks/val_losses.py outputs/mt10cam/runs/wam_latent_policy_s* --out $R/val_losses_latent_policy.json
