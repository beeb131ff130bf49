"""The frozen teacher as the tokenizer (the `teacher` reference row): latents are the layer-normed teacher maps on the
latent grid, streaming equals whole-clip encoding, the checkpoint names the teacher (its hash follows it), and the
whole chain (latent cache, LAT, WAM pretraining, adaptation, the policy) runs on it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from repwam.errors import RepwamError
from repwam.tokenizer.frozen import FrozenTeacherConfig, FrozenTeacherTokenizer
from repwam.tokenizer.teachers import build_teacher


def clip(b, t, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, size, size, generator=g) * 2 - 1


def test_latents_are_the_teachers_maps_and_streaming_equals_encode():
    torch.set_num_threads(1)
    tok = FrozenTeacherTokenizer(FrozenTeacherConfig())
    assert tok.latent_dim == 112 and tok.latent_grid == (8, 8) and list(tok.state_dict()) == ["teacher_spec"]
    x = clip(2, 9)
    z = tok.encode(x)
    assert z.shape == (2, 3, 64, 112)
    teacher = build_teacher("efficientnet-lite0", layer="stage5", input_size=128)
    with torch.no_grad():
        maps = teacher(x.flatten(0, 1)).reshape(2, 9, 112, 8, 8).flatten(3).transpose(2, 3)  # (B, T, L, C)
    want = torch.stack([maps[:, 0], maps[:, 1:5].mean(1), maps[:, 5:9].mean(1)], 1)
    torch.testing.assert_close(z, F.layer_norm(want, (112,)), atol=1e-4, rtol=1e-4)
    stream = tok.stream_encoder(2)
    pushed = [stream.push(x[:, 0])] + [stream.push(x[:, 1 + 4 * i : 5 + 4 * i]) for i in range(2)]
    torch.testing.assert_close(torch.stack(pushed, 1), z, atol=1e-5, rtol=1e-5)
    with pytest.raises(RepwamError, match="no decoder"):
        tok.decode(z)
    with pytest.raises(RepwamError, match="accepts T = 1 \\+ 4k"):
        tok.encode(clip(1, 4))
    with pytest.raises(RepwamError, match=r"\(B, T, 3, 64, 64\)"):
        tok.encode(clip(1, 5, size=32))


def test_checkpoint_names_the_teacher_and_the_chain_runs_on_it(tiny_dataset, tmp_path):
    from repwam.checkpoint import read_config, weights_hash
    from repwam.data.lerobot import LeRobotDataset
    from repwam.policy import load_policy
    from repwam.tokenizer.tokenize import load_tokenizer
    from repwam.train.lat import LATTrainConfig, train_lat
    from repwam.train.tokenizer import RECIPES, train_tokenizer
    from repwam.train.trainer import OptimConfig
    from repwam.train.wam import WAMTrainConfig, train_wam

    torch.set_num_threads(1)
    ckpt = train_tokenizer(RECIPES["teacher"], [tiny_dataset], tmp_path / "tok", progress=False)
    assert read_config(ckpt)["teacher"]["name"] == "efficientnet-lite0" and (tmp_path / "tok" / "run.json").exists()
    tok = load_tokenizer(ckpt)
    assert isinstance(tok, FrozenTeacherTokenizer) and tok.checkpoint_meta["cameras"] == ["observation.images.corner3"]
    other = train_tokenizer(replace(RECIPES["teacher"], teacher_layer="stage4"), [tiny_dataset], tmp_path / "tok4",
                            progress=False)
    assert weights_hash(other) != weights_hash(ckpt)  # caches keyed by the hash never mix two teachers
    with pytest.raises(RepwamError, match="expects 128x128"):
        train_tokenizer(replace(RECIPES["teacher"], preset="tiny128"), [tiny_dataset], tmp_path / "bad",
                        progress=False)

    opt = dict(batch_size=4, warmup=1, log_every=1, val_items=8)
    lat = train_lat(LATTrainConfig(tokenizer=str(ckpt), val_fraction=0.34,
                                   optim=OptimConfig(steps=2, save_every=2, **opt)),
                    [tiny_dataset], tmp_path / "lat", progress=False)
    small = dict(clip_frames=4, attn_window=3, val_fraction=0.34)
    pre = train_wam(WAMTrainConfig(tokenizer=str(ckpt), lat=str(lat), **small,
                                   optim=OptimConfig(steps=2, save_every=2, optimizer="muon", **opt)),
                    [tiny_dataset], tmp_path / "pre", progress=False)
    wam = train_wam(WAMTrainConfig(stage="adapt", init=str(pre), **small,
                                   optim=OptimConfig(steps=2, save_every=2, optimizer="muon", **opt)),
                    [tiny_dataset], tmp_path / "wam", progress=False)
    ds = LeRobotDataset(tiny_dataset)
    policy = load_policy(wam, chunk=1)
    policy.reset(ds.episode_task(0))
    cam = ds.camera_keys[0]
    frames, state = ds.episode_frames(0, cam), np.asarray(ds.episode_data(0)["observation.state"], np.float32)
    for t in range(5):
        out = policy.infer({cam: frames[t], "observation.state": state[t]})
        assert out["actions"].shape[1] == 4 and np.isfinite(out["actions"]).all()
