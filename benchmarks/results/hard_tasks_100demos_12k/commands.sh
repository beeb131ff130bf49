#!/bin/bash
# Renamed 2026-12-07 (thirty-sixth sitting), when ℓ left out of the adaptation became its default: the commands
# below name the rows as they ran then. Their `repwam` (ℓ denoised beside the actions) is `repwam_ell` now, their
# `adapt_no_ell` (--ell-drop 1) is `repwam` now, and eval/wam_repwam_s* -> eval/wam_repwam_ell_s*,
# eval/wam_adapt_no_ell_s* -> eval/wam_repwam_s* so that --report-only labels them as today's rows do. To run them
# again under today's code: --rows repwam_ell for the first, --rows repwam (or adapt_no_ell) for the second.
# The four hard tasks from the camera with 100 demonstrations per task, both rows at 12,000 steps (~24 passes)
# instead of hard_tasks_100demos' 6,000 (2026-12-06, twenty-third and twenty-fourth sittings): seed 1's data,
# tokenizer, LAT and WAM pretraining from outputs/hard100 (linked), the adaptation and the plain policy trained anew
# (the cosine schedule spans 12,000 steps); evaluation on the same 20 layouts per task (seed 0). One job per core.
H=reach-v3,push-v3,pick-place-v3,peg-insert-side-v3
O=outputs/hard100_12k
mkdir -p $O/data $O/runs
ln -s ../../hard100/data/reach-v3+push-v3+pick-place-v3+peg-insert-side-v3 $O/data/
for r in tok_default lat_default wampre_repwam_s1; do ln -s ../../hard100/runs/$r $O/runs/; done
repwam ablate --out $O --rows repwam plain --seeds 1 --tasks $H --episodes-per-task 100 --tok-steps 400 \
  --lat-steps 300 --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 --eval-episodes 20 --jobs 1 \
  --eval-workers 1 --keep-snapshots 12
