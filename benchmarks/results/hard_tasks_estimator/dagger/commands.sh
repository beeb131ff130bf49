# Perception DAgger, seed 2 (2026-12-05, fourteenth sitting). The plain_estimator run first, then round 1 (est_r1: --targets all;
# its evaluation eval_r1_s2 was stopped at 58/80), then round 1b (--targets positions). est_r1pos_globalmean was fitted by
# commit 0e35bd3 (orientations held at one mean over every task; eval stopped at 36/80), est_r1pos / est_l80pos by the median version.
#!/bin/bash
# plain_estimator with the two-view estimator (est2v_l80), seed $1: hard60's plain recipe (6,000 steps) on hard60's
# demonstrations (corner3 only: the view the policy sees); the estimator reads corner3 + corner; closed loop on 20 layouts per task
cd /work/main
export OMP_NUM_THREADS=1
S=$1
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
R=outputs/hard60/runs/plain_plain_est2v_s$S
RES=""; [ -f $R/training_state.pt ] && RES="--resume"
[ -f $R/finished ] || { .venv/bin/repwam train plain --data outputs/estview/d20 --cameras corner3 --out $R --optim.steps 6000 --optim.seed $S --optim.device cpu --preset tiny --state-key observation.estimated_state --estimator outputs/estview/est2v_l80 --optim.keep-snapshots 12 $RES && touch $R/finished; }
[ -f $R/finished ] && .venv/bin/repwam eval policy --checkpoint $R/checkpoints/last --tasks $H --episodes 20 --seed 0 --workers 1 --out outputs/hard60/eval/plain_plain_est2v_s$S --videos 1
#!/bin/bash
# Perception DAgger, round 1: the two-view estimator refitted on the policy's own closed-loop states.
# 1. record RepWAM est2v seed 2's rollouts on layouts of --seed 7 (never scored: scoring uses --seed 0)
# 2. refit the estimator on the demonstrations + the 80 layouts/task + those rollouts (simulator labels)
# 3. evaluate seed 2 (and 3) on the scored layouts with the refitted estimator in place (no retraining)
cd /work/main
export OMP_NUM_THREADS=1
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
.venv/bin/repwam eval policy --checkpoint outputs/hard60/runs/wam_repwam_est2v_s2/checkpoints/last --tasks $H --episodes 20 --seed 7 --workers 1 --out outputs/dagger/rec_s2 --videos 0 --record || exit 1
[ -f outputs/dagger/est_r1/fit.json ] || .venv/bin/repwam train estimator --data outputs/estview/d20 --data outputs/estview/layouts80_seed1 --data outputs/dagger/rec_s2/rollouts --camera corner3,corner --out outputs/dagger/est_r1 || exit 1
for S in 2 3; do
.venv/bin/repwam eval policy --checkpoint outputs/hard60/runs/wam_repwam_est2v_s$S/checkpoints/last --tasks $H --episodes 20 --seed 0 --workers 1 --out outputs/dagger/eval_r1_s$S --videos 1 --setting estimator=outputs/dagger/est_r1
done
#!/bin/bash
# Perception DAgger, round 1 again with positions-only estimators (--targets positions), and its control
cd /work/main
export OMP_NUM_THREADS=1
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
C=outputs/hard60/runs/wam_repwam_est2v_s2/checkpoints/last
[ -f outputs/dagger/est_r1pos/fit.json ] || .venv/bin/repwam train estimator --data outputs/estview/d20 --data outputs/estview/layouts80_seed1 --data outputs/dagger/rec_s2/rollouts --camera corner3,corner --targets positions --out outputs/dagger/est_r1pos || exit 1
.venv/bin/repwam eval policy --checkpoint $C --tasks $H --episodes 20 --seed 0 --workers 1 --out outputs/dagger/eval_r1pos_s2 --videos 1 --setting estimator=outputs/dagger/est_r1pos
[ -f outputs/dagger/est_l80pos/fit.json ] || .venv/bin/repwam train estimator --data outputs/estview/d20 --data outputs/estview/layouts80_seed1 --camera corner3,corner --targets positions --out outputs/dagger/est_l80pos || exit 1
.venv/bin/repwam eval policy --checkpoint $C --tasks $H --episodes 20 --seed 0 --workers 1 --out outputs/dagger/eval_l80pos_s2 --videos 1 --setting estimator=outputs/dagger/est_l80pos
