#!/bin/bash
# the estimator fitted on the 20 demonstrations + 80 more layouts per task (seed 1, never demonstrations' or
# evaluation layouts); repwam_est's adaptation of seed 1 on it; its closed loop
cd /work/main
export OMP_NUM_THREADS=1
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
D=outputs/hard60/data/reach-v3+push-v3+pick-place-v3+peg-insert-side-v3
X=outputs/hard60/data_layouts80_seed1
while pgrep -f "data_layouts80_seed1" > /dev/null; do sleep 15; done
[ -f outputs/hard60/runs/estimator_l80/fit.json ] || .venv/bin/repwam train estimator --data $D --data $X --out outputs/hard60/runs/estimator_l80
while [ ! -f outputs/hard60/runs/wam_repwam_est_s1/finished ]; do sleep 20; done
R=outputs/hard60/runs/wam_repwam_estl80_s1
RES=""; [ -f $R/training_state.pt ] && RES="--resume"
[ -f $R/finished ] || { .venv/bin/repwam train wam --data $D --out $R --optim.steps 6000 --optim.seed 1 --optim.device cpu --recipe adapt --init outputs/hard60/runs/wampre_repwam_s1/checkpoints/last --tokenizer outputs/hard60/runs/tok_default/checkpoints/last --lat outputs/hard60/runs/lat_default/checkpoints/last --preset tiny --state-key observation.estimated_state --estimator outputs/hard60/runs/estimator_l80 --optim.keep-snapshots 12 $RES && touch $R/finished; }
.venv/bin/repwam eval policy --checkpoint $R/checkpoints/last --tasks $H --episodes 20 --seed 0 --workers 1 --out outputs/hard60/eval/wam_repwam_estl80_s1 --videos 1