R=benchmarks/results/hard_tasks_100demos_12k
mkdir -p $R/eval && cp -r $O/eval/* $R/eval/
python benchmarks/val_losses.py $O/runs/wam_repwam_s1 $O/runs/plain_plain_s1 --out $R/val_losses.json
python benchmarks/where_episodes_end.py $R/eval/* --out $R/where_episodes_end.json
python benchmarks/expert_reliance.py $O/runs/wam_repwam_s1 outputs/hard100/runs/wam_repwam_s1 --out $R/expert_reliance.json
# RepWAM's 9,000-step snapshot on the same layouts
repwam eval policy --checkpoint $O/runs/wam_repwam_s1/checkpoints/step_0009000 --tasks $H --episodes 20 --seed 0 \
  --workers 1 --videos 0 --out $O/eval_snap/wam_repwam_s1_9000
# seeds 2 and 0 of both rows at 12,000 steps, in their own folder on the same data, tokenizer and LAT (seed 2 on its
# 6,000-step run's pretraining, seed 0 pretrained anew); one row per core, after the runs above
for row in repwam plain; do
  O=outputs/hard100_12k_b; [ $row = plain ] && O=outputs/hard100_12k_c
  mkdir -p $O/data $O/runs
  ln -s ../../hard100/data/reach-v3+push-v3+pick-place-v3+peg-insert-side-v3 $O/data/
  ln -s ../../hard100/runs/tok_default ../../hard100/runs/lat_default $O/runs/
  [ $row = repwam ] && ln -s ../../hard100_s2/runs/wampre_repwam_s2 $O/runs/
  repwam ablate --out $O --rows $row --seeds 2 0 --tasks $H --episodes-per-task 100 --tok-steps 400 \
    --lat-steps 300 --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 --eval-episodes 20 --jobs 1 \
    --eval-workers 1 --keep-snapshots 12 &
done
wait
cp -r outputs/hard100_12k_b/eval/* outputs/hard100_12k_c/eval/* $R/eval/
python benchmarks/val_losses.py outputs/hard100_12k/runs/{wam_repwam,plain_plain}_s1 \
  outputs/hard100_12k_b/runs/wam_repwam_s* outputs/hard100_12k_c/runs/plain_plain_s* --out $R/val_losses.json
python benchmarks/where_episodes_end.py $R/eval/* --out $R/where_episodes_end.json
# success along training (success_curve.png / .json): the 12,000-step run's snapshot and end beside the 6,000-step runs
R=benchmarks/results/hard_tasks_100demos_12k
mkdir -p $R/eval_snap && cp -r outputs/hard100_12k/eval_snap/wam_repwam_s1_9000 $R/eval_snap/
cd $R && python ../../success_curve.py --curve "RepWAM, 12,000-step run (seed 1)" 9000=eval_snap/wam_repwam_s1_9000 \
  12000=eval/wam_repwam_s1 --curve "plain, 12,000-step run (seed 1)" 12000=eval/plain_plain_s1 \
  --curve "RepWAM, 6,000-step run (seed 1)" 6000=../hard_tasks_100demos/eval/wam_repwam_s1 \
  --curve "plain, 6,000-step run (seed 1)" 3000=../hard_tasks_100demos/eval_snap/plain_plain_s1_3000 \
  4000=../hard_tasks_100demos/eval_snap/plain_plain_s1_4000 5000=../hard_tasks_100demos/eval_snap/plain_plain_s1_5000 \
  6000=../hard_tasks_100demos/eval/plain_plain_s1 --out success_curve.png && cd -
# what RepWAM's lead over the plain policy is made of (seed 1, in the seed-1 folder: its data, tokenizer, LAT and
# pretraining): no_forecast adapts that pretraining without ever training the forecast (--video-drop 1), latent_policy
# is the action expert alone on the latents from scratch (no pretraining, no ℓ, no forecast), 12,000 steps each
O=outputs/hard100_12k
repwam ablate --out $O --rows no_forecast latent_policy --seeds 1 --tasks $H --episodes-per-task 100 --tok-steps 400 \
  --lat-steps 300 --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 --eval-episodes 20 --jobs 1 \
  --eval-workers 1 --keep-snapshots 12
# the forecast weighed four times at adaptation (no_forecast, which never trains it, scores 0.1875 against RepWAM's
# 0.45 on seed 1): RepWAM seed 1 on the same data, tokenizer, LAT and pretraining, in its own folder (queued)
O=outputs/hard100_12k_vw
mkdir -p $O/data $O/runs
ln -s ../../hard100/data/reach-v3+push-v3+pick-place-v3+peg-insert-side-v3 $O/data/
for r in tok_default lat_default wampre_repwam_s1; do ln -s ../../hard100/runs/$r $O/runs/; done
repwam ablate --out $O --rows repwam --seeds 1 --tasks $H --episodes-per-task 100 --tok-steps 400 --lat-steps 300 \
  --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 --eval-episodes 20 --jobs 1 --eval-workers 1 \
  --keep-snapshots 12 --adapt-args="--video-weight 4"
# latent_policy scored 0.5625 on seed 1, above RepWAM's 0.45: its seed 2 (in the seed-2 folder) and the one-stage joint
# row (z + ℓ + actions from scratch, 550 + 12,000 steps) on seed 1, before RepWAM's seed 0
repwam ablate --out outputs/hard100_12k_b --rows latent_policy --seeds 2 --tasks $H --episodes-per-task 100 \
  --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 --eval-episodes 20 \
  --jobs 1 --eval-workers 1 --keep-snapshots 12
repwam ablate --out outputs/hard100_12k --rows joint --seeds 1 --tasks $H --episodes-per-task 100 --tok-steps 400 \
  --lat-steps 300 --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 --eval-episodes 20 --jobs 1 \
  --eval-workers 1 --keep-snapshots 12
# latent_policy's third seed (0, in the seed-0 folder), then joint_no_ell on seed 1: latent_policy that also learns
# the forecast from scratch (the one-stage model without ℓ; beside latent_policy and joint it shows what the forecast
# and ℓ each add when trained from scratch)
repwam ablate --out outputs/hard100_12k_b --rows latent_policy --seeds 0 --tasks $H --episodes-per-task 100 \
  --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 --eval-episodes 20 \
  --jobs 1 --eval-workers 1 --keep-snapshots 12
repwam ablate --out outputs/hard100_12k --rows joint_no_ell --seeds 1 --tasks $H --episodes-per-task 100 \
  --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 --eval-episodes 20 \
  --jobs 1 --eval-workers 1 --keep-snapshots 12
# (2026-12-06, twenty-eighth sitting: every output of the sittings before was gone; joint, joint_no_ell and the
# video-weight run were lost mid-training.) The data, tokenizer and LAT regenerated with the same seeds in the
# seed-0 folder, then latent_policy seed 0 and RepWAM seed 0 side by side (RepWAM paused: it could not finish in the
# sitting), and latent_policy on the reconstruction-only tokenizer's latents (latent_policy_recon, its tokenizer
# trained with λ_align = 0, 400 steps, and its LAT) on the same data on the other core
repwam ablate --out outputs/hard100_12k_b --rows repwam latent_policy --seeds 0 --tasks $H --episodes-per-task 100 \
  --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 --eval-episodes 20 \
  --jobs 2 --eval-workers 1 --keep-snapshots 12
O=outputs/hard100_12k_r
mkdir -p $O/data && ln -s ../../hard100_12k_b/data/reach-v3+push-v3+pick-place-v3+peg-insert-side-v3 $O/data/
repwam ablate --out $O --rows latent_policy_recon --seeds 0 --tasks $H --episodes-per-task 100 \
  --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 --eval-episodes 20 \
  --jobs 1 --eval-workers 1 --keep-snapshots 12
# (latent_policy_recon's evaluation ran with --workers 2 once the other core was free, resuming the ablation's own
# evaluation folder.) Next, queued: its seeds 1 and 2 on the same tokenizer and LAT, then latent_policy_teacher
repwam ablate --out $O --rows latent_policy_recon latent_policy_teacher --seeds 0 1 2 --tasks $H \
  --episodes-per-task 100 --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 \
  --eval-episodes 20 --jobs 1 --eval-workers 1 --keep-snapshots 12
# (2026-12-07, twenty-ninth sitting: the outputs were still there.) latent_policy_recon's seeds 1 and 2 side by side,
# one per core (seed 0 already evaluated; RepWAM seed 0 in outputs/hard100_12k_b left paused at 500 steps)
repwam ablate --out $O --rows latent_policy_recon --seeds 0 1 2 --tasks $H --episodes-per-task 100 \
  --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 --eval-episodes 20 \
  --jobs 2 --eval-workers 1 --keep-snapshots 12
cp -r $O/eval/wam_latent_policy_recon_s1 $O/eval/wam_latent_policy_recon_s2 $R/eval/
python benchmarks/val_losses.py $O/runs/wam_latent_policy_recon_s{1,2} --out $R/val_losses.json --update
python benchmarks/where_episodes_end.py $R/eval/* --out $R/where_episodes_end.json
# then RepWAM seed 0 resumed from its step 500 beside the mt10 run, with --jobs 1: with --jobs 2 the lone job took
# both cores as threads beside another pipeline and ran at 9-22 s/step instead of 0.74
repwam ablate --out outputs/hard100_12k_b --rows repwam latent_policy --seeds 0 --tasks $H --episodes-per-task 100 \
  --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 --eval-episodes 20 \
  --jobs 1 --eval-workers 1 --keep-snapshots 12
# next, queued: latent_policy_teacher on the same data
repwam ablate --out $O --rows latent_policy_teacher --seeds 0 1 2 --tasks $H --episodes-per-task 100 \
  --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 --eval-episodes 20 \
  --jobs 1 --eval-workers 1 --keep-snapshots 12
# (2026-12-07, thirtieth sitting: the outputs were still there.) RepWAM seed 0 resumed as above (from its step 1500);
# on the other core, in place of the mt10 run (paused in its tokenizer), latent_policy_ell seed 0: latent_policy that
# also denoises ℓ (ℓ + actions from scratch, no forecast), i.e. no_forecast without the pretraining, on seed 0's
# data, tokenizer and LAT (linked)
O=outputs/hard100_12k_e
mkdir -p $O/data $O/runs
ln -s ../../hard100_12k_b/data/reach-v3+push-v3+pick-place-v3+peg-insert-side-v3 $O/data/
for r in tok_default lat_default; do ln -s ../../hard100_12k_b/runs/$r $O/runs/; done
repwam ablate --out $O --rows latent_policy_ell --seeds 0 --tasks $H --episodes-per-task 100 \
  --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 --eval-episodes 20 \
  --jobs 1 --eval-workers 1 --keep-snapshots 12
# latent_policy_ell's validation robot loss fell behind latent_policy's and RepWAM's by step 4,500 (0.282 against
# 0.238 and 0.264): ℓ trained beside the actions costs the expert. So RepWAM seed 0 was paused at its step 5,000 (it
# resumes with the command above) and, on that core, RepWAM seed 0 adapted with ℓ left out of every batch (the robot's
# actions in ℓ's place; the same pretraining, linked)
O=outputs/hard100_12k_l
mkdir -p $O/data $O/runs
ln -s ../../hard100_12k_b/data/reach-v3+push-v3+pick-place-v3+peg-insert-side-v3 $O/data/
for r in tok_default lat_default wampre_repwam_s0; do ln -s ../../hard100_12k_b/runs/$r $O/runs/; done
repwam ablate --out $O --rows repwam --seeds 0 --tasks $H --episodes-per-task 100 --tok-steps 400 --lat-steps 300 \
  --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 --eval-episodes 20 --jobs 1 --eval-workers 1 \
  --keep-snapshots 12 --adapt-args="--ell-drop 1"
# latent_policy_ell seed 0's results (2026-12-07, thirtieth sitting), and what each loss term pulls on
cp -r outputs/hard100_12k_e/eval/wam_latent_policy_ell_s0 $R/eval/
python benchmarks/val_losses.py outputs/hard100_12k_e/runs/wam_latent_policy_ell_s0 --out $R/val_losses.json --update
python benchmarks/where_episodes_end.py $R/eval/* --out $R/where_episodes_end.json
python benchmarks/loss_gradients.py outputs/hard100_12k_b/runs/wam_repwam_s0 outputs/hard100_12k_l/runs/wam_repwam_s0 \
  --checkpoint step_0005000 --out $R/loss_gradients.json
python benchmarks/loss_gradients.py outputs/hard100_12k_b/runs/wam_latent_policy_s0 \
  outputs/hard100_12k_e/runs/wam_latent_policy_ell_s0 --checkpoint step_0006500 --out $R/loss_gradients.json
# (2026-12-07, thirty-first sitting.) RepWAM seed 0 with --ell-drop 1 above finished and was evaluated (as `repwam`
# in outputs/hard100_12k_l, eval/wam_repwam_s0); the same job is now the row adapt_no_ell, copied under its name
cp -r outputs/hard100_12k_l/eval/wam_repwam_s0 $R/eval/wam_adapt_no_ell_s0
# its seeds 1 and 2, one per core: each folder links seed 0's data, tokenizer and LAT and pretrains its own seed
# (outputs/hard100_12k_n also links seed 0's run and evaluation under the row's name, so that its table has all three)
O=outputs/hard100_12k_n
mkdir -p $O/data $O/runs $O/eval
ln -s ../../hard100_12k_b/data/reach-v3+push-v3+pick-place-v3+peg-insert-side-v3 $O/data/
for r in tok_default lat_default wampre_repwam_s0; do ln -s ../../hard100_12k_b/runs/$r $O/runs/; done
ln -s ../../hard100_12k_l/runs/wam_repwam_s0 $O/runs/wam_adapt_no_ell_s0
ln -s ../../hard100_12k_l/eval/wam_repwam_s0 $O/eval/wam_adapt_no_ell_s0
repwam ablate --out $O --rows adapt_no_ell --seeds 0 1 --tasks $H --episodes-per-task 100 \
  --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 --eval-episodes 20 \
  --jobs 1 --eval-workers 1 --keep-snapshots 12
O=outputs/hard100_12k_n2
mkdir -p $O/data $O/runs
ln -s ../../hard100_12k_b/data/reach-v3+push-v3+pick-place-v3+peg-insert-side-v3 $O/data/
for r in tok_default lat_default; do ln -s ../../hard100_12k_b/runs/$r $O/runs/; done
repwam ablate --out $O --rows adapt_no_ell --seeds 2 --tasks $H --episodes-per-task 100 \
  --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 --eval-episodes 20 \
  --jobs 1 --eval-workers 1 --keep-snapshots 12
python benchmarks/val_losses.py outputs/hard100_12k_n/runs/wam_adapt_no_ell_s0 --out $R/val_losses.json --update
python benchmarks/where_episodes_end.py $R/eval/* --out $R/where_episodes_end.json
# RepWAM seed 0 (the plain recipe, resumed above) finished and was evaluated: the row's third seed
cp -r outputs/hard100_12k_b/eval/wam_repwam_s0 $R/eval/
python benchmarks/val_losses.py outputs/hard100_12k_b/runs/wam_repwam_s0 --out $R/val_losses.json --update
python benchmarks/where_episodes_end.py $R/eval/* --out $R/where_episodes_end.json
# is ℓ's cost in training or in sampling ℓ beside the actions? RepWAM seed 0 (ℓ denoised in 75% of its adaptation
# batches) run with ℓ left out at inference, on the same layouts (one core, beside the two adapt_no_ell seeds)
repwam eval policy --checkpoint outputs/hard100_12k_b/runs/wam_repwam_s0/checkpoints/last --tasks $H --episodes 20 \
  --seed 0 --workers 1 --videos 0 --setting robot_only=true --out outputs/hard100_12k_b/eval_set/wam_repwam_s0_robot_only
mkdir -p $R/eval_settings && cp -r outputs/hard100_12k_b/eval_set/wam_repwam_s0_robot_only $R/eval_settings/
# does RepWAM seed 0's expert lean on the noisy ℓ it was trained beside? its validation robot loss with ℓ left out
python benchmarks/expert_reliance.py outputs/hard100_12k_b/runs/wam_repwam_s0 --out $R/expert_reliance_s0.json
# adapt_no_ell seeds 1 and 2 finished and were evaluated (2026-12-07, thirty-second sitting; the two repwam ablate
# commands above, resumed): the row's three seeds
cp -r outputs/hard100_12k_n/eval/wam_adapt_no_ell_s1 outputs/hard100_12k_n2/eval/wam_adapt_no_ell_s2 $R/eval/
python benchmarks/val_losses.py outputs/hard100_12k_n/runs/wam_adapt_no_ell_s1 --out $R/val_losses.json --update
python benchmarks/val_losses.py outputs/hard100_12k_n2/runs/wam_adapt_no_ell_s2 --out $R/val_losses.json --update
python benchmarks/where_episodes_end.py $R/eval/* --out $R/where_episodes_end.json
repwam ablate --out $R --rows plain latent_policy_recon no_forecast latent_policy_ell repwam adapt_no_ell \
  latent_policy --seeds 0 1 2 --tasks $H --report-only
cp $R/ablation.png docs/img/ablation_hard100_12k.png
# the evaluations now keep their run's run.json; the results copied in above whose runs were still on disk got it
# by hand (2026-12-07, thirty-third sitting): repwam ablate refuses results trained with other settings than asked
for d in $R/eval/*/; do
  f=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['settings']['policy']['kwargs']['path'])" \
      $d/results.json)
  [ -e "$(dirname $(dirname $f))/run.json" ] && [ ! -e $d/run.json ] && cp "$(dirname $(dirname $f))/run.json" $d/
