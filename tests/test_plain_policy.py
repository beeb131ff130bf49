"""The plain-policy baseline: model shapes and size, learning a tiny batch, checkpoints through `load_policy`,
receding-horizon bookkeeping, bad inputs, the training stage on the tiny dataset, a real frame in closed loop."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch

from repwam.data.dataset import split_spec
from repwam.data.lerobot import LeRobotDataset
from repwam.data.transforms import Normalizer, image_to_model
from repwam.errors import RepwamError
from repwam.policy import load_policy
from repwam.policy.plain import PlainConfig, PlainPolicy, PlainPolicyModel, masked_mean
from repwam.train.trainer import OptimConfig

CAM = "observation.images.corner3"
MICRO = dict(width=64, heads=2, depth=2, obs_depth=1, conv_channels=(16, 32, 64))  # fast variants of "tiny"


class FakeText:
    """A stand-in text encoder: a fixed random embedding per instruction (5 tokens, the last one padding)."""

    dim = 384

    def __init__(self):
        self.calls = 0

    def encode(self, s: str):
        self.calls += 1
        g = torch.Generator().manual_seed(zlib.crc32(s.encode()))
        return torch.randn(5, self.dim, generator=g), torch.tensor([True] * 4 + [False])


def fake_batch(cfg: PlainConfig, B: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, cfg.horizon, dtype=torch.bool)
    mask[0, cfg.horizon // 2 :] = False  # an episode's end
    text_mask = torch.ones(B, 6, dtype=torch.bool)
    text_mask[1, 3:] = False
    return {
        "images": torch.rand(B, cfg.n_obs, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1,
        "state": torch.randn(B, cfg.n_obs, cfg.state_dim, generator=g),
        "text": torch.randn(B, 6, cfg.text_dim, generator=g),
        "text_mask": text_mask,
        "action": torch.randn(B, cfg.horizon, cfg.action_dim, generator=g),
        "action_mask": mask,
    }


def save_micro(tmp_path, **overrides):
    model = PlainPolicyModel(PlainConfig.preset("tiny", **{**MICRO, **overrides}))
    meta = {"camera": CAM, "state_stats": {"mean": [0.0, 0.6, 0.2, 0.5], "std": [0.1, 0.1, 0.1, 0.3]},
            "action_stats": {"mean": [0.0, 0.1, 0.0, 0.0], "std": [0.5, 0.5, 0.5, 1.0]},
            "text_encoder": {"name": "all-minilm-l6-v2", "max_length": 256, "dim": 384}}
    return model.save_pretrained(tmp_path / "plain", meta)


def overfit(model, batch, steps: int) -> None:
    """AdamW (lr 2e-3, no weight decay) on one batch for `steps` steps; leaves the model in eval mode."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    for _ in range(steps):
        loss = model.loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def observation(rng, size=64, state=None):
    return {CAM: rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "observation.state": np.asarray(state if state is not None else [0.0, 0.6, 0.2, 0.5], np.float32)}


# ---------------------------------------------------------------- the model
@pytest.mark.parametrize("preset", ["tiny", "tiny128"])
@pytest.mark.parametrize("encoder", ["resnet", "vit"])
def test_shapes_and_size(encoder, preset):
    cfg = PlainConfig.preset(preset, encoder=encoder)
    assert cfg.tokens_per_frame == 64  # 8x8 at 64 or 128 pixels
    model = PlainPolicyModel(cfg).eval()
    assert 1.5e6 < model.num_params() < 4e6, "tiny is the size of the tiny tokenizer + WAM"
    b = fake_batch(cfg, B=2)
    memory, mask = model.encode(b["images"], b["state"], b["text"], b["text_mask"])
    n_tokens = cfg.n_obs * cfg.tokens_per_frame + cfg.n_obs + 6
    assert memory.shape == (2, n_tokens, cfg.width) and mask.shape == (2, n_tokens) and not mask[1, -3:].any()
    assert model.velocity(b["action"], torch.rand(2), memory, mask).shape == (2, cfg.horizon, cfg.action_dim)
    assert model.sample_actions(b["images"], b["state"], b["text"], b["text_mask"], steps=2).shape == (2, 16, 4)
    with pytest.raises(RepwamError, match=rf"images \(B, 2, 1, 3, {cfg.image_size}, {cfg.image_size}\) \(n_obs frames"):
        model.encode(b["images"][:, :1], b["state"], b["text"], b["text_mask"])


