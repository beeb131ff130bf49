#!/bin/bash
# mt10 from the camera, 20 demonstrations per task (the setting): RepWAM adapted with ℓ left out (row
# adapt_no_ell, --ell-drop 1) for 16,000 steps instead of 8,000, seed $1 (2026-12-07, thirty-sixth sitting): seed 2's
# snapshots went 0.59 -> 0.665 -> 0.71 at steps 4,500 / 6,000 / 8,000 (benchmarks/results/mt10_adapt8000/curve), so
# the 8,000-step curve had not flattened. Same seeded data, tokenizer, LAT and pretraining commands as mt10_adapt8000;
# one core. The code is pinned by PYTHONPATH to a worktree at the commit the run started from (8ad781d), so that
# edits on main cannot change a run in progress; the trainers resume from their last checkpoint when run again.
cd /work/main
export OMP_NUM_THREADS=1
export PYTHONPATH=${REPWAM_SRC:-/work/wt_run/src}
.venv/bin/repwam ablate --out outputs/mt10a16k --rows adapt_no_ell --seeds $1 --tasks mt10 --episodes-per-task 20 \
  --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 16000 --plain-steps 16000 --eval-episodes 20 \
  --estimator-cameras corner3,corner --estimator-layouts-per-task 80 --jobs 1 --eval-workers 1 --keep-snapshots 16
# Seed 0 (2026-12-07, thirty-sixth sitting): started with this script beside the demo-size ℓ run
# (ablation_demo_ell1000, stopped at its seed 0's adaptation); once the adaptation began (step ~270, nothing saved),
# the same command was run alone with --jobs 2 --eval-workers 2 (outputs/mt10a16k_2t.sh), so the adaptation took
# both cores as threads: ~2.6 steps/s against ~2.0 on one thread beside another job.
# then, for the results here (the run's row adapt_no_ell is today's repwam):
#   R=benchmarks/results/mt10_adapt16000; mkdir -p $R/eval/wam_repwam_s0
#   cp outputs/mt10a16k/eval/wam_adapt_no_ell_s0/{episodes.jsonl,eval_config.json,results.json,run.json} \
#     outputs/mt10a16k/eval/wam_adapt_no_ell_s0/{success.png,table.md} $R/eval/wam_repwam_s0/
#   cp outputs/mt10a16k/timings.json $R/
#   python benchmarks/val_losses.py outputs/mt10a16k/runs/wam_adapt_no_ell_s0 --out $R/val_losses.json
#   repwam ablate --out $R --rows repwam --seeds 0 --tasks mt10 --report-only
