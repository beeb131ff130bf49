"""World action model stage on tiny sizes: pretraining through the one trainer (also on action-free video),
lineage checks, the imagined-future evaluation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from repwam.checkpoint import weights_hash
from repwam.errors import RepwamError
from repwam.train.args import train_args
from repwam.train.trainer import OptimConfig, run_record
from repwam.train.wam import WAMTrainConfig, train_wam
from repwam.wam.model import WorldActionModel


def small(tokenizer, lat, steps=4, **kw):
    return WAMTrainConfig(tokenizer=str(tokenizer), lat=str(lat), clip_frames=4, attn_window=3, val_fraction=0.34, **kw,
                          optim=OptimConfig(steps=steps, batch_size=4, optimizer="muon", lr=1e-3, muon_lr=0.01,
                                            warmup=1, save_every=steps, log_every=1, val_items=8, ema=0.9))


@pytest.fixture(scope="module")
def wam_ckpt(tiny_tokenizer, tiny_lat, tiny_dataset, tmp_path_factory):
    return train_wam(small(tiny_tokenizer, tiny_lat), [tiny_dataset], tmp_path_factory.mktemp("wam") / "run",
                     progress=False)


def test_pretrain_checkpoint_records_lineage_and_no_text_encoder(wam_ckpt, tiny_tokenizer, tiny_lat):
    model = WorldActionModel.from_pretrained(wam_ckpt)
    meta = model.checkpoint_meta
    assert meta["parents"]["tokenizer"]["weights_hash"] == weights_hash(tiny_tokenizer)
    assert meta["parents"]["lat"]["weights_hash"] == weights_hash(tiny_lat)
    assert meta["text_encoder"]["name"] == "all-minilm-l6-v2" and model.cfg.text_dim == 384
    assert len(meta["ell_stats"]["mean"]) == 4 and meta["split"]["val_episodes"] and meta["step"] == 4
    assert model.cfg.attn_window == 3
    files = sorted(p.name for p in wam_ckpt.iterdir())
    assert files == ["config.json", "model.safetensors"], "the frozen text encoder is referenced, never copied"
    assert (wam_ckpt / "model.safetensors").stat().st_size < 4 * model.num_params() + 100_000


def test_lat_from_another_tokenizer_is_refused(tiny_tokenizer, tiny_lat, tiny_dataset, tmp_path):
    from repwam.tokenizer.tokenize import load_tokenizer

    other = load_tokenizer(tiny_tokenizer)
    with torch.no_grad():
        next(other.parameters()).mul_(1.01)
    other_path = other.save_pretrained(tmp_path / "other_tok", {"frame_stride": 1, "num_frames": 9})
    with pytest.raises(RepwamError, match=f"{weights_hash(tiny_tokenizer)}.*{weights_hash(other_path)}"):
        train_wam(small(other_path, tiny_lat), [tiny_dataset], tmp_path / "run", progress=False)


def test_pretrains_on_video_without_actions(tiny_tokenizer, tiny_lat, tiny_dataset, tmp_path):
    """A dataset with no action column pretrains: ℓ comes from the LAT."""
    from conftest import video_only_copy

    from repwam.data.lerobot import LeRobotDataset

    root = video_only_copy(tiny_dataset, tmp_path / "video_only")
    assert "action" not in LeRobotDataset(root).features
    ckpt = train_wam(small(tiny_tokenizer, tiny_lat, steps=2), [root], tmp_path / "run", progress=False)
    assert json.loads((ckpt / "config.json").read_text())["step"] == 2


def test_imagined_future_evaluation(wam_ckpt, tiny_dataset, tmp_path):
    from repwam.eval.wam import evaluate_wam, format_table

    res = evaluate_wam(wam_ckpt, [tiny_dataset], horizon=3, max_episodes=3, out_dir=tmp_path, strips=1, progress=False)
    t = res["per_horizon"]
    assert res["episodes"] >= 1 and all(len(v) == 3 for v in t.values())
    assert all(np.isfinite(v).all() for v in t.values())
    assert all(5 < p < 60 for p in t["psnr"]) and min(t["copy_latent_mse"]) > 0
    assert "copy-last" in format_table(res)
    png = tmp_path / "imagined_0.png"
    assert png.exists() and (tmp_path / "imagined_0.gif").exists()


@pytest.fixture(scope="module")
def adapted(wam_ckpt, tiny_dataset, tmp_path_factory):
    cfg = WAMTrainConfig(stage="adapt", init=str(wam_ckpt), clip_frames=4, attn_window=3, val_fraction=0.34,
                         optim=OptimConfig(steps=3, batch_size=4, optimizer="muon", lr=1e-3, warmup=1, save_every=3,
                                           log_every=1, val_items=8))
    return train_wam(cfg, [tiny_dataset], tmp_path_factory.mktemp("adapt") / "run", progress=False)


def test_adapt_adds_the_action_expert_and_keeps_lineage(adapted, wam_ckpt):
    model = WorldActionModel.from_pretrained(adapted)
    meta = model.checkpoint_meta
    assert model.cfg.robot_action_dim == 4 and model.cfg.robot_per_frame == 4 and model.cfg.state_dim == 4
    assert meta["stage"] == "adapt" and meta["init"] == str(wam_ckpt)
    assert len(meta["action_stats"]["mean"]) == 4 and len(meta["state_stats"]["std"]) == 4
    pre = WorldActionModel.from_pretrained(wam_ckpt)
    assert meta["parents"] == pre.checkpoint_meta["parents"]


def test_adapt_with_the_read_out_of_the_simulator_state(wam_ckpt, tiny_dataset, tmp_path):
    """aux_key: clips carry the normalised simulator observation at each latent frame's last raw frame (where the
    state is taken), the adapted model has the 39-d read-out and the checkpoint names the key; it is refused where
    there are no state tokens."""
    from repwam.data.lerobot import LeRobotDataset
    from repwam.serve import ENV_STATE_KEY
    from repwam.train.wam import WAMStage

    with pytest.raises(RepwamError, match="needs --stage adapt or joint"):
        WAMTrainConfig(aux_key=ENV_STATE_KEY)
    with pytest.raises(RepwamError, match="aux_key must be"):
        WAMTrainConfig(stage="adapt", aux_key="observation.state")
    cfg = WAMTrainConfig(stage="adapt", init=str(wam_ckpt), clip_frames=4, attn_window=3, val_fraction=0.34,
                         aux_key=ENV_STATE_KEY, optim=OptimConfig(steps=2, batch_size=4, optimizer="muon", lr=1e-3,
                                                                  warmup=1, save_every=2, val_items=8))
    stage = WAMStage(cfg, [tiny_dataset], progress=False)
    item = stage.train_set[3]
    d, e, s = stage.train_set.index[3]
    env = np.asarray(LeRobotDataset(tiny_dataset).episode_data(e)[ENV_STATE_KEY], np.float32)
    rows = np.minimum(4 * np.arange(s, s + 4), len(env) - 1)  # temporal patch 4, stride 1
    torch.testing.assert_close(torch.as_tensor(item["aux"]), torch.as_tensor(stage.train_set.aux_norm(env[rows])))
    assert item["aux"].shape == (4, 39) and min(stage.train_set.aux_norm.std) >= 1e-2
    ckpt = train_wam(cfg, [tiny_dataset], tmp_path / "run", progress=False)
    model = WorldActionModel.from_pretrained(ckpt)
    assert model.cfg.aux_dim == 39 and model.checkpoint_meta["aux_key"] == ENV_STATE_KEY


def test_adapt_refuses_another_lat(adapted, wam_ckpt, tiny_tokenizer, tiny_dataset, tmp_path):
    from repwam.lat.model import LatentActionTokenizer

    lat = LatentActionTokenizer.from_pretrained(WorldActionModel.from_pretrained(wam_ckpt).checkpoint_meta["parents"]["lat"]["path"])
    with torch.no_grad():
        next(lat.parameters()).add_(0.01)
    other = lat.save_pretrained(tmp_path / "other_lat", {k: v for k, v in lat.checkpoint_meta.items()
                                                         if k not in ("path", "weights_hash", "type")})
    cfg = WAMTrainConfig(stage="adapt", init=str(wam_ckpt), tokenizer=str(tiny_tokenizer), lat=str(other),
                         optim=OptimConfig(steps=1, batch_size=4))
    with pytest.raises(RepwamError, match="pretrained with lat"):
        train_wam(cfg, [tiny_dataset], tmp_path / "run", progress=False)


def _episode_obs(ds, e, t):
    cam = ds.camera_keys[0]
    frames = ds.episode_frames(e, cam)
    state = np.asarray(ds.episode_data(e)["observation.state"], np.float32)
    return {cam: frames[t], "observation.state": state[t], "prompt": ds.episode_task(e)}


def test_policy_receding_horizon_and_cache_equal_fresh_encode(adapted, tiny_dataset):
    """Replans exactly every k·4 calls; the history holds the streamed latents of the observed frames, equal to a
    whole-sequence encode of the same frames; actions-only never runs the video stream."""
    from repwam.data.lerobot import LeRobotDataset
    from repwam.data.transforms import frames_to_model
    from repwam.policy import load_policy

    ds = LeRobotDataset(tiny_dataset)
    policy = load_policy(adapted, chunk=1)
    assert policy.metadata["action_horizon"] == 4 and policy.metadata["action_dim"] == 4
    plans = []
    real = type(policy.model).sample_chunk

    def counted(self, *a, **kw):
        plans.append(kw.get("actions_only"))
        return real(self, *a, **kw)

    video_calls = []
    hook = policy.model.io["video"].head.register_forward_hook(lambda *a: video_calls.append(1))
    type(policy.model).sample_chunk = counted
    try:
        policy.reset(ds.episode_task(0))
        for t in range(13):
            out = policy.infer(_episode_obs(ds, 0, t))
            assert out["actions"].shape[1] == 4 and 1 <= len(out["actions"]) <= 4
            assert np.isfinite(out["actions"]).all()
    finally:
        type(policy.model).sample_chunk = real
        hook.remove()
    assert len(plans) == 4, "plans at t = 0, 4, 8, 12"
    assert not video_calls, "actions-only mode never runs the video head"
    # the latents the policy streamed equal a whole-sequence encode of frames 0..12
    cam = ds.camera_keys[0]
    frames = frames_to_model(torch.from_numpy(ds.episode_frames(0, cam)[:13]).permute(0, 3, 1, 2))
    with torch.no_grad():
        z_full = policy.tokenizer.encode(frames[None])[0]  # (4, L, d)
    torch.testing.assert_close(torch.stack(policy.history_latents()), z_full, atol=1e-4, rtol=1e-4)


def test_policy_plans_ahead_of_what_it_executes(adapted, tiny_dataset):
    """execute=4 with chunk=2: every plan samples two latent frames (8 actions) and runs the first 4; each replan
    appends one observed latent frame with the 4 actions really run; the history still equals a fresh encode."""
    from repwam.data.lerobot import LeRobotDataset
    from repwam.data.transforms import frames_to_model
    from repwam.policy import load_policy

    ds = LeRobotDataset(tiny_dataset)
    policy = load_policy(adapted, chunk=2, execute=4)
    assert policy.metadata["action_horizon"] == 4
    sampled, appended = [], []
    sample, append = policy.model.sample_chunk, policy.model.append
    policy.model.sample_chunk = lambda c, k, **kw: sampled.append(k) or sample(c, k, **kw)
    policy.model.append = lambda c, z, **kw: appended.append((z.shape[1], kw.get("robot"))) or append(c, z, **kw)
    policy.reset(ds.episode_task(0))
    run = []
    for t in range(13):
        out = policy.infer(_episode_obs(ds, 0, t))
        assert 1 <= len(out["actions"]) <= 4
        run.append(out["actions"][0])
    assert sampled == [2, 2, 2, 2], "plans at t = 0, 4, 8, 12, each of two latent frames"
    assert [n for n, _ in appended] == [1, 1, 1, 1], "frame 0, then one observed latent frame per replan"
    executed = policy.action_norm(torch.from_numpy(np.stack(run[:4])))  # the first plan's 4 actions, normalised
    torch.testing.assert_close(appended[1][1][0, 0].float(), executed.float(), atol=1e-5, rtol=1e-5)
    cam = ds.camera_keys[0]
    frames = frames_to_model(torch.from_numpy(ds.episode_frames(0, cam)[:13]).permute(0, 3, 1, 2))
    with torch.no_grad():
        z_full = policy.tokenizer.encode(frames[None])[0]  # (4, L, d)
    torch.testing.assert_close(torch.stack(policy.history_latents()), z_full, atol=1e-4, rtol=1e-4)


def test_policy_bad_inputs(adapted, tiny_dataset):
    from repwam.data.lerobot import LeRobotDataset
    from repwam.policy import load_policy

    ds = LeRobotDataset(tiny_dataset)
    with pytest.raises(RepwamError, match=r"chunk must be in \[1, 4\]"):
        load_policy(adapted, chunk=5)
    with pytest.raises(RepwamError, match="inference settings are chunk.*unknown: steps"):
        load_policy(adapted, steps=4)  # the plain policy's setting
    for bad in (2, 12, 0, 4.0, True):
        with pytest.raises(RepwamError, match=r"execute must be a multiple of 4 .* in \[4, 8\] \(chunk=2"):
            load_policy(adapted, chunk=2, execute=bad)
    for bad in (0, 2.5, True):
        with pytest.raises(RepwamError, match="action_steps must be a positive integer"):
            load_policy(adapted, action_steps=bad)
    policy = load_policy(adapted)
    obs = _episode_obs(ds, 0, 0)
    with pytest.raises(RepwamError, match="reset"):
        policy.infer(obs)
    policy.reset(ds.episode_task(0))
    cam = ds.camera_keys[0]
    for bad, match in (({k: v for k, v in obs.items() if k != cam}, cam),
                       ({**obs, "observation.state": np.array([np.nan, 0, 0, 0], np.float32)}, "non-finite"),
                       ({**obs, cam: obs[cam].astype(np.float32)}, "uint8"),
                       ({**obs, "observation.state": np.zeros(3, np.float32)}, "observation.state")):
        with pytest.raises(RepwamError, match=match):
            policy.infer(bad)


def test_policy_euler_steps_setting_reaches_the_sampler(adapted, tiny_dataset):
    """action_steps / video_steps (inference settings) are the Euler steps sample_chunk runs; default: the model's."""
    from repwam.data.lerobot import LeRobotDataset
    from repwam.policy import load_policy

    ds = LeRobotDataset(tiny_dataset)
    for settings, want in (({}, (None, None)), ({"action_steps": 3, "video_steps": 2}, (3, 2))):
        policy = load_policy(adapted, **settings)
        calls, sample = [], policy.model.sample_chunk
        policy.model.sample_chunk = lambda *a, **kw: calls.append(kw) or sample(*a, **kw)  # noqa: B023
        policy.reset(ds.episode_task(0))
        policy.infer(_episode_obs(ds, 0, 0))
        assert [(kw["action_steps"], kw["video_steps"]) for kw in calls] == [want]


