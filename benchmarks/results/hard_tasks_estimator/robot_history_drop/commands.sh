#!/bin/bash
# repwam_est2v (the two-view estimator, hard60's recipe: outputs/estview/adapt.sh) with the executed-action history
# hidden from half the training clips (--robot-history-drop 0.5), seed $1; evaluated with the history (default) and
# without it (--setting robot_history=false); against wam_repwam_est2v_s$1 (0.600) and _nohist_s$1 (0.5125)
cd /work/main
export OMP_NUM_THREADS=1
S=$1
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
D=outputs/estview/d20
R=outputs/hard60/runs/wam_repwam_est2v_hdrop50_s$S
RES=""; [ -f $R/training_state.pt ] && RES="--resume"
[ -f $R/finished ] || { .venv/bin/repwam train wam --data $D --out $R --optim.steps 6000 --optim.seed $S --optim.device cpu --recipe adapt --init outputs/hard60/runs/wampre_repwam_s$S/checkpoints/last --tokenizer outputs/hard60/runs/tok_default/checkpoints/last --lat outputs/hard60/runs/lat_default/checkpoints/last --preset tiny --state-key observation.estimated_state --estimator outputs/estview/est2v_l80 --robot-history-drop 0.5 --optim.keep-snapshots 12 $RES && touch $R/finished; }
[ -f $R/finished ] || exit 1
.venv/bin/repwam eval policy --checkpoint $R/checkpoints/last --tasks $H --episodes 20 --seed 0 --workers 1 --out outputs/hard60/eval/wam_repwam_est2v_hdrop50_s$S --videos 1
.venv/bin/repwam eval policy --checkpoint $R/checkpoints/last --tasks $H --episodes 20 --seed 0 --workers 1 --out outputs/hard60/eval/wam_repwam_est2v_hdrop50_nohist_s$S --videos 1 --setting robot_history=false