def test_two_views_share_the_encoder_and_are_told_apart():
    """num_views = 2: each view through the same image encoder, twice the image tokens, a view embedding that makes
    swapping the views change the memory; a single-view batch is refused."""
    cfg = PlainConfig.preset("tiny", **{**MICRO, "num_views": 2})
    model = PlainPolicyModel(cfg).eval()
    b = fake_batch(cfg, B=2)
    views = torch.stack([b["images"], b["images"].flip(-1)], dim=2)  # (B, n_obs, 2, 3, S, S)
    memory, _ = model.encode(views, b["state"], b["text"], b["text_mask"])
    assert memory.shape[1] == 2 * cfg.n_obs * cfg.tokens_per_frame + cfg.n_obs + 6
    swapped, _ = model.encode(views.flip(2), b["state"], b["text"], b["text_mask"])
    assert not torch.allclose(memory, swapped)
    assert model.sample_actions(views, b["state"], b["text"], b["text_mask"], steps=2).shape == (2, cfg.horizon, 4)
    with pytest.raises(RepwamError, match="n_obs frames of 2 camera"):
        model.encode(b["images"], b["state"], b["text"], b["text_mask"])


def test_adaln_zero_start_and_padded_text_ignored():
    cfg = PlainConfig.preset("tiny", **MICRO)
    model = PlainPolicyModel(cfg).eval()
    b = fake_batch(cfg)
    memory, mask = model.encode(b["images"], b["state"], b["text"], b["text_mask"])
    assert model.velocity(b["action"], torch.rand(4), memory, mask).abs().max() == 0  # zero head at init
    changed = {k: v.clone() for k, v in b.items()}
    changed["text"][1, 3:] += 5.0  # padding of sample 1
    m2, _ = model.encode(changed["images"], changed["state"], changed["text"], changed["text_mask"])
    torch.testing.assert_close(m2[:, : -6], memory[:, : -6])


def test_overfits_a_tiny_batch_and_samples_it():
    torch.manual_seed(0)
    cfg = PlainConfig.preset("tiny", **MICRO, image_size=32)
    model = PlainPolicyModel(cfg)
    b = fake_batch(cfg)
    g = torch.Generator().manual_seed(1)
    probe = dict(noise=torch.randn(4, 16, 4, generator=g), alpha=torch.rand(4, generator=g))
    with torch.no_grad():
        before = float(model.loss(b, **probe)["loss"])
    overfit(model, b, 300)
    with torch.no_grad():
        after = float(model.loss(b, **probe)["loss"])
    assert after < 0.3 * before, (before, after)
    sampled = model.sample_actions(b["images"], b["state"], b["text"], b["text_mask"],
                                   noise=torch.randn(4, 16, 4, generator=g))
    valid = b["action_mask"]
    err = float(((sampled - b["action"])[valid] ** 2).mean())
    assert err < 0.3 * float((b["action"][valid] ** 2).mean()), err  # Euler from noise lands on the data


