#!/bin/bash
# estimator precision at 128 px: on the 20 demonstrations (hard128's data: the same layouts as hard60's at 128 px),
# and with 80 more layouts per task (seed 1) at 128 px
cd /work/main
export OMP_NUM_THREADS=1
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
D=outputs/hard128/data/reach-v3+push-v3+pick-place-v3+peg-insert-side-v3
X=outputs/est128/layouts80_seed1
[ -f outputs/est128/est_d20/fit.json ] || .venv/bin/repwam train estimator --data $D --out outputs/est128/est_d20
[ -f $X/meta/info.json ] || .venv/bin/repwam data generate --tasks $H --episodes-per-task 80 --seed 1 --camera corner3 --image-size 128 --out $X
[ -f outputs/est128/est_l80/fit.json ] || .venv/bin/repwam train estimator --data $D --data $X --out outputs/est128/est_l80
