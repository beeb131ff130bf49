#!/bin/bash
# Does pretraining on more action-free video lift the hard tasks? (seed 0)
# A: data 100 layouts/task (videos; the first 20 are hard60's demonstrations), WAM pretrain 3000 steps on them,
#    adapt 6000 steps on hard60's 20 demonstrations per task, evaluate 20 layouts per task.
cd /work/main
export OMP_NUM_THREADS=1
R=.venv/bin/repwam
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
O=outputs/hardvid
D20=outputs/hard60/data/reach-v3+push-v3+pick-place-v3+peg-insert-side-v3
D100=$O/data100
TOK=outputs/hard60/runs/tok_default/checkpoints/last
LAT=outputs/hard60/runs/lat_default/checkpoints/last
res() { [ -f $1/training_state.pt ] && echo --resume; }
echo "data $(date)"
[ -f $D100/meta/info.json ] || $R data generate --tasks $H --episodes-per-task 100 --camera corner3 --image-size 64 --workers 1 --out $D100 > $O/data100.log 2>&1
echo "pretrain $(date)"
[ -f $O/runs/wampre100_s0/finished ] || $R train wam --data $D100 --out $O/runs/wampre100_s0 --optim.steps 3000 --optim.seed 0 --optim.device cpu --tokenizer $TOK --lat $LAT --preset tiny $(res $O/runs/wampre100_s0) >> $O/wampre100_s0.log 2>&1
echo "adapt $(date)"
[ -f $O/runs/wam100_s0/finished ] || $R train wam --data $D20 --out $O/runs/wam100_s0 --optim.steps 6000 --optim.seed 0 --optim.device cpu --recipe adapt --init $O/runs/wampre100_s0/checkpoints/last --tokenizer $TOK --lat $LAT --preset tiny --optim.keep-snapshots 6 $(res $O/runs/wam100_s0) >> $O/wam100_s0.log 2>&1
echo "eval $(date)"
$R eval policy --checkpoint $O/runs/wam100_s0/checkpoints/last --tasks $H --episodes 20 --seed 0 --workers 1 --videos 2 --out $O/eval/wam100_s0 > $O/eval_wam100_s0.log 2>&1
echo "done $(date)"
