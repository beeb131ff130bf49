#!/bin/bash
# B, the control: WAM pretrain 3000 steps on hard60's 20 demonstrations per task only, then the same adaptation.
# Starts after the full-sampling evaluation of seed 0 (outputs/full.sh) and a robot-only one.
cd /work/main
export OMP_NUM_THREADS=1
R=.venv/bin/repwam
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
O=outputs/hardvid
D20=outputs/hard60/data/reach-v3+push-v3+pick-place-v3+peg-insert-side-v3
TOK=outputs/hard60/runs/tok_default/checkpoints/last
LAT=outputs/hard60/runs/lat_default/checkpoints/last
res() { [ -f $1/training_state.pt ] && echo --resume; }
while [ ! -f outputs/hard60_full/wam_repwam_s0_full/results.json ]; do sleep 20; done
pkill -f outputs/full.sh; sleep 1; pkill -f wam_repwam_s1_full; sleep 2
o=outputs/hard60_full/wam_repwam_s0_robotonly
echo "robot-only $(date)"
$R eval policy --checkpoint outputs/hard60/runs/wam_repwam_s0/checkpoints/last --tasks $H --episodes 20 --seed 0 --workers 1 --videos 0 --setting robot_only=true --out $o > $o.log 2>&1
echo "pretrain $(date)"
[ -f $O/runs/wampre20_s0/finished ] || $R train wam --data $D20 --out $O/runs/wampre20_s0 --optim.steps 3000 --optim.seed 0 --optim.device cpu --tokenizer $TOK --lat $LAT --preset tiny $(res $O/runs/wampre20_s0) >> $O/wampre20_s0.log 2>&1
echo "adapt $(date)"
[ -f $O/runs/wam20_s0/finished ] || $R train wam --data $D20 --out $O/runs/wam20_s0 --optim.steps 6000 --optim.seed 0 --optim.device cpu --recipe adapt --init $O/runs/wampre20_s0/checkpoints/last --tokenizer $TOK --lat $LAT --preset tiny --optim.keep-snapshots 6 $(res $O/runs/wam20_s0) >> $O/wam20_s0.log 2>&1
echo "eval $(date)"
$R eval policy --checkpoint $O/runs/wam20_s0/checkpoints/last --tasks $H --episodes 20 --seed 0 --workers 1 --videos 2 --out $O/eval/wam20_s0 > $O/eval_wam20_s0.log 2>&1
echo "done $(date)"
