#!/bin/bash
# How the runs here were made (2026-12-04, seed 0), from the repository root, beside outputs/hard60 (hard60's
# 20 demonstrations per task, tokenizer and LAT):
#   benchmarks/results/hard_tasks_video_pretraining/run.sh wam100_s0 outputs/hardvid/data100   # 100 videos per task
#   benchmarks/results/hard_tasks_video_pretraining/run.sh wam20_s0 $D20                         # the control
# Each: WAM pretraining 3,000 steps on the given data, adaptation 6,000 steps on the 20 demonstrations, closed loop
# on 20 layouts per task. Rerun, it resumes. (`repwam ablate --video-episodes-per-task 100` is the pipeline for the
# first, with its own tokenizer and LAT trained on the videos.)
set -e
NAME=$1; PRE_DATA=$2
export OMP_NUM_THREADS=1
R=.venv/bin/repwam
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
O=outputs/hardvid
D20=outputs/hard60/data/reach-v3+push-v3+pick-place-v3+peg-insert-side-v3
TOK=outputs/hard60/runs/tok_default/checkpoints/last
LAT=outputs/hard60/runs/lat_default/checkpoints/last
res() { [ -f $1/training_state.pt ] && echo --resume || true; }
# the 100 video episodes per task: their first 20 layouts are the demonstrations' (the same layout seeds)
[ -f $O/data100/meta/info.json ] || $R data generate --tasks $H --episodes-per-task 100 --workers 1 --out $O/data100
PRE=$O/runs/${NAME/wam/wampre}
[ -f $PRE/finished ] || { $R train wam --data $PRE_DATA --out $PRE --optim.steps 3000 --optim.seed 0 \
  --tokenizer $TOK --lat $LAT --preset tiny $(res $PRE) && touch $PRE/finished; }
[ -f $O/runs/$NAME/finished ] || { $R train wam --recipe adapt --data $D20 --out $O/runs/$NAME --optim.steps 6000 \
  --optim.seed 0 --init $PRE/checkpoints/last --tokenizer $TOK --lat $LAT --preset tiny --optim.keep-snapshots 6 \
  $(res $O/runs/$NAME) && touch $O/runs/$NAME/finished; }
$R eval policy --checkpoint $O/runs/$NAME/checkpoints/last --tasks $H --episodes 20 --seed 0 --workers 1 --videos 2 \
  --out $O/eval/$NAME
