#!/bin/bash
# mt10, the plain policy from the camera alone (row plain), seed 0, 8,000 steps: the baseline of RepWAM's 0.63 at
# 8,000 adaptation steps (mt10_adapt8000; that run's outputs were lost, the data are regenerated identically in
# outputs/mt10est, linked here). Waits for the inference-setting evaluations (outputs/execute/sel.sh), then pauses
# the mt10 plain_estimator 16k run (resumable) for the core.
cd /work/main
export OMP_NUM_THREADS=1
while pgrep -f "outputs/execute/sel.sh" > /dev/null; do sleep 10; done
pkill -f "outputs/mt10plain16k.sh"; pkill -f "ablate --out outputs/mt10plain16k"; pkill -f "train plain --data outputs/mt10plain16k"
.venv/bin/repwam ablate --out outputs/mt10cam --rows plain --seeds 0 --tasks mt10 --episodes-per-task 20 --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 8000 --plain-steps 8000 --eval-episodes 20 --estimator-cameras corner3,corner --estimator-layouts-per-task 80 --jobs 1 --eval-workers 2 --keep-snapshots 8
