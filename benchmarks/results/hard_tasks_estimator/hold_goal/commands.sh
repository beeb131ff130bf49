# hold_goal=16 (2026-12-05, fifteenth sitting). The setting existed in commit 82635cf and was removed in 7a74640 after
# these measurements (no gain): git checkout 82635cf to rerun them.
#!/bin/bash
# hold_goal=16 on the trained est2v policies (no retraining): the estimator's goal held from the first 16 steps' readings
cd /work/main
export OMP_NUM_THREADS=1
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
for R in wam_repwam_est2v_s2 plain_plain_est2v_s2 wam_repwam_est2v_s3; do
.venv/bin/repwam eval policy --checkpoint outputs/hard60/runs/$R/checkpoints/last --tasks $H --episodes 20 --seed 0 --workers 1 --out outputs/holdgoal/eval_${R}_hold16 --videos 1 --setting hold_goal=16
done
