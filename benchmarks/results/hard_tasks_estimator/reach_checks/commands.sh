# Reach only, 20 layouts (--seed 0), 2026-12-05 (fifteenth sitting): does reach's imprecision come from sampling?
# chunk=1: replanning every 4 actions instead of 8 (an existing RepWAM setting)
H=reach-v3
repwam eval policy --checkpoint outputs/hard60/runs/wam_repwam_goal_s1/checkpoints/last --tasks $H --episodes 20 --seed 0 --workers 1 --out goal_s1_reach_chunk1 --videos 1 --setting chunk=1
repwam eval policy --checkpoint outputs/hard60/runs/wam_repwam_est2v_s2/checkpoints/last --tasks $H --episodes 20 --seed 0 --workers 1 --out est2v_s2_reach_chunk1 --videos 1 --setting chunk=1
# noise_scale=0: every chunk's flow started from the prior's mean instead of N(0, I). A one-off change, not landed:
# in WorldActionModel.sample_chunk, x0 = noise_scale * torch.randn(...), passed from a RepWAMPolicy setting
repwam eval policy --checkpoint outputs/hard60/runs/wam_repwam_goal_s1/checkpoints/last --tasks $H --episodes 20 --seed 0 --workers 1 --out goal_s1_reach_n0 --videos 1 --setting noise_scale=0
repwam eval policy --checkpoint outputs/hard60/runs/wam_repwam_est2v_s2/checkpoints/last --tasks $H --episodes 20 --seed 0 --workers 1 --out est2v_s2_reach_n0 --videos 1 --setting noise_scale=0
