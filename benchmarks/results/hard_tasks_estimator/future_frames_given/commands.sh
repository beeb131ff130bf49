#!/bin/bash
# repwam_est2v (the two-view estimator, hard60's recipe: outputs/estview/adapt.sh) with half the training clips given
# their clean future frames (--future-frames-given 0.5: the action expert learns to act from the future), seed $1;
# evaluated imagining the future first (--setting actions_only=false, what it is for) and without (the default
# actions-only mode); against wam_repwam_est2v_s$1 (0.600 at seed 0)
cd /work/main
export OMP_NUM_THREADS=1
S=$1
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
D=outputs/estview/d20
R=outputs/hard60/runs/wam_repwam_est2v_fut50_s$S
RES=""; [ -f $R/training_state.pt ] && RES="--resume"
[ -f $R/finished ] || { .venv/bin/repwam train wam --data $D --out $R --optim.steps 6000 --optim.seed $S --optim.device cpu --recipe adapt --init outputs/hard60/runs/wampre_repwam_s$S/checkpoints/last --tokenizer outputs/hard60/runs/tok_default/checkpoints/last --lat outputs/hard60/runs/lat_default/checkpoints/last --preset tiny --state-key observation.estimated_state --estimator outputs/estview/est2v_l80 --future-frames-given 0.5 --optim.keep-snapshots 12 $RES && touch $R/finished; }
[ -f $R/finished ] || exit 1
.venv/bin/repwam eval policy --checkpoint $R/checkpoints/last --tasks $H --episodes 20 --seed 0 --workers 1 --out outputs/hard60/eval/wam_repwam_est2v_fut50_imagine_s$S --videos 1 --setting actions_only=false
.venv/bin/repwam eval policy --checkpoint $R/checkpoints/last --tasks $H --episodes 20 --seed 0 --workers 1 --out outputs/hard60/eval/wam_repwam_est2v_fut50_s$S --videos 1
