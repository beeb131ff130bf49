#!/bin/bash
# repwam_est with the two-view estimator fitted on 80 more layouts per task (est2v_l80), seed $1: hard60's recipe,
# adapted on the same 20 demonstrations (outputs/estview/d20: hard60's episodes, frame for frame, with more views
# recorded; the WAM reads corner3 only); closed loop on 20 layouts per task
cd /work/main
export OMP_NUM_THREADS=1
S=$1
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
D=outputs/estview/d20
while [ ! -f outputs/estview/est2v_l80/fit.json ] || [ ! -f outputs/hard60/runs/wam_repwam_est_s$S/finished ]; do sleep 30; done
R=outputs/hard60/runs/wam_repwam_est2v_s$S
RES=""; [ -f $R/training_state.pt ] && RES="--resume"
[ -f $R/finished ] || { .venv/bin/repwam train wam --data $D --out $R --optim.steps 6000 --optim.seed $S --optim.device cpu --recipe adapt --init outputs/hard60/runs/wampre_repwam_s$S/checkpoints/last --tokenizer outputs/hard60/runs/tok_default/checkpoints/last --lat outputs/hard60/runs/lat_default/checkpoints/last --preset tiny --state-key observation.estimated_state --estimator outputs/estview/est2v_l80 --optim.keep-snapshots 12 $RES && touch $R/finished; }
[ -f $R/finished ] && .venv/bin/repwam eval policy --checkpoint $R/checkpoints/last --tasks $H --episodes 20 --seed 0 --workers 1 --out outputs/hard60/eval/wam_repwam_est2v_s$S --videos 1