def test_padded_actions_are_left_out_of_the_loss():
    cfg = PlainConfig.preset("tiny", **MICRO)
    model = PlainPolicyModel(cfg)
    torch.nn.init.normal_(model.head.weight)  # a non-zero output
    b = fake_batch(cfg)
    probe = dict(noise=torch.randn(4, 16, 4), alpha=torch.zeros(4))  # alpha = 0: the input is pure noise
    other = {**b, "action": b["action"].clone()}
    other["action"][0, cfg.horizon // 2 :] = 100.0  # sample 0's padding: only the target changes
    with torch.no_grad():
        assert float(model.loss(b, **probe)["loss"]) == float(model.loss(other, **probe)["loss"])
        other["action"][0, 0] = 100.0  # a real step counts
        assert float(model.loss(other, **probe)["loss"]) > float(model.loss(b, **probe)["loss"]) + 1


# ---------------------------------------------------------------- checkpoints and the policy
def test_checkpoint_round_trip_through_load_policy(tmp_path):
    path = save_micro(tmp_path)
    assert json.loads((path / "config.json").read_text())["type"] == "repwam.plain"
    policy = load_policy(path, execute=4, steps=3, seed=7)  # the real frozen text encoder, by name
    assert isinstance(policy, PlainPolicy) and policy.execute == 4 and policy.steps == 3
    saved = PlainPolicyModel(PlainConfig.from_dict(json.loads((path / "config.json").read_text())["plain"]))
    from repwam.checkpoint import load_into

    load_into(saved, path)
    for (k, a), (_, b) in zip(saved.state_dict().items(), policy.model.state_dict().items()):
        assert torch.equal(a, b), k
    meta = policy.metadata
    assert meta["camera_keys"] == [CAM] and meta["image_size"] == 64 and meta["state_dim"] == 4
    assert meta["action_dim"] == 4 and meta["action_horizon"] == 4 and meta["instruction_key"] == "prompt"
    rng = np.random.default_rng(0)
    obs = observation(rng)
    outs = []
    for _ in range(2):  # the same seed and observations give the same actions, episode after episode
        policy.reset("open the drawer")
        outs.append(policy.infer(obs)["actions"])
    assert outs[0].shape == (4, 4) and outs[0].dtype == np.float32
    np.testing.assert_array_equal(outs[0], outs[1])
    other = load_policy(path, execute=4, steps=3, seed=8)
    other.reset("open the drawer")
    assert not np.array_equal(other.infer(obs)["actions"], outs[0])


def test_receding_horizon_replans_every_execute_calls(tmp_path):
    text = FakeText()
    policy = PlainPolicy.from_pretrained(save_micro(tmp_path), execute=3, steps=2, text_encoder=text)
    calls = []
    sample = policy.model.sample_actions

    def counting(images, *args, **kw):
        calls.append(images.clone())
        return sample(images, *args, **kw)

    policy.model.sample_actions = counting
    rng = np.random.default_rng(0)
    policy.reset("open the drawer")
    frames, lengths, plans, prev = [], [], [], None
    for t in range(10):
        obs = observation(rng)
        frames.append(obs[CAM])
        actions = policy.infer(obs)["actions"]
        lengths.append(len(actions))
        plans.append(policy.plans)
        if prev is not None and len(prev) > 1:
            np.testing.assert_array_equal(actions, prev[1:])  # between plans the queue is popped, not replanned
        prev = actions
    assert lengths == [3, 2, 1] * 3 + [3] and plans == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4] and len(calls) == 4
    from repwam.data.transforms import image_to_model

    torch.testing.assert_close(calls[0][0, 0], calls[0][0, 1])  # the first frame stands in for the one before it
    torch.testing.assert_close(calls[1][0, 0, 0], image_to_model(frames[2], 64))  # then the last n_obs frames
    torch.testing.assert_close(calls[1][0, 1, 0], image_to_model(frames[3], 64))  # (of the one view)
    policy.reset("open the drawer")  # a new episode plans at once, and the instruction is encoded once
    assert len(policy.infer(observation(rng))["actions"]) == 3 and len(calls) == 5 and text.calls == 1
    policy.reset("press the button")
    assert text.calls == 2


def test_bad_inputs_name_what_was_expected(tmp_path):
    policy = PlainPolicy.from_pretrained(save_micro(tmp_path), text_encoder=FakeText())
    rng = np.random.default_rng(0)
    with pytest.raises(RepwamError, match="reset"):
        policy.infer(observation(rng))
    with pytest.raises(RepwamError, match="instruction"):
        policy.reset("")
    policy.reset("open the drawer")
    obs = observation(rng)
    with pytest.raises(RepwamError, match=f"missing .{CAM}"):
        policy.infer({"observation.state": obs["observation.state"]})
    with pytest.raises(RepwamError, match="missing .observation.state"):
        policy.infer({CAM: obs[CAM]})
    with pytest.raises(RepwamError, match=r"uint8 array \(H, W, 3\)"):
        policy.infer({**obs, CAM: obs[CAM].astype(np.float32)})
    with pytest.raises(RepwamError, match=r"uint8 array \(H, W, 3\)"):
        policy.infer({**obs, CAM: obs[CAM][..., :1]})
    with pytest.raises(RepwamError, match=r"observation.state. must be a float array \(4,\)"):
        policy.infer({**obs, "observation.state": np.zeros(3, np.float32)})
    with pytest.raises(RepwamError, match="non-finite"):
        policy.infer({**obs, "observation.state": np.array([0, np.nan, 0, 0], np.float32)})
    with pytest.raises(RepwamError, match="execute"):
        PlainPolicy.from_pretrained(save_micro(tmp_path / "b"), execute=17, text_encoder=FakeText())
    big = policy.infer(observation(rng, size=128))["actions"]  # another camera size is area-resized
    assert big.shape == (8, 4) and np.isfinite(big).all()


