#!/bin/bash
# The ℓ-default decision at the demo's size with a longer adaptation (2026-12-07, thirty-fifth sitting): RepWAM
# adapted with ℓ denoised (`repwam`, --ell-drop default) and with ℓ left out (`adapt_no_ell`, --ell-drop 1) on the
# same tokenizer, LAT and pretrainings, 1,000 adaptation steps (~11 passes over the 5,957 frames, against the demo's
# 400: ~4), seeds 0-2 in turn, one core; otherwise the demo's settings (benchmarks/results/ablation_demo_ell ran 400).
cd /work/main
export OMP_NUM_THREADS=1
T=reach-v3,push-v3,drawer-open-v3,button-press-topdown-v3,window-open-v3
for s in 0 1 2; do
.venv/bin/repwam ablate --out outputs/abl_ell1000 --rows repwam_ell repwam --seeds $s --tasks $T \
  --episodes-per-task 15 --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 1000 --plain-steps 600 \
  --eval-episodes 10 --jobs 1 --eval-workers 1
done
# then, for the results here (the finished (row, seed)s):
#   R=benchmarks/results/ablation_demo_ell1000; mkdir -p $R/eval
#   for d in outputs/abl_ell1000/eval/*/; do [ -f $d/results.json ] && cp -r $d $R/eval/; done
#   .venv/bin/repwam ablate --out $R --rows repwam_ell repwam --seeds 0 1 2 --tasks $T --report-only
# Since the default changed (2026-12-07, thirty-sixth sitting) the rows are named as today: repwam_ell (ℓ denoised,
# --ell-drop 0.25) and repwam (ℓ left out). Seed 0's repwam_ell adaptation had finished under the old names
# (outputs/abl_ell1000/runs/wam_repwam_s0, run.json ell_drop null: read as 0.25) and was moved to
# runs/wam_repwam_ell_s0; its unfinished evaluation was removed, to run again.