def test_closed_loop_episode_end_to_end(adapted, tmp_path):
    """A tiny untrained-quality RepWAM policy drives a Meta-World episode through the evaluation harness."""
    from repwam.eval.closed_loop import evaluate_policy, policy_spec

    res = evaluate_policy(policy_spec(str(adapted)), tasks=["reach-v3"], episodes_per_task=1, seed=0, workers=0,
                          out_dir=tmp_path, max_steps=12, videos_per_task=1, progress=False)
    row = res["tasks"]["reach-v3"]
    assert row["episodes"] == 1 and 0 <= row["success_rate"] <= 1 and row["infer_ms_mean"] > 0


def test_closed_loop_with_inference_settings_records_them(adapted, tmp_path):
    """`--setting chunk=1` reaches the policy in the worker, is recorded in eval_config.json, and a rerun with other
    settings into the same folder is refused instead of mixing episodes of two policies."""
    import json

    from repwam.eval.closed_loop import evaluate_policy, policy_spec

    kw = dict(tasks=["reach-v3"], episodes_per_task=1, seed=0, workers=0, out_dir=tmp_path, max_steps=6,
              videos_per_task=0, progress=False)
    evaluate_policy(policy_spec(str(adapted), settings={"chunk": 1}), **kw)
    config = json.loads((tmp_path / "eval_config.json").read_text())
    assert config["policy"]["kwargs"]["settings"] == {"chunk": 1}
    with pytest.raises(RepwamError, match="other settings"):
        evaluate_policy(policy_spec(str(adapted), settings={"chunk": 2}), **kw)