# ---------------------------------------------------------------- training on the tiny dataset
@pytest.fixture(scope="module")
def plain_ckpt(tiny_dataset, tmp_path_factory):
    from repwam.train.plain import PlainTrainConfig, train_plain

    cfg = PlainTrainConfig(val_fraction=0.34, optim=OptimConfig(steps=3, batch_size=8, warmup=1, save_every=3,
                                                                log_every=1, val_items=16, ema=0.9))
    return train_plain(cfg, [tiny_dataset], tmp_path_factory.mktemp("plain") / "run", progress=False)


def test_samples_pad_the_past_and_mask_the_future(tiny_dataset):
    from repwam.data.dataset import ClipDataset
    from repwam.train.plain import PlainSamples

    clips = ClipDataset(tiny_dataset, num_frames=1, split="all", progress=False)
    ident = Normalizer([0.0] * 4, [1.0] * 4)
    samples = PlainSamples(clips, n_obs=2, horizon=16, state_norm=ident, action_norm=ident,
                           text_index={t: 0 for t in {e.task for e in clips.episodes}})
    ep = clips.episodes[0]
    first, late = samples[0], samples[ep.length - 3]  # clip index = (episode 0, step t) for t < its length
    assert torch.equal(first["frames"][0], first["frames"][1])
    assert torch.equal(late["frames"][1], torch.from_numpy(clips.frames[ep.start + ep.length - 3]).permute(2, 0, 1))
    assert torch.equal(late["frames"][0], torch.from_numpy(clips.frames[ep.start + ep.length - 4]).permute(2, 0, 1))
    assert late["action_mask"].tolist() == [True] * 3 + [False] * 13
    end = ep.start + ep.length
    np.testing.assert_array_equal(late["action"][:3].numpy(), clips.actions[end - 3 : end])
    assert (late["action"][3:] == 0).all()


def test_training_writes_a_checkpoint_with_stats_and_no_text_encoder(plain_ckpt, tiny_dataset):
    files = sorted(p.name for p in plain_ckpt.iterdir())
    assert files == ["config.json", "model.safetensors"], "the frozen text encoder is referenced, never copied"
    model = PlainPolicyModel.from_pretrained(plain_ckpt)
    meta = model.checkpoint_meta
    assert (plain_ckpt / "model.safetensors").stat().st_size < 4 * model.num_params() + 100_000
    ds = LeRobotDataset(tiny_dataset)
    np.testing.assert_allclose(meta["action_stats"]["mean"], ds.stats["action"]["mean"], rtol=1e-6)
    np.testing.assert_allclose(meta["state_stats"]["std"], ds.stats["observation.state"]["std"], rtol=1e-6)
    assert meta["text_encoder"]["name"] == "all-minilm-l6-v2" and model.cfg.text_dim == 384
    assert meta["split"] == split_spec([ds], 0.34, 0), "the stable split the other stages use"
    assert meta["camera"] == CAM and meta["step"] == 3 and len(meta["instructions"]) == 3
    run = plain_ckpt.parent.parent
    assert json.loads((run / "run.json").read_text())["command"] == "train plain"


def test_trained_policy_acts_on_a_real_frame(plain_ckpt, tiny_dataset):
    from repwam.data.dataset import ClipDataset

    clips = ClipDataset(tiny_dataset, num_frames=1, split="all", progress=False)
    ep = clips.episodes[0]
    policy = load_policy(plain_ckpt)
    policy.reset(ep.task)
    for t in range(2):
        obs = {CAM: clips.frames[ep.start + t], "observation.state": clips.states[ep.start + t]}
        actions = policy.infer(obs)["actions"]
        assert actions.shape == (8 - t, 4) and actions.dtype == np.float32
        assert np.isfinite(actions).all() and np.abs(actions).max() < 5  # robot units: the expert's are in [-1, 1]


