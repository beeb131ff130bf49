#!/bin/bash
# which view places the goal: the 20 demonstrations (hard60's layouts) rendered from four cameras at 64 px
cd /work/main
export OMP_NUM_THREADS=1
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
X=outputs/estview/d20
while pgrep -f "est128/run.sh" > /dev/null; do sleep 10; done
[ -f $X/meta/info.json ] || .venv/bin/repwam data generate --tasks $H --episodes-per-task 20 --camera corner3,topview,corner,corner2 --image-size 64 --out $X
for c in corner3 topview corner corner2; do
  [ -f outputs/estview/est_$c/fit.json ] || .venv/bin/repwam train estimator --data $X --camera $c --out outputs/estview/est_$c
done
#!/bin/bash
cd /work/main
export OMP_NUM_THREADS=1
X=outputs/estview/d20
for c in corner3,corner corner3,topview corner3,corner,topview,corner2; do
  n=$(echo $c | tr , +)
  [ -f outputs/estview/est_$n/fit.json ] || .venv/bin/repwam train estimator --data $X --camera $c --out outputs/estview/est_$n
done
#!/bin/bash
# a two-view (corner3 + corner) estimator on the 20 demonstrations (hard60's layouts, rendered from four cameras) and
# 80 more layouts per task (seed 1)
cd /work/main
export OMP_NUM_THREADS=1
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
X=outputs/estview/layouts80_seed1
[ -f $X/meta/info.json ] || .venv/bin/repwam data generate --tasks $H --episodes-per-task 80 --seed 1 --camera corner3,corner --image-size 64 --out $X
[ -f outputs/estview/est2v_l80/fit.json ] || .venv/bin/repwam train estimator --data outputs/estview/d20 --data $X --camera corner3,corner --out outputs/estview/est2v_l80