def test_policy_through_the_server_matches_in_process(adapted, tiny_dataset, tmp_path):
    """`repwam eval policy --server` gives the same episodes as in-process evaluation with the same seeds."""
    from repwam.eval.closed_loop import evaluate_policy, policy_spec
    from repwam.serve.server import PolicyServer, checkpoint_policy_factory

    kw = dict(tasks=["drawer-open-v3"], episodes_per_task=1, seed=3, workers=0, max_steps=10, videos_per_task=0,
              progress=False)
    local = evaluate_policy(policy_spec(str(adapted)), out_dir=tmp_path / "local", **kw)
    make_policy, metadata = checkpoint_policy_factory(adapted)
    with PolicyServer(make_policy, "127.0.0.1", 0, metadata=metadata) as server:
        remote = evaluate_policy(policy_spec(server.url), out_dir=tmp_path / "remote", **kw)
        # and action for action on recorded observations
        from repwam.data.lerobot import LeRobotDataset
        from repwam.policy import load_policy
        from repwam.serve.client import WebsocketPolicy

        ds = LeRobotDataset(tiny_dataset)
        here, there = load_policy(adapted), WebsocketPolicy(server.url)
        here.reset(ds.episode_task(1))
        there.reset(ds.episode_task(1))
        for t in range(6):
            obs = _episode_obs(ds, 1, t)
            np.testing.assert_allclose(here.infer(obs)["actions"], there.infer(obs)["actions"], atol=1e-5)
    a, b = (json.loads((tmp_path / d / "episodes.jsonl").read_text().splitlines()[0]) for d in ("local", "remote"))
    assert (a["success"], a["steps"], a["seed"]) == (b["success"], b["steps"], b["seed"])
    assert local["mean"]["success_rate"] == remote["mean"]["success_rate"]


