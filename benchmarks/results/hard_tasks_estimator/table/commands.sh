#!/bin/bash
# One table and bar plot for the four hard tasks (reach, push, pick-place, peg-insert-side; 20 demonstrations per task,
# hard60's recipe: 6,000 steps; 20 evaluation layouts per task, --seed 0) from the evaluation folders measured over
# several sittings. repwam_est here is RepWAM with the two-view estimator (runs wam_repwam_est2v_s*), plain_estimator
# the plain policy with the same estimator (plain_plain_est2v_s*); repwam / plain from the camera alone; repwam_goal
# told the simulator state (a privileged reference).
set -e
R=benchmarks/results
OUT=${1:-outputs/hard4_table}
mkdir -p $OUT/eval
for s in 0 2 3; do cp -r $R/hard_tasks_estimator/eval/wam_repwam_est2v_s$s $OUT/eval/wam_repwam_est_s$s; done
for d in $R/hard_tasks_estimator/eval/plain_plain_est2v_s*; do cp -r $d $OUT/eval/plain_plain_estimator_s${d##*_s}; done
for r in plain_plain_s0 plain_plain_s1 plain_plain_s2 wam_repwam_s0 wam_repwam_s1 wam_repwam_s2 wam_repwam_goal_s0 wam_repwam_goal_s1; do
  cp -r $R/hard_tasks_60passes/eval20/eval/$r $OUT/eval/
done
repwam ablate --out $OUT --rows repwam plain repwam_est plain_estimator repwam_goal --seeds 0 1 2 3 \
  --tasks reach-v3,push-v3,pick-place-v3,peg-insert-side-v3 --report-only