done
# joint_no_ell seed 0 (the action expert and the forecast from scratch, no ℓ, no pretraining: latent_policy that also
# learns to forecast), on seed 0's data, tokenizer and LAT, one core (started in the thirty-third sitting in place of
# latent_policy_ell seed 1, stopped at step 1,500: seed 0's command above with --seeds 1 resumes it)
O=outputs/hard100_12k_j
mkdir -p $O/data $O/runs
ln -s ../../hard100_12k_b/data/reach-v3+push-v3+pick-place-v3+peg-insert-side-v3 $O/data/
for r in tok_default lat_default; do ln -s ../../hard100_12k_b/runs/$r $O/runs/; done
repwam ablate --out $O --rows joint_no_ell --seeds 0 --tasks $H --episodes-per-task 100 \
  --tok-steps 400 --lat-steps 300 --wam-steps 550 --adapt-steps 12000 --plain-steps 12000 --eval-episodes 20 \
  --jobs 1 --eval-workers 1 --keep-snapshots 12
# joint_no_ell seed 0 finished and was evaluated (2026-12-07, thirty-fourth sitting; the command above, resumed)
cp -r outputs/hard100_12k_j/eval/wam_joint_no_ell_s0 $R/eval/
python benchmarks/val_losses.py outputs/hard100_12k_j/runs/wam_joint_no_ell_s0 --out $R/val_losses.json --update
python benchmarks/where_episodes_end.py $R/eval/* --out $R/where_episodes_end.json
repwam ablate --out $R --rows plain latent_policy_recon no_forecast latent_policy_ell repwam adapt_no_ell \
  latent_policy joint_no_ell --seeds 0 1 2 --tasks $H --report-only
cp $R/ablation.png docs/img/ablation_hard100_12k.png