def test_adapt_and_policy_with_the_first_frame_as_context(wam_ckpt, tiny_dataset, tmp_path):
    """--first-frame-context: clips carry their episode's first latent frame, adaptation adds the context to a
    pretrained WAM, and the policy gives the model the first frame it observed (the same latents as training)."""
    from repwam.policy import load_policy
    from repwam.train.wam import WAMStage
    from repwam.data.lerobot import LeRobotDataset

    cfg = WAMTrainConfig(stage="adapt", init=str(wam_ckpt), clip_frames=4, attn_window=3, val_fraction=0.34,
                         first_frame_context=True, optim=OptimConfig(steps=2, batch_size=4, optimizer="muon", lr=1e-3,
                                                                     warmup=1, save_every=2, val_items=8))
    stage = WAMStage(cfg, [tiny_dataset], progress=False)
    d, e, s = stage.train_set.index[5]
    assert s > 0  # a clip that does not start at the episode's start still carries frame 0
    np.testing.assert_array_equal(np.asarray(stage.train_set[5]["first"]), np.asarray(stage.train_set.latents[d][e][0]))
    ckpt = train_wam(cfg, [tiny_dataset], tmp_path / "run", progress=False)
    model = WorldActionModel.from_pretrained(ckpt)
    assert model.cfg.first_frame_context

    ds = LeRobotDataset(tiny_dataset)
    policy = load_policy(ckpt, chunk=1)
    policy.reset(ds.episode_task(0))
    for t in range(6):
        assert np.isfinite(policy.infer(_episode_obs(ds, 0, t))["actions"]).all()
    z0 = policy.history_latents()[0]
    with torch.no_grad():
        ctx = model.first_proj(model.patchify(z0[None, None])) + model.first_pos
    torch.testing.assert_close(policy._episode["cache"].text.emb[0, -len(model.first_pos):], ctx[0])


def test_adapt_with_the_last_state_as_anchor_and_a_wider_expert(wam_ckpt, tiny_dataset, tmp_path):
    """--last-state-cond: adaptation adds the robot anchor (zero-initialised, then trained) and the policy's cache
    carries the latest observed state into every chunk it samples. --robot-width sets the action expert's width;
    --robot-token-per-action its layout (one token per raw action), which the policy samples through;
    --no-robot-history leaves the executed actions out of the history (the policy still passes them: ignored)."""
    from repwam.data.lerobot import LeRobotDataset
    from repwam.policy import load_policy

    with pytest.raises(RepwamError, match="last_state_cond .* needs --stage adapt or joint with use_state"):
        WAMTrainConfig(stage="adapt", use_state=False, last_state_cond=True)
    with pytest.raises(RepwamError, match="robot_width=48: the action expert's width is set at adapt or joint"):
        WAMTrainConfig(robot_width=48)
    with pytest.raises(RepwamError, match="robot_token_per_action .* needs --stage adapt or joint"):
        WAMTrainConfig(robot_token_per_action=True)
    with pytest.raises(RepwamError, match="--no-robot-history .* needs --stage adapt or joint"):
        WAMTrainConfig(robot_history=False)
    cfg = WAMTrainConfig(stage="adapt", init=str(wam_ckpt), clip_frames=4, attn_window=3, val_fraction=0.34,
                         last_state_cond=True, robot_width=48, robot_token_per_action=True, robot_history=False,
                         optim=OptimConfig(steps=3, batch_size=4, optimizer="muon", lr=1e-3, warmup=1, save_every=3,
                                           val_items=8))
    ckpt = train_wam(cfg, [tiny_dataset], tmp_path / "run", progress=False)
    model = WorldActionModel.from_pretrained(ckpt)
    assert model.cfg.last_state_cond and model.io["robot"].anchor.weight.abs().max() > 0
    assert model.cfg.robot_token_per_action and model.cfg.group_tokens_per_frame("robot") == model.cfg.robot_per_frame
    assert not model.cfg.robot_history
    pre = WorldActionModel.from_pretrained(wam_ckpt)
    assert model.cfg.stream("robot").width == 48 and model.cfg.stream("robot").ffn_hidden == 192
    assert [model.cfg.stream(n) for n in ("video", "action")] == [pre.cfg.stream(n) for n in ("video", "action")]

    ds = LeRobotDataset(tiny_dataset)
    policy = load_policy(ckpt, chunk=1)  # replans every 4 calls
    policy.reset(ds.episode_task(0))
    for t in range(5):
        assert np.isfinite(policy.infer(_episode_obs(ds, 0, t))["actions"]).all()
    state = torch.tensor(_episode_obs(ds, 0, 4)["observation.state"])
    torch.testing.assert_close(policy._episode["cache"].last_state[0], policy.state_norm(state).float())


