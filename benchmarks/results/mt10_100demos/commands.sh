# mt10 from the camera with 100 demonstrations per task (1,000 in all): ~24 passes over them, 30,000 adaptation
# steps, the passes that lifted the four hard tasks to 0.45 (hard_tasks_100demos_12k); WAM pretraining scaled with
# the data (1,400 steps against 550 for 400 demonstrations). One job per core; each resumes when run again.
O=outputs/mt10_100
# first the action expert alone on the aligned latents (latent_policy: 0.59 +- 0.04 on the four hard tasks with 100
# demonstrations, 0.67 on mt10 with 20, seed 0), seed 1, for the same 30,000 steps
repwam ablate --out $O --rows latent_policy --seeds 1 --tasks mt10 --episodes-per-task 100 \
  --tok-steps 400 --lat-steps 300 --wam-steps 1400 --adapt-steps 30000 --plain-steps 30000 --eval-episodes 20 \
  --jobs 1 --eval-workers 1 --keep-snapshots 10
repwam ablate --out $O --rows repwam --seeds 1 --tasks mt10 --episodes-per-task 100 \
  --tok-steps 400 --lat-steps 300 --wam-steps 1400 --adapt-steps 30000 --plain-steps 30000 --eval-episodes 20 \
  --jobs 1 --eval-workers 1 --keep-snapshots 10
# the plain policy on the same data (same out folder: the data is shared), on the other core
repwam ablate --out $O --rows plain --seeds 1 --tasks mt10 --episodes-per-task 100 \
  --tok-steps 400 --lat-steps 300 --wam-steps 1400 --adapt-steps 30000 --plain-steps 30000 --eval-episodes 20 \
  --jobs 1 --eval-workers 1 --keep-snapshots 10
# (2026-12-07: every earlier output was lost; the first command above, latent_policy seed 1, started again in
# outputs/mt10_100; RepWAM and the plain policy still queued)