def test_privileged_reference_reads_the_simulator_state(tiny_dataset, tmp_path):
    """`state_key=observation.environment_state`: the state token is the whole simulator observation (goal
    included); the policy then asks for that key, not the robot's state, and refuses a vector of the wrong size."""
    from repwam.data.dataset import ClipDataset
    from repwam.serve import ENV_STATE_KEY, ProtocolError
    from repwam.train.plain import ENV_STATE_MIN_STD, PlainTrainConfig, train_plain

    with pytest.raises(RepwamError, match="state_key must be one of"):
        PlainTrainConfig(state_key="observation.goal")
    cfg = PlainTrainConfig(state_key=ENV_STATE_KEY, val_fraction=0.34,
                           optim=OptimConfig(steps=2, batch_size=8, warmup=1, save_every=2, val_items=8))
    ckpt = train_plain(cfg, [tiny_dataset], tmp_path / "run", progress=False)
    model = PlainPolicyModel.from_pretrained(ckpt)
    meta = model.checkpoint_meta
    assert model.cfg.state_dim == 39 and meta["state_key"] == ENV_STATE_KEY
    assert min(meta["state_stats"]["std"]) >= ENV_STATE_MIN_STD
    policy = load_policy(ckpt)
    assert policy.metadata["privileged"] and policy.metadata["state_dim"] == 0
    clips = ClipDataset(tiny_dataset, num_frames=1, split="all", progress=False)
    ep = clips.episodes[0]
    policy.reset(ep.task)
    frame, env_state = clips.frames[ep.start], clips.env_states[ep.start]
    assert policy.infer({CAM: frame, ENV_STATE_KEY: env_state})["actions"].shape == (8, 4)
    with pytest.raises(ProtocolError, match="observation.environment_state"):
        policy.infer({CAM: frame, "observation.state": clips.states[ep.start]})
    with pytest.raises(RepwamError, match=r"trained on \(39,\)"):
        policy.infer({CAM: frame, ENV_STATE_KEY: env_state[:10]})


