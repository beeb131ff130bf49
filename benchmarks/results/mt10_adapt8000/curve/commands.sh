# Snapshots of mt10 adapt_no_ell seed 2 (saved by --keep-snapshots 8 during its 8,000-step cosine schedule) on the
# same 20 layouts per task as its final checkpoint (2026-12-07, thirty-fifth sitting).
cd /work/main
export OMP_NUM_THREADS=1
for st in 0004500 0006000; do
.venv/bin/repwam eval policy --checkpoint outputs/mt10camr/runs/wam_adapt_no_ell_s2/checkpoints/step_$st --tasks mt10 \
  --episodes 20 --seed 0 --workers 1 --out outputs/mt10_curve/wam_adapt_no_ell_s2_step$st
done