def test_adapt_with_robot_history_drop_and_the_policy_either_way(wam_ckpt, tiny_dataset, tmp_path):
    """--robot-history-drop: the adapted model keeps its robot history and the rate; the policy's robot_history
    setting builds its cache with the executed actions (default) or without them, and refuses what cannot apply.
    --future-frames-given is kept in the adapted model's config."""
    from repwam.data.lerobot import LeRobotDataset
    from repwam.policy import load_policy

    with pytest.raises(RepwamError, match="--robot-history-drop .* needs --stage adapt or joint"):
        WAMTrainConfig(robot_history_drop=0.5)
    with pytest.raises(RepwamError, match="--robot-history-drop"):
        WAMTrainConfig(stage="adapt", robot_history=False, robot_history_drop=0.5)
    with pytest.raises(RepwamError, match="--future-frames-given .* needs --stage adapt or joint"):
        WAMTrainConfig(future_frames_given=0.5)
    cfg = WAMTrainConfig(stage="adapt", init=str(wam_ckpt), clip_frames=4, attn_window=3, val_fraction=0.34,
                         robot_history_drop=0.5, future_frames_given=0.5,
                         optim=OptimConfig(steps=2, batch_size=4, optimizer="muon", lr=1e-3, warmup=1, save_every=2,
                                           val_items=8))
    ckpt = train_wam(cfg, [tiny_dataset], tmp_path / "run", progress=False)
    adapted = WorldActionModel.from_pretrained(ckpt).cfg
    assert adapted.robot_history_drop == 0.5 and adapted.future_frames_given == 0.5
    ds = LeRobotDataset(tiny_dataset)
    robot_keys = {}
    for history in (None, False):
        policy = load_policy(ckpt, chunk=1, robot_history=history)
        policy.reset(ds.episode_task(0))
        for t in range(6):  # one replan: the first chunk's executed actions are appended
            assert np.isfinite(policy.infer(_episode_obs(ds, 0, t))["actions"]).all()
        cache = policy._episode["cache"]
        robot_keys[history] = int(cache.meta.expert.sum())  # state tokens (1 per frame) and robot-action tokens
    assert cache.next_frame == 2 and robot_keys == {None: 3, False: 2}  # the one executed chunk: in, or left out
    with pytest.raises(RepwamError, match="robot_history must be true or false"):
        load_policy(ckpt, robot_history="no")


def test_adapt_without_the_forecast_is_a_policy_on_the_latents(wam_ckpt, tiny_dataset, tmp_path):
    """--video-drop 1 (the no_forecast row): no training batch holds noisy future frames, so there is no video loss;
    validation leaves them out too; the policy acts actions-only and refuses to imagine a future it never learned."""
    from repwam.data.lerobot import LeRobotDataset
    from repwam.policy import load_policy
    from repwam.train.wam import WAMStage

    with pytest.raises(RepwamError, match="--video-drop .* needs --stage adapt or joint"):
        WAMTrainConfig(video_drop=1.0)
    with pytest.raises(RepwamError, match="video_drop must lie in"):
        WAMTrainConfig(stage="adapt", video_drop=1.5)
    with pytest.raises(RepwamError, match="--future-frames-given cannot"):
        WAMTrainConfig(stage="adapt", video_drop=1.0, future_frames_given=0.5)
    cfg = WAMTrainConfig(stage="adapt", init=str(wam_ckpt), clip_frames=4, attn_window=3, val_fraction=0.34,
                         video_drop=1.0, optim=OptimConfig(steps=2, batch_size=4, optimizer="muon", lr=1e-3,
                                                           warmup=1, save_every=2, val_items=8))
    stage = WAMStage(cfg, [tiny_dataset], progress=False)
    assert stage.model.cfg.video_drop == 1.0
    batch = stage.collate_fn([stage.train_set[i] for i in range(4)])
    for _ in range(8):  # the drop is drawn per batch: with 1.0 every draw leaves the video out
        out = stage.model.train().loss(batch)
        assert float(out["video_dropped"]) == 1.0 and float(out["video"]) == 0.0 and float(out["robot"]) > 0
    assert stage.validate(stage.model.eval())["video"] == 0.0
    ckpt = train_wam(cfg, [tiny_dataset], tmp_path / "run", progress=False)
    assert WorldActionModel.from_pretrained(ckpt).cfg.video_drop == 1.0
    ds = LeRobotDataset(tiny_dataset)
    policy = load_policy(ckpt, chunk=1)
    policy.reset(ds.episode_task(0))
    assert policy.infer(_episode_obs(ds, 0, 0))["actions"].shape[1] == 4
    with pytest.raises(RepwamError, match="never learned to forecast"):
        load_policy(ckpt, actions_only=False)


@pytest.mark.parametrize("flag, field, term", [("video_weight", "video_loss_weight", "video"),
                                                ("robot_weight", "robot_loss_weight", "robot")])
def test_adapt_weighs_a_loss_term_as_asked(wam_ckpt, tiny_dataset, flag, field, term):
    """--video-weight / --robot-weight set the forecast's / the actions' weight in the adapted model's loss (the
    pretrained model's otherwise), and the loss weighs that term by it; a weight with nothing to weigh, or out of
    range, is refused."""
    from repwam.train.wam import WAMStage

    with pytest.raises(RepwamError, match="video_weight must be >= 0"):
        WAMTrainConfig(stage="adapt", video_weight=-1.0)
    with pytest.raises(RepwamError, match="nothing to weigh"):
        WAMTrainConfig(stage="adapt", video_drop=1.0, video_weight=2.0)
    with pytest.raises(RepwamError, match="robot_weight=0.0"):
        WAMTrainConfig(stage="adapt", robot_weight=0.0)
    with pytest.raises(RepwamError, match="set at --stage adapt or joint"):
        WAMTrainConfig(robot_weight=2.0)

    def stage(**kw):
        return WAMStage(WAMTrainConfig(stage="adapt", init=str(wam_ckpt), clip_frames=4, attn_window=3,
                                       val_fraction=0.34, video_drop=0.0, **kw,
                                       optim=OptimConfig(steps=2, batch_size=4, warmup=1, val_items=8)),
                        [tiny_dataset], progress=False)

    base, heavy = stage(), stage(**{flag: 4.0})
    w = getattr(WorldActionModel.from_pretrained(wam_ckpt).cfg, field)
    assert getattr(base.model.cfg, field) == w and getattr(heavy.model.cfg, field) == 4.0
    heavy.model.load_state_dict(base.model.state_dict())
    batch = base.collate_fn([base.train_set[i] for i in range(4)])
    losses = []
    for st in (base, heavy):
        torch.manual_seed(0)
        losses.append(st.model.train().loss(batch))
    b, h = losses
    assert float(b[term]) > 0 and torch.allclose(b[term], h[term])
    assert torch.allclose(h["loss"] - b["loss"], (4.0 - w) * b[term], atol=1e-5)


