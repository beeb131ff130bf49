#!/bin/bash
# inference settings of the RepWAM policy (hard60 est2v seed 0, the four hard tasks), chosen on validation layouts
# (eval --seed 1, never the reported seed-0 layouts): the default (chunk 2 = 8 actions planned, 8 run), plan 16 run 8
# (chunk=4 execute=8: the plain policy's horizon), plan 8 run 4 (chunk=2 execute=4). Pauses the mt10 plain 16k run
# (saved at 4,000) for the core, and restarts it after.
cd /work/main
export OMP_NUM_THREADS=1
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
C=outputs/hard60/runs/wam_repwam_est2v_s0/checkpoints/last
while [ ! -d outputs/mt10plain16k/runs/plain_plain_estimator_s0/checkpoints/step_0004000 ]; do sleep 10; done
sleep 30
pkill -f "outputs/mt10plain16k.sh"; pkill -f "ablate --out outputs/mt10plain16k"; pkill -f "train plain --data outputs/mt10plain16k"
for v in "default:" "c4e8:--setting chunk=4 --setting execute=8" "c2e4:--setting chunk=2 --setting execute=4"; do
  name=${v%%:*}; args=${v#*:}
  .venv/bin/repwam eval policy --checkpoint $C --tasks $H --episodes 20 --seed 1 --workers 1 --out outputs/execute/val_$name --videos 0 $args
done
(setsid nohup bash outputs/mt10plain16k.sh >> outputs/mt10plain16k.log 2>&1 &)
