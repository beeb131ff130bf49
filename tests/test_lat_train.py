"""LAT stage end to end on tiny sizes: latent clips, training, NaN guard, labelling, mismatch errors, evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from repwam.data.lerobot import LeRobotDataset
from repwam.errors import RepwamError
from repwam.train.common import OptimConfig
from repwam.train.lat import LatentClips, LATTrainConfig, label_dataset, load_lat, train_lat


@pytest.fixture(scope="module")
def latents(tiny_tokenizer, tiny_dataset):
    from repwam.tokenizer.tokenize import tokenize_dataset

    return tokenize_dataset(tiny_tokenizer, tiny_dataset, progress=False).path.name


@pytest.fixture(scope="module")
def lat_ckpt(latents, tiny_dataset, tmp_path_factory):
    cfg = LATTrainConfig(latents=latents, val_fraction=0.34,
                         optim=OptimConfig(steps=30, batch_size=16, lr=3e-3, save_every=15, log_every=5, warmup=2))
    return train_lat(cfg, [tiny_dataset], tmp_path_factory.mktemp("lat") / "run", progress=False)


def test_latent_clips_align_actions(latents, tiny_dataset):
    clips = LatentClips([tiny_dataset], latents, clip_frames=3)
    ds = LeRobotDataset(tiny_dataset)
    item = clips[5]
    L, d = clips.latent_shape
    assert item["z"].shape == (3, L, d) and item["action"].shape == (2, 4, 4)
    e, s = item["episode"], item["start"]
    act = ds.episode_data(e)["action"]
    np.testing.assert_array_equal(item["action"][0].numpy(), act[4 * s : 4 * s + 4])
    np.testing.assert_array_equal(item["action"][1].numpy(), act[4 * s + 4 : 4 * s + 8])
    # clips only use latent frames whose raw frames are all real
    for d_, e_, s_ in clips.index:
        assert 4 * (s_ + 2) <= clips.valid[d_][e_] - 1


def test_training_beats_copy_last_and_checkpoints(lat_ckpt, latents, tiny_dataset):
    model, cfg = load_lat(lat_ckpt)
    assert cfg["latents"] == latents and cfg["tokenizer"]["latent_dim"] == model.cfg.latent_dim
    clips = LatentClips([tiny_dataset], latents, clip_frames=2)
    z = torch.stack([clips[i]["z"] for i in range(0, len(clips), 3)])
    losses = model.loss(z)
    assert losses["fwd"] < losses["copy_last"], "the FDM with ℓ must predict better than copying the last frame"
    model2, _ = load_lat(lat_ckpt)
    with torch.no_grad():
        assert torch.equal(model(z), model2(z))


def test_label_cache_round_trip(lat_ckpt, latents, tiny_dataset):
    from repwam.cache import ShardedCache
    from repwam.tokenizer.tokenize import load_latents

    cache = label_dataset(lat_ckpt, tiny_dataset, progress=False)
    entries = ShardedCache(cache.path).load()
    zs, _, _ = load_latents(tiny_dataset, latents)
    model, _ = load_lat(lat_ckpt)
    for e in (0, len(zs) - 1):
        ell = entries[f"episode_{e:06d}"]
        assert ell.shape == (len(zs[e]) - 1, model.cfg.action_dim)
        with torch.no_grad():
            torch.testing.assert_close(ell, model(zs[e][None])[0])


def test_latents_from_another_tokenizer_are_refused(lat_ckpt, latents, tiny_dataset):
    from repwam.cache import ShardedCache, cache_dir

    src = ShardedCache(cache_dir(tiny_dataset, "latents", latents))
    other = ShardedCache(cache_dir(tiny_dataset, "latents", "other_tok"))
    meta = json.loads(json.dumps(src.meta))
    meta["tokenizer"]["width"] = 999
    meta["checkpoint"] = "/somewhere/other_tok"
    other.start(meta)
    other.add_shard(src.load())
    other.finish()
    with pytest.raises(RepwamError, match="other_tok.*width"):
        label_dataset(lat_ckpt, tiny_dataset, latents="other_tok", progress=False)


def test_nan_loss_stops_with_clear_message(latents, tiny_dataset, tmp_path, monkeypatch):
    from repwam.lat.model import LatentActionTokenizer

    real = LatentActionTokenizer.loss
    monkeypatch.setattr(LatentActionTokenizer, "loss", lambda self, z: {k: v * float("nan") for k, v in real(self, z).items()})
    cfg = LATTrainConfig(latents=latents, optim=OptimConfig(steps=3, batch_size=8, save_every=2))
    with pytest.raises(RepwamError, match="non-finite.*step 0"):
        train_lat(cfg, [tiny_dataset], tmp_path / "run", progress=False)


def test_action_free_dataset(latents, tiny_dataset, tmp_path):
    """Latent clips of a dataset with no action column: training works, no actions are returned."""
    import shutil

    from repwam.data.lerobot import LeRobotWriter

    src = LeRobotDataset(tiny_dataset)
    root = tmp_path / "video_only"
    cam = src.camera_keys[0]
    w = LeRobotWriter(root, fps=src.fps, features={cam: src.features[cam]})
    for e in range(src.num_episodes):
        w.add_episode({cam: src.episode_frames(e, cam)}, src.episode_task(e))
    w.finalize()
    shutil.copytree(tiny_dataset / "cache" / "latents" / latents, root / "cache" / "latents" / latents)
    clips = LatentClips([root], latents, clip_frames=2)
    assert not clips.has_actions and "action" not in clips[0]
    cfg = LATTrainConfig(latents=latents, optim=OptimConfig(steps=2, batch_size=8, save_every=2))
    assert (train_lat(cfg, [root], tmp_path / "run", progress=False) / "model.safetensors").exists()


def test_eval_lat_table_and_transfer_picture(lat_ckpt, tiny_dataset, tmp_path):
    from PIL import Image

    from repwam.eval.lat import evaluate_lat, format_table, transfer_picture

    res = evaluate_lat(lat_ckpt, [tiny_dataset], val_fraction=0.34)
    assert res["copy_last_mse"] > 0 and np.isfinite(res["action_probe_r2_mlp"]) and res["val_transitions"] > 0
    assert "continuous 4-d" in format_table([res])
    pic = transfer_picture(lat_ckpt, tiny_dataset, tmp_path / "t.png", pairs=1, horizon=3)
    img = np.asarray(Image.open(pic))
    assert img.shape[0] == 3 * 64 * 2 and img.std() > 10