def test_adapt_without_ell_acts_robot_only(wam_ckpt, tiny_dataset, tmp_path, monkeypatch):
    """--ell-drop 1, the adaptation's default: it never denoises ℓ (the robot's actions take the latent actions'
    place), its validation leaves ℓ out too, and its policy acts robot-only by default, refuses to denoise ℓ and
    imagines the future without it; bad values are refused."""
    from repwam.data.lerobot import LeRobotDataset
    from repwam.policy import load_policy
    from repwam.train.wam import WAMStage

    with pytest.raises(RepwamError, match="ell_drop must lie in"):
        WAMTrainConfig(stage="adapt", ell_drop=1.5)
    with pytest.raises(RepwamError, match="with latent actions"):
        WAMTrainConfig(stage="joint", use_latent_actions=False, ell_drop=1.0)
    with pytest.raises(RepwamError, match="needs --stage adapt or joint"):
        WAMTrainConfig(ell_drop=1.0)
    with pytest.raises(RepwamError, match="with latent actions"):
        WAMTrainConfig(stage="adapt", use_latent_actions=False, ell_drop=0.5)
    # the default: 1.0 at adapt (recorded as such), the model's at joint, nothing to leave out without ℓ
    assert WAMTrainConfig(stage="adapt").ell_drop == 1.0 and WAMTrainConfig(stage="joint").ell_drop is None
    assert WAMTrainConfig(stage="adapt", use_latent_actions=False).ell_drop is None
    io = ["--data", str(tiny_dataset), "--out", str(tmp_path / "x")]
    assert train_args("wam", ["--recipe", "adapt", "--no-use-latent-actions", *io])[0].ell_drop is None
    assert train_args("wam", ["--recipe", "adapt", "--ell-drop", "0.25", *io])[0].ell_drop == 0.25
    # a run recorded before the default changed (ell_drop null at adapt: the model's 0.25) replays as it ran
    legacy = {**run_record(WAMTrainConfig(stage="adapt", ell_drop=0.25), "train wam", [tiny_dataset]),
              "ell_drop": None}
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    assert train_args("wam", ["--config", str(tmp_path / "legacy.json"), "--out", str(tmp_path / "x")])[0].ell_drop \
        == 0.25
    cfg = WAMTrainConfig(stage="adapt", init=str(wam_ckpt), clip_frames=4, attn_window=3, val_fraction=0.34,
                         optim=OptimConfig(steps=2, batch_size=4, warmup=1, save_every=2, val_items=8))
    st = WAMStage(cfg, [tiny_dataset], progress=False)
    assert st.model.cfg.ell_drop == 1.0
    batch = st.collate_fn([st.train_set[i] for i in range(4)])
    for _ in range(3):
        out = st.model.train().loss(batch)
        assert float(out["action"]) == 0 and float(out["ell_dropped"]) == 1 and float(out["robot"]) > 0
    seen = []
    real = WorldActionModel.loss
    monkeypatch.setattr(WorldActionModel, "loss", lambda self, b, **kw: seen.append(kw) or real(self, b, **kw))
    val = st.validate(st.model)
    assert val["action"] == 0 and val["robot"] > 0
    assert seen and all(kw.get("drop_ell") for kw in seen)
    monkeypatch.setattr(WorldActionModel, "loss", real)
    ckpt = train_wam(cfg, [tiny_dataset], tmp_path / "run", progress=False)
    ds = LeRobotDataset(tiny_dataset)
    policy = load_policy(ckpt, chunk=1)
    assert policy.robot_only
    policy.reset(ds.episode_task(0))
    assert np.isfinite(policy.infer(_episode_obs(ds, 0, 0))["actions"]).all()
    with pytest.raises(RepwamError, match="run it with robot_only=true"):
        load_policy(ckpt, robot_only=False)
    # it still imagines the future (the forecast was trained beside the actions, without ℓ): video, then actions
    policy = load_policy(ckpt, chunk=1, actions_only=False, imagine=True)
    policy.reset(ds.episode_task(0))
    out = policy.infer(_episode_obs(ds, 0, 0))
    assert np.isfinite(out["actions"]).all() and out["imagined"].dtype == np.uint8 and out["imagined"].ndim == 4
    # the no_forecast row under this default: neither the forecast nor ℓ beside the actions; the robot stream alone
    nf = dataclasses.replace(cfg, video_drop=1.0)
    assert nf.ell_drop == 1.0
    ckpt = train_wam(nf, [tiny_dataset], tmp_path / "nf", progress=False)
    policy = load_policy(ckpt, chunk=1)
    assert policy.robot_only and policy.actions_only
    policy.reset(ds.episode_task(0))
    assert np.isfinite(policy.infer(_episode_obs(ds, 0, 0))["actions"]).all()


