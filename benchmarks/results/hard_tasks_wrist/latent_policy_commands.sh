#!/bin/bash
# The four hard tasks from the wrist camera (behindGripper): the action expert alone on its aligned latents, from
# scratch (latent_policy: no pretraining, no ℓ, no forecast), seed $1, on commands.sh's data, tokenizer and LAT
# (linked), in its own folder so that it runs beside commands.sh on the other core.
cd /work/main
export OMP_NUM_THREADS=1
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
mkdir -p outputs/hard_wrist_lp/runs
[ -e outputs/hard_wrist_lp/data ] || ln -s ../hard_wrist/data outputs/hard_wrist_lp/data
for r in tok_default lat_default; do
  [ -e outputs/hard_wrist_lp/runs/$r ] || ln -s ../../hard_wrist/runs/$r outputs/hard_wrist_lp/runs/
done
.venv/bin/repwam ablate --out outputs/hard_wrist_lp --cameras behindGripper --rows latent_policy --seeds $1 --tasks $H \
  --episodes-per-task 20 --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 6000 --plain-steps 6000 \
  --eval-episodes 20 --keep-snapshots 12 --jobs 1 --eval-workers 1
