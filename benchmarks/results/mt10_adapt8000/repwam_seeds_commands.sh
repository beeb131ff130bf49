#!/bin/bash
# Renamed 2026-12-07 (thirty-sixth sitting), when ℓ left out of the adaptation became its default: the commands
# below name the rows as they ran then. Their `repwam` (ℓ denoised beside the actions) is `repwam_ell` now, their
# `adapt_no_ell` (--ell-drop 1) is `repwam` now, and eval/wam_repwam_s* -> eval/wam_repwam_ell_s*,
# eval/wam_adapt_no_ell_s* -> eval/wam_repwam_s* so that --report-only labels them as today's rows do. To run them
# again under today's code: --rows repwam_ell for the first, --rows repwam (or adapt_no_ell) for the second.
# mt10, RepWAM from the camera alone (row repwam), seed $1, 8,000 adaptation steps (its own pretraining): more seeds
# beside mt10_adapt8000's seed 0 (0.63), against the plain policy at 8,000 (outputs/mt10cam). Same data, tokenizer
# and LAT as outputs/mt10est (linked). Waits for the per-action robot-token run (outputs/rpa) to finish (two cores).
cd /work/main
export OMP_NUM_THREADS=1
while pgrep -f "outputs/rpa/adapt.sh" > /dev/null; do sleep 30; done
.venv/bin/repwam ablate --out outputs/mt10camr --rows repwam --seeds $1 --tasks mt10 --episodes-per-task 20 --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 8000 --plain-steps 8000 --eval-episodes 20 --estimator-cameras corner3,corner --estimator-layouts-per-task 80 --jobs 1 --eval-workers 2 --keep-snapshots 8
