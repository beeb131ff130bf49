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

# Seed 1 of both rows and seed 2 (2026-12-06, twenty-second sitting): the data regenerated (the same seeds), the
# tokenizer and LAT retrained; seed 2's plain policy and RepWAM in their own folders on the same data, tokenizer
# and LAT (linked), each started once a core was free (the loop below runs them in turn; they ran side by side).
repwam ablate --out outputs/hard100 --rows repwam plain --seeds 1 --tasks $H --episodes-per-task 100 \
  --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 6000 --plain-steps 6000 --eval-episodes 20 \
  --jobs 2 --eval-workers 1 --keep-snapshots 8
mkdir -p outputs/hard100_s2p/data outputs/hard100_s2/data outputs/hard100_s2/runs
ln -s ../../hard100/data/reach-v3+push-v3+pick-place-v3+peg-insert-side-v3 outputs/hard100_s2p/data/
ln -s ../../hard100/data/reach-v3+push-v3+pick-place-v3+peg-insert-side-v3 outputs/hard100_s2/data/
ln -s ../../hard100/runs/tok_default ../../hard100/runs/lat_default outputs/hard100_s2/runs/
for row in plain repwam; do
  out=outputs/hard100_s2; [ $row = plain ] && out=outputs/hard100_s2p
  repwam ablate --out $out --rows $row --seeds 2 --tasks $H --episodes-per-task 100 --tok-steps 400 \
    --lat-steps 300 --wam-steps 550 --adapt-steps 6000 --plain-steps 6000 --eval-episodes 20 --jobs 1 \
    --eval-workers 1 --keep-snapshots 8
done
# the table and plot over every seed's evaluation (copied into one folder)
mkdir -p outputs/hard100_all/eval && cp -r benchmarks/results/hard_tasks_100demos/eval/* outputs/hard100_all/eval/
repwam ablate --out outputs/hard100_all --rows repwam plain --seeds 0 1 2 --tasks $H --episodes-per-task 100 \
  --report-only
# seed 1's validation curves, merged into val_losses.json beside seed 0's
python benchmarks/val_losses.py outputs/hard100/runs/wam_repwam_s1 outputs/hard100/runs/plain_plain_s1 \
  --out /tmp/vl1.json
python -c "import json; p='benchmarks/results/hard_tasks_100demos/val_losses.json'; d=json.load(open(p)); \
d.update(json.load(open('/tmp/vl1.json'))); json.dump(d, open(p, 'w'), indent=1)"
R=benchmarks/results/hard_tasks_100demos
python benchmarks/where_episodes_end.py $R/eval/* --out $R/where_episodes_end.json

# RepWAM's seed 2 (2026-12-06, twenty-third sitting): the loop above, resumed (adaptation from its 3,500-step
# checkpoint); then the table, plot and summary over the three seeds (the report commands above), its validation
# curves merged as seed 1's were, and where_episodes_end again.
python benchmarks/val_losses.py outputs/hard100_s2/runs/wam_repwam_s2 --out /tmp/vl2.json
# the plain policy along its training: seed 1's snapshots on the same 20 layouts per task
for s in 3000 4000 5000; do
  repwam eval policy --checkpoint outputs/hard100/runs/plain_plain_s1/checkpoints/step_000$s --tasks $H \
    --episodes 20 --seed 0 --workers 1 --videos 0 --out outputs/hard100/eval_snap/plain_plain_s1_$s
done
# both rows at 12,000 steps on seed 1's data, tokenizer, LAT and pretraining: ../hard_tasks_100demos_12k/commands.sh
# success along training: RepWAM seed 0's snapshots, the plain policy seed 1's (success_curve.png / .json)
cd benchmarks/results/hard_tasks_100demos && python ../../success_curve.py \
  --curve "RepWAM (seed 0)" 3000=eval_snap/wam_repwam_s0_3000 4500=eval_snap/wam_repwam_s0_4500 6000=eval/wam_repwam_s0 \
  --curve "plain (seed 1)" 3000=eval_snap/plain_plain_s1_3000 4000=eval_snap/plain_plain_s1_4000 \
  5000=eval_snap/plain_plain_s1_5000 6000=eval/plain_plain_s1 --out success_curve.png && cd -
