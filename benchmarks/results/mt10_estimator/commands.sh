#!/bin/bash
# mt10, RepWAM with the two-view estimator (corner3 + corner, 80 more layouts per task), seed 0, adaptation 8,000 steps
cd /work/main
export OMP_NUM_THREADS=1
.venv/bin/repwam ablate --out outputs/mt10est --rows repwam_est --seeds 0 --tasks mt10 --episodes-per-task 20 --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 8000 --eval-episodes 20 --estimator-cameras corner3,corner --estimator-layouts-per-task 80 --jobs 1 --eval-workers 1 --keep-snapshots 8
# then its baseline at the same budget (the plain policy with the same estimator, 8,000 steps), in the same --out:
.venv/bin/repwam ablate --out outputs/mt10est --rows plain_estimator --seeds 0 --tasks mt10 --episodes-per-task 20 --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 8000 --plain-steps 8000 --eval-episodes 20 --estimator-cameras corner3,corner --estimator-layouts-per-task 80 --jobs 1 --eval-workers 1 --keep-snapshots 8
# RepWAM est at 16,000 adaptation steps (its data, tokenizer, LAT, estimator and pretraining are mt10est's, linked:
# mkdir -p outputs/mt10est16k/runs; ln -s ../mt10est/data outputs/mt10est16k/data; and in runs/ links to
# ../../mt10est/runs/{estimator,lat_default,tok_default,wampre_repwam_s0}); eval -> eval/wam_repwam_est_16k_s0
.venv/bin/repwam ablate --out outputs/mt10est16k --rows repwam_est --seeds 0 --tasks mt10 --episodes-per-task 20 --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 16000 --eval-episodes 20 --estimator-cameras corner3,corner --estimator-layouts-per-task 80 --jobs 1 --eval-workers 1 --keep-snapshots 8
# its baseline at 16,000 steps in its own folder (mt10est's outputs having been lost): the data, the estimator's data
# and fit regenerated from the same seeds (the fit identical to fit.json); eval -> eval/plain_plain_estimator_16k_s0
.venv/bin/repwam ablate --out outputs/mt10plain16k --rows plain_estimator --seeds 0 --tasks mt10 --episodes-per-task 20 --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 16000 --plain-steps 16000 --eval-episodes 20 --estimator-cameras corner3,corner --estimator-layouts-per-task 80 --jobs 1 --eval-workers 1 --keep-snapshots 8
python benchmarks/val_losses.py outputs/mt10plain16k/runs/plain_plain_estimator_s0 \
  --out benchmarks/results/mt10_estimator/val_losses_plain_est_16k_s0.json
cp -r outputs/mt10plain16k/eval/plain_plain_estimator_s0 benchmarks/results/mt10_estimator/eval/plain_plain_estimator_16k_s0
