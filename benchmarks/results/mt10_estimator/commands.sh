#!/bin/bash
# mt10, RepWAM with the two-view estimator (corner3 + corner, 80 more layouts per task), seed 0, adaptation 8,000 steps
cd /work/main
export OMP_NUM_THREADS=1
.venv/bin/repwam ablate --out outputs/mt10est --rows repwam_est --seeds 0 --tasks mt10 --episodes-per-task 20 --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 8000 --eval-episodes 20 --estimator-cameras corner3,corner --estimator-layouts-per-task 80 --jobs 1 --eval-workers 1 --keep-snapshots 8
# then its baseline at the same budget (the plain policy with the same estimator, 8,000 steps), in the same --out:
.venv/bin/repwam ablate --out outputs/mt10est --rows plain_estimator --seeds 0 --tasks mt10 --episodes-per-task 20 --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 8000 --plain-steps 8000 --eval-episodes 20 --estimator-cameras corner3,corner --estimator-layouts-per-task 80 --jobs 1 --eval-workers 1 --keep-snapshots 8