def test_estimated_state_reads_the_robot_state_and_the_estimators_reading(tiny_dataset, tmp_path):
    """`state_key=observation.estimated_state` (the plain baseline beside repwam_est): in training each step's state
    is the robot's followed by the estimator's cross-fitted estimate of that frame; the policy runs the estimator on
    the camera at every step, asks only for the camera and the robot's state, and returns its estimate."""
    from repwam.data.dataset import ClipDataset
    from repwam.serve import EST_STATE_KEY
    from repwam.train.estimator import EstimatorTrainConfig, crossfit_estimates, fit_estimator
    from repwam.train.plain import PlainSamples, PlainTrainConfig, train_plain

    with pytest.raises(RepwamError, match="--estimator DIR goes with"):
        PlainTrainConfig(state_key=EST_STATE_KEY)
    est_dir = tmp_path / "estimator"
    fit_estimator([tiny_dataset], est_dir, EstimatorTrainConfig(folds=3), progress=False)
    est = crossfit_estimates(est_dir, [tiny_dataset])
    clips = ClipDataset(tiny_dataset, num_frames=1, split="all", progress=False)
    ident = Normalizer([0.0] * 43, [1.0] * 43)
    samples = PlainSamples(clips, n_obs=2, horizon=4, state_norm=ident, action_norm=Normalizer([0.0] * 4, [1.0] * 4),
                           text_index={t: 0 for t in {e.task for e in clips.episodes}}, state_key=EST_STATE_KEY,
                           estimates=est)
    ep = clips.episodes[2]
    row = est[str(LeRobotDataset(tiny_dataset).root.resolve())][ep.global_start + 5]
    item = samples[sum(e.length for e in clips.episodes[:2]) + 5]  # episode 2, step 5
    np.testing.assert_allclose(item["state"][1].numpy(), np.concatenate([clips.states[ep.start + 5], row]))

    cfg = PlainTrainConfig(state_key=EST_STATE_KEY, estimator=str(est_dir), val_fraction=0.34,
                           optim=OptimConfig(steps=2, batch_size=8, warmup=1, save_every=2, val_items=8))
    ckpt = train_plain(cfg, [tiny_dataset], tmp_path / "run", progress=False)
    model = PlainPolicyModel.from_pretrained(ckpt)
    assert model.cfg.state_dim == 4 + 39
    assert model.checkpoint_meta["parents"]["estimator"]["path"] == str(est_dir.resolve())
    policy = load_policy(ckpt)
    assert not policy.metadata["privileged"] and policy.metadata["state_dim"] == 4
    assert policy.metadata["camera_keys"] == [CAM]
    policy.reset(ep.task)
    frame = clips.frames[ep.start + 5]
    out = policy.infer({CAM: frame, "observation.state": clips.states[ep.start + 5]})
    assert out["actions"].shape == (8, 4) and out["estimated_state"].shape == (39,)
    with torch.no_grad():
        want = policy.estimator(image_to_model(frame, 64)[None], ep.task)[0].numpy()
    np.testing.assert_allclose(out["estimated_state"], want, atol=1e-5)
    with pytest.raises(RepwamError, match=r"observation.state.* \(4,\)"):
        policy.infer({CAM: frame, "observation.state": clips.states[ep.start][:2]})
    # the `estimator` setting: another estimator of the same state in its place (checked as RepWAM's is)
    fit_estimator([tiny_dataset], tmp_path / "refit", EstimatorTrainConfig(folds=3, frame_stride=3), progress=False)
    swapped = load_policy(ckpt, estimator=str(tmp_path / "refit"))
    assert (swapped.estimator.weight - policy.estimator.weight).abs().max() > 0
    swapped.reset(ep.task)
    assert swapped.infer({CAM: frame, "observation.state": clips.states[ep.start + 5]})["actions"].shape == (8, 4)
    plain = train_plain(PlainTrainConfig(val_fraction=0.34, optim=OptimConfig(steps=1, batch_size=8, warmup=1,
                                                                               save_every=1, val_items=8)),
                        [tiny_dataset], tmp_path / "plain", progress=False)
    with pytest.raises(RepwamError, match="the estimator setting is for a policy that reads"):
        load_policy(plain, estimator=str(est_dir))


def test_aux_read_out_learns_its_target_and_never_acts():
    """aux_dim > 0: the read-out's MSE joins the flow loss and goes down on a tiny batch (the memory carries the
    target), and the head is training-only: other aux-head weights sample exactly the same actions."""
    torch.manual_seed(0)
    cfg = PlainConfig.preset("tiny", **MICRO, image_size=32, aux_dim=7)
    model = PlainPolicyModel(cfg)
    b = {**fake_batch(cfg), "aux": torch.randn(4, 7, generator=torch.Generator().manual_seed(3))}
    out = model.loss(b, aux_weight=0.5)
    assert set(out) == {"loss", "flow", "aux"}
    assert float(out["loss"].detach()) == pytest.approx(float(out["flow"] + 0.5 * out["aux"]), rel=1e-5)
    assert set(PlainPolicyModel(PlainConfig.preset("tiny", **MICRO, image_size=32)).loss(b)) == {"loss"}
    first = float(out["aux"])
    overfit(model, b, 150)
    with torch.no_grad():
        assert float(model.loss(b)["aux"]) < 0.2 * first
    noise = torch.randn(4, 16, 4, generator=torch.Generator().manual_seed(5))
    args = (b["images"], b["state"], b["text"], b["text_mask"])
    before = model.sample_actions(*args, noise=noise)
    with torch.no_grad():
        for prm in model.aux_head.parameters():
            prm.normal_()
    torch.testing.assert_close(model.sample_actions(*args, noise=noise), before, rtol=0, atol=0)