def test_latent_policy_from_scratch_acts(tiny_tokenizer, tiny_lat, tiny_dataset, tmp_path):
    """The latent_policy row: one stage from scratch with no ℓ stream and no forecast, the robot stream alone
    denoised; its policy acts."""
    from repwam.data.lerobot import LeRobotDataset
    from repwam.policy import load_policy

    cfg = small(tiny_tokenizer, tiny_lat, steps=2, stage="joint", use_latent_actions=False, video_drop=1.0)
    ckpt = train_wam(cfg, [tiny_dataset], tmp_path / "run", progress=False)
    model = WorldActionModel.from_pretrained(ckpt)
    assert model.cfg.video_drop == 1.0 and not model.cfg.use_latent_actions and model.cfg.robot_action_dim == 4
    ds = LeRobotDataset(tiny_dataset)
    policy = load_policy(ckpt, chunk=1)
    policy.reset(ds.episode_task(0))
    assert np.isfinite(policy.infer(_episode_obs(ds, 0, 0))["actions"]).all()


def test_adapt_and_policy_told_the_simulator_state(wam_ckpt, tiny_dataset, tmp_path):
    """state_key=observation.environment_state (the repwam_goal reference): the state token reads the whole
    simulator observation in training (clips, stats floored) and in the policy, which then asks for that key and not
    the robot's state, and refuses a vector of the wrong size."""
    from repwam.data.lerobot import LeRobotDataset
    from repwam.policy import load_policy
    from repwam.serve import ENV_STATE_KEY, ProtocolError
    from repwam.train.wam import WAMStage

    with pytest.raises(RepwamError, match="state_key must be"):
        WAMTrainConfig(stage="adapt", state_key="observation.goal")
    with pytest.raises(RepwamError, match="state_key feeds the state token"):
        WAMTrainConfig(state_key=ENV_STATE_KEY)  # pretraining has no state token
    with pytest.raises(RepwamError, match="does not go with another state_key"):
        WAMTrainConfig(stage="adapt", state_key=ENV_STATE_KEY, aux_key=ENV_STATE_KEY)
    cfg = WAMTrainConfig(stage="adapt", init=str(wam_ckpt), clip_frames=4, attn_window=3, val_fraction=0.34,
                         state_key=ENV_STATE_KEY, optim=OptimConfig(steps=2, batch_size=4, optimizer="muon", lr=1e-3,
                                                                    warmup=1, save_every=2, val_items=8))
    stage = WAMStage(cfg, [tiny_dataset], progress=False)
    d, e, s = stage.train_set.index[3]
    ds = LeRobotDataset(tiny_dataset)
    env = np.asarray(ds.episode_data(e)[ENV_STATE_KEY], np.float32)
    rows = np.minimum(4 * np.arange(s, s + 4), len(env) - 1)  # each latent frame's last raw frame
    torch.testing.assert_close(torch.as_tensor(stage.train_set[3]["state"]),
                               torch.as_tensor(stage.train_set.state_norm(env[rows])))
    assert min(stage.train_set.state_norm.std) >= 1e-2
    ckpt = train_wam(cfg, [tiny_dataset], tmp_path / "run", progress=False)
    model = WorldActionModel.from_pretrained(ckpt)
    assert model.cfg.state_dim == 39 and model.checkpoint_meta["state_key"] == ENV_STATE_KEY

    policy = load_policy(ckpt, chunk=1)
    assert policy.metadata["privileged"] and policy.metadata["state_dim"] == 0
    policy.reset(ds.episode_task(0))
    env0 = np.asarray(ds.episode_data(0)[ENV_STATE_KEY], np.float32)
    obs = _episode_obs(ds, 0, 0)
    with pytest.raises(ProtocolError, match="observation.environment_state"):
        policy.infer(obs)  # the robot's state alone
    with pytest.raises(RepwamError, match=r"trained on \(39,\)"):
        policy.infer({**obs, ENV_STATE_KEY: env0[0, :10]})
    for t in range(5):
        assert np.isfinite(policy.infer({**_episode_obs(ds, 0, t), ENV_STATE_KEY: env0[t]})["actions"]).all()


