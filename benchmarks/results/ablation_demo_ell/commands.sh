#!/bin/bash
# The demo-size table's RepWAM rows under the `ell-default` branch (2026-12-07, thirty-fourth sitting): `repwam` with
# ℓ left out of the adaptation (the branch's default, --ell-drop 1) and `repwam_ell` (--ell-drop 0.25, the recipe
# every earlier `repwam` result measured) on the same tokenizer, LAT and pretrainings, seeds 0-2, one core; the
# demo's settings. Run from the branch's worktree sources (PYTHONPATH) with main's .venv; resumes when run again.
# The branch was lost with its worktree; the same change is on main since 2026-12-07 (thirty-sixth sitting), so
# today the same command runs without PYTHONPATH.
cd /work/main
export OMP_NUM_THREADS=1 PYTHONPATH=/work/wt_ell/src
T=reach-v3,push-v3,drawer-open-v3,button-press-topdown-v3,window-open-v3
for rows in repwam repwam_ell; do
.venv/bin/repwam ablate --out outputs/abl_ell --rows $rows --seeds 0 1 2 --tasks $T --episodes-per-task 15 \
  --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 400 --plain-steps 600 --eval-episodes 10 \
  --jobs 1 --eval-workers 1
done
# then, for the results here (the finished (row, seed)s):
#   R=benchmarks/results/ablation_demo_ell; mkdir -p $R/eval
#   for d in outputs/abl_ell/eval/*/; do [ -f $d/results.json ] && cp -r $d $R/eval/; done
#   PYTHONPATH=/work/wt_ell/src .venv/bin/repwam ablate --out $R --rows repwam repwam_ell --seeds 0 1 2 --tasks $T \
#     --report-only
