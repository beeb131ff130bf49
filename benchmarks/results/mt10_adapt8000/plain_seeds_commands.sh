#!/bin/bash
# mt10, the plain policy from the camera alone (row plain), seeds 1 and 2 at once (one core each), 8,000 steps:
# the baseline of RepWAM's 0.625 +- 0.03 (mt10_adapt8000, seeds 0-2). Data regenerated identically (seeded).
cd /work/main
export OMP_NUM_THREADS=1
.venv/bin/repwam ablate --out outputs/mt10cam --rows plain --seeds 1 2 --tasks mt10 --episodes-per-task 20 --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 8000 --plain-steps 8000 --eval-episodes 20 --estimator-cameras corner3,corner --estimator-layouts-per-task 80 --jobs 2 --eval-workers 1 --keep-snapshots 8
