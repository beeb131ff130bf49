#!/bin/bash
# The four hard tasks from a wrist camera (2026-12-07, thirty-fifth sitting): `behindGripper`, the camera Meta-World
# mounts behind the gripper (it moves with the hand: the goal and the objects are seen relative to the fingers, ~46
# goal pixels at 64x64 against corner3's ~22), instead of corner3; otherwise the settings of the corner3 table
# (docs/record.md, "Sixty passes", 20 layouts per task: RepWAM 0.23 +- 0.07, the plain policy 0.13 +- 0.03;
# adapt_no_ell not run there). Seed 0 (2026-12-07): repwam 0.2125, adapt_no_ell 0.30; then, for the results here:
#   cp outputs/hard_wrist/eval/<run>/{episodes.jsonl,eval_config.json,results.json,run.json,success.png,table.md} ...
#   python benchmarks/where_episodes_end.py outputs/hard_wrist/eval/wam_repwam_s0 \
#     outputs/hard_wrist/eval/wam_adapt_no_ell_s0 --out benchmarks/results/hard_tasks_wrist/where_episodes_end.json
# RepWAM as in that table (repwam, ℓ denoised), then adapted with ℓ left out (adapt_no_ell, the same pretraining),
# seed $1, one core.
cd /work/main
export OMP_NUM_THREADS=1
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
for row in repwam adapt_no_ell; do
.venv/bin/repwam ablate --out outputs/hard_wrist --cameras behindGripper --rows $row --seeds $1 --tasks $H \
  --episodes-per-task 20 --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 6000 --plain-steps 6000 \
  --eval-episodes 20 --keep-snapshots 12 --jobs 1 --eval-workers 1
done