def test_adapt_and_policy_on_estimated_state(wam_ckpt, tiny_dataset, tmp_path):
    """state_key=observation.estimated_state (the repwam_est row): in training the state token reads the robot's
    state followed by the estimator's cross-fitted estimate of the frame; the policy computes the estimate from the
    camera itself, asks only for the robot's state and is not privileged."""
    from repwam.data.lerobot import LeRobotDataset
    from repwam.policy import load_policy
    from repwam.policy.estimator import EstimatorConfig, StateEstimator
    from repwam.serve import EST_STATE_KEY
    from repwam.train.estimator import EstimatorTrainConfig, crossfit_estimates, fit_estimator
    from repwam.train.wam import WAMStage

    with pytest.raises(RepwamError, match="--estimator DIR goes with"):
        WAMTrainConfig(stage="adapt", state_key=EST_STATE_KEY)
    with pytest.raises(RepwamError, match="--estimator DIR goes with"):
        WAMTrainConfig(stage="adapt", estimator="somewhere")
    est_dir = tmp_path / "estimator"
    fit_estimator([tiny_dataset], est_dir, EstimatorTrainConfig(folds=3), progress=False)
    cfg = WAMTrainConfig(stage="adapt", init=str(wam_ckpt), clip_frames=4, attn_window=3, val_fraction=0.34,
                         state_key=EST_STATE_KEY, estimator=str(est_dir),
                         optim=OptimConfig(steps=2, batch_size=4, optimizer="muon", lr=1e-3, warmup=1, save_every=2,
                                           val_items=8))
    stage = WAMStage(cfg, [tiny_dataset], progress=False)
    d, e, s = stage.train_set.index[3]
    ds = LeRobotDataset(tiny_dataset)
    est = crossfit_estimates(est_dir, [tiny_dataset])[str(ds.root.resolve())]
    start = sum(ds.episode_length(i) for i in range(e))
    robot = np.asarray(ds.episode_data(e)["observation.state"], np.float32)
    rows = np.minimum(4 * np.arange(s, s + 4), len(robot) - 1)
    want = np.concatenate([robot[rows], est[start + rows]], 1)
    torch.testing.assert_close(torch.as_tensor(stage.train_set[3]["state"]),
                               torch.as_tensor(stage.train_set.state_norm(want)))
    ckpt = train_wam(cfg, [tiny_dataset], tmp_path / "run", progress=False)
    model = WorldActionModel.from_pretrained(ckpt)
    assert model.cfg.state_dim == 4 + 39 and model.checkpoint_meta["parents"]["estimator"]["path"] == str(est_dir.resolve())

    policy = load_policy(ckpt, chunk=1)
    assert not policy.metadata["privileged"] and policy.metadata["state_dim"] == 4
    policy.reset(ds.episode_task(0))
    calls = []
    estimate = policy.estimator.forward
    policy.estimator.forward = lambda *a: calls.append(1) or estimate(*a)
    returned = []
    for t in range(9):
        out = policy.infer(_episode_obs(ds, 0, t))
        assert np.isfinite(out["actions"]).all()
        if "estimated_state" in out:
            returned.append(t)
            assert out["estimated_state"].shape == (39,) and out["estimated_state"].dtype == np.float32
    assert len(calls) == 3 and returned == [0, 4, 8]  # the frames whose state the model reads; the harness scores them
    with pytest.raises(RepwamError, match=r"observation.state.* \(4,\)"):
        policy.infer({**_episode_obs(ds, 0, 5), "observation.state": robot[0, :2]})

    # the `estimator` setting: another estimator of the same state (refitted, say) in place of the trained-with one
    refit = tmp_path / "refit"
    fit_estimator([tiny_dataset], refit, EstimatorTrainConfig(folds=3, frame_stride=3), progress=False)
    swapped = load_policy(ckpt, chunk=1, estimator=str(refit))
    torch.testing.assert_close(swapped.estimator.weight, StateEstimator.from_pretrained(refit).weight)
    assert (swapped.estimator.weight - policy.estimator.weight).abs().max() > 0  # not the trained-with one
    swapped.reset(ds.episode_task(0))
    assert np.isfinite(swapped.infer(_episode_obs(ds, 0, 0))["actions"]).all()
    narrow = StateEstimator(EstimatorConfig(**{**policy.estimator.cfg.to_dict(), "target_dim": 3, "feature_dim": 0}))
    narrow.save_pretrained(tmp_path / "narrow")
    with pytest.raises(RepwamError, match="estimates 3 values"):
        load_policy(ckpt, estimator=str(tmp_path / "narrow"))
    other = StateEstimator(EstimatorConfig(**{**policy.estimator.cfg.to_dict(), "tasks": ["open the door"],
                                              "feature_dim": 0}))
    other.save_pretrained(tmp_path / "other_tasks")
    with pytest.raises(RepwamError, match="has no map for"):
        load_policy(ckpt, estimator=str(tmp_path / "other_tasks"))
    with pytest.raises(RepwamError, match="the estimator setting is for a WAM that reads"):
        load_policy(wam_ckpt, estimator=str(refit))

    # an estimator reading a view the WAM does not see: the policy asks for it and feeds both views to the estimator
    from repwam.policy.repwam import RepWAMPolicy

    cam, top = ds.camera_keys[0], "observation.images.topview"
    two = StateEstimator(EstimatorConfig(**{**policy.estimator.cfg.to_dict(), "cameras": [cam, top],
                                            "feature_dim": 0}))
    two.bias.normal_()
    wide = RepWAMPolicy(policy.model, policy.tokenizer, policy.lat, policy.text, estimator=two, chunk=1)
    assert wide.metadata["camera_keys"] == [cam, top] and wide.cameras == [cam]
    wide.reset(ds.episode_task(0))
    seen = []
    wide.estimator.forward = lambda images, task: seen.append(images.shape) or two.predict(
        two.features(images), task)
    obs = _episode_obs(ds, 0, 0)
    with pytest.raises(RepwamError, match="topview"):
        wide.infer(obs)
    wide.reset(ds.episode_task(0))
    assert np.isfinite(wide.infer({**obs, top: obs[cam][::-1].copy()})["actions"]).all()
    assert seen == [(1, 2, 3, 64, 64)]


def test_a_finer_latent_grid_runs_through_the_chain_at_the_same_video_tokens(tiny_dataset, tmp_path):
    """--patch-size 4 on the tokenizer (a 16x16 grid at 64 px) and on the WAM (4x4 latent patches): the LAT and the
    WAM train on its latents, and the WAM sees 16 video tokens per frame, as the default 8x8 grid with patch 2."""
    from repwam.train.lat import LATTrainConfig, train_lat
    from repwam.train.tokenizer import TokenizerTrainConfig, train_tokenizer

    with pytest.raises(RepwamError, match="patch_size is a setting of the ViT tokenizer"):
        TokenizerTrainConfig(arch="vae", patch_size=4)
    tok = train_tokenizer(TokenizerTrainConfig(
        teacher="none", align_weight=0.0, perceptual_weight=0.0, patch_size=4, num_frames=5, clip_lengths=(5,),
        attn_window=2, val_fraction=0.34, optim=OptimConfig(steps=1, batch_size=2, save_every=1, log_every=1,
                                                            image_every=1, warmup=1, val_items=2)),
        [tiny_dataset], tmp_path / "tok", progress=False)
    lat = train_lat(LATTrainConfig(tokenizer=str(tok), val_fraction=0.34, optim=OptimConfig(
        steps=1, batch_size=4, save_every=1, log_every=1, warmup=1, val_items=4)), [tiny_dataset], tmp_path / "lat",
        progress=False)
    ckpt = train_wam(small(tok, lat, steps=1, patch_size=4), [tiny_dataset], tmp_path / "wam", progress=False)
    cfg = WorldActionModel.from_pretrained(ckpt).cfg
    assert (cfg.latent_grid, cfg.patch_size, cfg.tokens_per_frame) == ((16, 16), 4, 256)
    assert cfg.patch_grid == (4, 4)  # 16 video tokens per frame
    with pytest.raises(RepwamError, match="adapt keeps --init's"):
        WAMTrainConfig(stage="adapt", init=str(ckpt), patch_size=4)
