#!/bin/bash
# The four hard tasks from the camera alone with 100 demonstrations per task (2026-12-05, nineteenth sitting), the
# recipe and step budget of hard_tasks_60passes (20 demonstrations per task): tokenizer 400, LAT 300, pretraining
# 550, adaptation / plain 6,000 steps; evaluation on the same 20 layouts per task (seed 0). One job per core.
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
repwam ablate --out outputs/hard100 --rows repwam --seeds 0 --tasks $H --episodes-per-task 100 --tok-steps 400 \
  --lat-steps 300 --wam-steps 550 --adapt-steps 6000 --plain-steps 6000 --eval-episodes 20 --jobs 1 \
  --eval-workers 1 --keep-snapshots 8
# the plain policy on the same data, in its own folder (the data linked in), at the same time on the other core
mkdir -p outputs/hard100p/data
ln -s ../../hard100/data/reach-v3+push-v3+pick-place-v3+peg-insert-side-v3 outputs/hard100p/data/
repwam ablate --out outputs/hard100p --rows plain --seeds 0 --tasks $H --episodes-per-task 100 --tok-steps 400 \
  --lat-steps 300 --wam-steps 550 --adapt-steps 6000 --plain-steps 6000 --eval-episodes 20 --jobs 1 \
  --eval-workers 1 --keep-snapshots 8
# RepWAM along its adaptation: the snapshots at 3,000 and 4,500 steps
for s in 3000 4500; do
  repwam eval policy --checkpoint outputs/hard100/runs/wam_repwam_s0/checkpoints/step_000$s --tasks $H \
    --episodes 20 --seed 0 --workers 1 --videos 0 --out outputs/hard100/eval_snap/wam_repwam_s0_$s
done
python benchmarks/val_losses.py outputs/hard100/runs/wam_repwam_s0 outputs/hard100p/runs/plain_plain_s0
python benchmarks/where_episodes_end.py benchmarks/results/hard_tasks_100demos/eval/* --out benchmarks/results/hard_tasks_100demos/where_episodes_end.json
