# The four hard tasks on a 16x16 latent grid (2026-12-06, twenty-first sitting): hard60's recipe with the
# tokenizer's and the WAM's patch size 4 (64 px images -> 16x16 x 32 latents; the WAM's 4x4 patches of them keep its
# 16 video tokens per frame, each 512-d instead of 128). Seeds 0 and 1 in one --out, seed 2 in another sharing
# the data, tokenizer and LAT; the tokenizer and the LAT ran alone on both cores (threads), the rest one job per core.
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
COMMON="--rows repwam --tasks $H --episodes-per-task 20 --tok-steps 400 --lat-steps 300 --wam-steps 550 \
  --adapt-steps 6000 --eval-episodes 20 --keep-snapshots 8"
GRID=(--tok-args="--patch-size 4" --wam-args="--patch-size 4")
repwam ablate --out outputs/hardgrid --seeds 0 1 $COMMON "${GRID[@]}"
mkdir -p outputs/hardgrid_s2/runs && ln -s ../hardgrid/data outputs/hardgrid_s2/data
ln -s ../../hardgrid/runs/tok_default ../../hardgrid/runs/lat_default outputs/hardgrid_s2/runs/
repwam ablate --out outputs/hardgrid_s2 --seeds 2 $COMMON "${GRID[@]}" --jobs 1 --eval-workers 1
# one table with hard60's 8x8 rows (their eval/<run>/ folders in benchmarks/results/hard_tasks_60passes/eval20/eval)
python benchmarks/val_losses.py outputs/hardgrid/runs/wam_repwam_s0 outputs/hardgrid/runs/wam_repwam_s1 \
  outputs/hardgrid_s2/runs/wam_repwam_s2 --out benchmarks/results/hard_tasks_grid16/val_losses.json
# (where_episodes_end: the line at the end)
# what the latents keep of push's puck and reach's goal (first frame, ridge; rows added to goal_from_image.json)
python benchmarks/goal_from_image.py --task push-v3 --target object --train 20,60 --sizes 64 \
  --tokenizer 64=outputs/hardgrid/runs/tok_default/checkpoints/last --align-residual
python benchmarks/goal_from_image.py --task reach-v3 --train 20,60 --sizes 64 \
  --tokenizer 64=outputs/hardgrid/runs/tok_default/checkpoints/last --align-residual
python benchmarks/where_episodes_end.py benchmarks/results/hard_tasks_grid16/eval/* --out benchmarks/results/hard_tasks_grid16/where_episodes_end.json
# next (started 2026-12-06, not finished): the same tokenizer and LAT, the WAM at patch 2 (64 video tokens per frame)
mkdir -p outputs/hardgrid64/runs && ln -s ../hardgrid/data outputs/hardgrid64/data
ln -s ../../hardgrid/runs/tok_default ../../hardgrid/runs/lat_default outputs/hardgrid64/runs/
repwam ablate --out outputs/hardgrid64 --seeds 0 1 $COMMON --tok-args="--patch-size 4" --wam-args="--patch-size 2"