def test_aux_feedback_gives_the_decoder_the_estimate_and_no_gradient_to_the_read_out():
    """aux_feedback: the read-out, detached, is one more memory token (so sampling uses it); the flow loss alone
    sends no gradient into the read-out, which learns from its own MSE only."""
    with pytest.raises(RepwamError, match="needs aux_dim"):
        PlainConfig.preset("tiny", aux_feedback=True)
    torch.manual_seed(0)
    cfg = PlainConfig.preset("tiny", **MICRO, image_size=32, aux_dim=7, aux_feedback=True)
    model = PlainPolicyModel(cfg)
    with torch.no_grad():  # the zero-initialised (adaLN-Zero) layers made live: the memory reaches the loss
        for prm in model.parameters():
            if not prm.any():
                prm.normal_(std=0.05)
    b = {**fake_batch(cfg), "aux": torch.randn(4, 7, generator=torch.Generator().manual_seed(3))}
    memory, mask = model.encode(b["images"], b["state"], b["text"], b["text_mask"])
    plain = PlainPolicyModel(PlainConfig.preset("tiny", **MICRO, image_size=32, aux_dim=7))
    assert memory.shape[1] == plain.encode(b["images"], b["state"], b["text"], b["text_mask"])[0].shape[1] + 1
    estimate = model.aux_head(masked_mean(memory[:, :-1], mask[:, :-1]))  # the read-out of the rest
    torch.testing.assert_close(memory[:, -1], model.aux_embed(estimate))
    model.loss(b, aux_weight=0.0)["loss"].backward()
    assert all(p.grad is None or not p.grad.any() for p in model.aux_head.parameters())
    assert model.aux_embed.weight.grad.abs().sum() > 0


def test_aux_target_is_the_simulator_state_at_the_current_step(tiny_dataset, tmp_path):
    """`aux_key=observation.environment_state`: each sample's target is the normalised simulator observation of
    its own step; the checkpoint records the key, the policy stays unprivileged (camera + robot state)."""
    from repwam.data.dataset import ClipDataset
    from repwam.serve import ENV_STATE_KEY
    from repwam.train.plain import PlainStage, PlainTrainConfig, train_plain

    with pytest.raises(RepwamError, match="aux_key must be"):
        PlainTrainConfig(aux_key="observation.state")
    with pytest.raises(RepwamError, match="pick one"):
        PlainTrainConfig(aux_key=ENV_STATE_KEY, state_key=ENV_STATE_KEY)
    cfg = PlainTrainConfig(aux_key=ENV_STATE_KEY, val_fraction=0.34,
                           optim=OptimConfig(steps=2, batch_size=8, warmup=1, save_every=2, val_items=8))
    stage = PlainStage(cfg, [tiny_dataset], progress=False)
    clips = ClipDataset(tiny_dataset, num_frames=1, split="train", val_fraction=0.34, progress=False)
    i = len(stage.train_set) // 2
    slot, t = clips.index[i]
    want = stage.aux_norm(clips.env_states[clips.episodes[slot].start + t][None])[0]
    torch.testing.assert_close(stage.train_set[i]["aux"], want.float())
    assert stage.model.cfg.aux_dim == 39 and stage.model.cfg.state_dim == 4
    ckpt = train_plain(cfg, [tiny_dataset], tmp_path / "run", progress=False)
    assert PlainPolicyModel.from_pretrained(ckpt).checkpoint_meta["aux_key"] == ENV_STATE_KEY
    policy = load_policy(ckpt)
    assert not policy.metadata["privileged"] and policy.metadata["state_dim"] == 4
    ep = clips.episodes[0]
    policy.reset(ep.task)
    obs = {CAM: clips.frames[ep.start], "observation.state": clips.states[ep.start]}
    assert policy.infer(obs)["actions"].shape == (8, 4)


def test_cli_help_lists_the_stage_options(capsys):
    from repwam.cli import _train

    with pytest.raises(SystemExit) as e:
        _train("plain", ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--aug-shift" in out and "--optim.lr" in out and "--encoder" in out


def test_random_shift_translates_every_frame_of_a_sample_alike_and_is_off_by_default():
    from repwam.train.plain import PlainTrainConfig, random_shift

    assert PlainTrainConfig().aug_shift == 0  # off: from one fixed camera the goal's pixel position is the goal
    images = torch.randn(3, 2, 1, 3, 16, 16)  # (B, n_obs, V, C, S, S)
    assert torch.equal(random_shift(images, 0), images)
    out = random_shift(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    for b in range(3):
        # the one (dx, dy) under which the sample's interior matches: the same for both frames and every channel
        found = [(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)
                 if torch.allclose(out[b, ..., 2:-2, 2:-2],
                                   images[b, ..., 2 + dy: 14 + dy, 2 + dx: 14 + dx])]
        assert len(found) == 1
