"""Several cameras through every stage on tiny sizes: a 2-camera dataset -> one tokenizer for both views (same
weights) -> latents of both views stacked as one taller grid -> LAT -> WAM pretrain + adapt -> a policy that takes
both cameras (its streamed latents equal a whole-episode encode of each view) -> a closed-loop episode; and the
plain baseline on both views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repwam.errors import RepwamError
from repwam.train.trainer import OptimConfig

CAMS = ("corner3", "topview")
KEYS = [f"observation.images.{c}" for c in CAMS]


def opt(steps, **kw):
    return OptimConfig(steps=steps, batch_size=4, save_every=steps, log_every=1, warmup=1, val_items=8, **kw)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    from repwam.data.generate import GenerateConfig, generate
    from repwam.train.lat import LATTrainConfig, train_lat
    from repwam.train.tokenizer import TokenizerTrainConfig, train_tokenizer
    from repwam.train.wam import WAMTrainConfig, train_wam

    root = tmp_path_factory.mktemp("multiview")
    data = root / "data"
    generate(data, GenerateConfig(tasks=["reach-v3"], episodes_per_task=3, workers=1, cameras=CAMS))
    tok = train_tokenizer(TokenizerTrainConfig(num_frames=9, clip_lengths=(5, 9), attn_window=2, val_fraction=0.34,
                                               optim=opt(2)), [data], root / "tok", progress=False)
    lat = train_lat(LATTrainConfig(tokenizer=str(tok), val_fraction=0.34, optim=opt(3, lr=3e-3)), [data], root / "lat",
                    progress=False)
    wam = dict(tokenizer=str(tok), lat=str(lat), clip_frames=4, attn_window=3, val_fraction=0.34)
    pre = train_wam(WAMTrainConfig(**wam, optim=opt(2, optimizer="muon", lr=1e-3)), [data], root / "wam",
                    progress=False)
    adapted = train_wam(WAMTrainConfig(stage="adapt", init=str(pre), clip_frames=4, attn_window=3, val_fraction=0.34,
                                       optim=opt(2, optimizer="muon", lr=1e-3)), [data], root / "adapt",
                        progress=False)
    return {"data": data, "tok": tok, "lat": lat, "pre": pre, "adapted": adapted, "root": root}


def test_tokenizer_learns_every_view_and_latents_stack_them(chain):
    from repwam.data.lerobot import LeRobotDataset
    from repwam.data.transforms import frames_to_model
    from repwam.lat.model import LatentActionTokenizer
    from repwam.tokenizer.tokenize import load_latents, load_tokenizer, tokenizer_ref

    tok = load_tokenizer(chain["tok"])
    assert tok.checkpoint_meta["cameras"] == KEYS
    teacher = sorted(p.name for p in (chain["data"] / "cache" / "teacher").iterdir())
    assert len(teacher) == 2 and teacher[1].endswith("-topview"), "one teacher-feature cache per camera"
    zs, valid, meta = load_latents(chain["data"], tokenizer_ref(tok)["weights_hash"])
    L, (h, w) = tok.tokens_per_frame, tok.latent_grid
    assert meta["cameras"] == KEYS and meta["latent_grid"] == [2 * h, w] and zs[0].shape[1:] == (2 * L, 32)
    ds = LeRobotDataset(chain["data"])
    n = 1 + 4 * ((ds.episode_length(0) - 1) // 4)
    for v, key in enumerate(KEYS):  # view v's tokens are the tokenizer's encoding of that camera alone
        frames = frames_to_model(torch.from_numpy(ds.episode_frames(0, key)[:n]).permute(0, 3, 1, 2))
        with torch.no_grad():
            z = tok.encode(frames[None])[0]
        torch.testing.assert_close(zs[0][: len(z), v * L : (v + 1) * L], z, atol=1e-4, rtol=1e-4)
    assert LatentActionTokenizer.from_pretrained(chain["lat"]).cfg.grid_hw == (2 * h, w)


def test_imagined_futures_of_a_two_view_model(chain, tmp_path):
    """`repwam eval wam` on stacked views: probes on every token, PSNR and pictures of the first view."""
    from repwam.eval.wam import evaluate_wam

    res = evaluate_wam(chain["pre"], [chain["data"]], horizon=2, max_episodes=2, out_dir=tmp_path, strips=1,
                       progress=False)
    assert all(np.isfinite(v).all() for v in res["per_horizon"].values())
    assert (tmp_path / "imagined_0.png").exists()


def test_policy_takes_both_cameras_and_streams_each_view(chain):
    from repwam.data.lerobot import LeRobotDataset
    from repwam.data.transforms import frames_to_model
    from repwam.policy import load_policy

    ds = LeRobotDataset(chain["data"])
    policy = load_policy(chain["adapted"], chunk=1)
    assert policy.metadata["camera_keys"] == KEYS
    state = np.asarray(ds.episode_data(0)["observation.state"], np.float32)
    frames = {k: ds.episode_frames(0, k) for k in KEYS}
    policy.reset(ds.episode_task(0))
    for t in range(9):
        out = policy.infer({**{k: frames[k][t] for k in KEYS}, "observation.state": state[t]})
        assert out["actions"].shape[1] == 4 and np.isfinite(out["actions"]).all()
    hist = torch.stack(policy.history_latents())  # (3, 2 L, d)
    L = policy.tokenizer.tokens_per_frame
    for v, key in enumerate(KEYS):
        x = frames_to_model(torch.from_numpy(frames[key][:9]).permute(0, 3, 1, 2))
        with torch.no_grad():
            z = policy.tokenizer.encode(x[None])[0]
        torch.testing.assert_close(hist[:, v * L : (v + 1) * L], z, atol=1e-4, rtol=1e-4)
    policy.reset(ds.episode_task(0))
    with pytest.raises(RepwamError, match="topview"):
        policy.infer({KEYS[0]: frames[KEYS[0]][0], "observation.state": state[0]})


def test_closed_loop_renders_every_camera_and_imagines_both_views(chain, tmp_path):
    from repwam.eval.closed_loop import evaluate_policy, policy_spec
    from repwam.policy import load_policy

    res = evaluate_policy(policy_spec(str(chain["adapted"])), tasks=["reach-v3"], episodes_per_task=1, seed=0,
                          workers=0, out_dir=tmp_path, max_steps=8, videos_per_task=0, progress=False)
    assert res["tasks"]["reach-v3"]["episodes"] == 1
    policy = load_policy(chain["adapted"], chunk=1, actions_only=False, imagine=True)
    from repwam.data.lerobot import LeRobotDataset

    ds = LeRobotDataset(chain["data"])
    policy.reset(ds.episode_task(0))
    out = policy.infer({**{k: ds.episode_frames(0, k)[0] for k in KEYS},
                        "observation.state": np.asarray(ds.episode_data(0)["observation.state"][0], np.float32)})
    assert out["imagined"].shape == (4, 64, 2 * 64, 3), "imagined frames of both views, side by side"


def test_plain_baseline_sees_both_cameras(chain):
    from repwam.data.lerobot import LeRobotDataset
    from repwam.policy import load_policy
    from repwam.train.plain import PlainTrainConfig, train_plain

    ckpt = train_plain(PlainTrainConfig(val_fraction=0.34, optim=opt(2)), [chain["data"]], chain["root"] / "plain",
                       progress=False)
    policy = load_policy(ckpt)
    assert policy.metadata["camera_keys"] == KEYS and policy.model.cfg.num_views == 2
    ds = LeRobotDataset(chain["data"])
    policy.reset(ds.episode_task(0))
    obs = {**{k: ds.episode_frames(0, k)[0] for k in KEYS},
           "observation.state": np.asarray(ds.episode_data(0)["observation.state"][0], np.float32)}
    assert policy.infer(obs)["actions"].shape[1] == 4
