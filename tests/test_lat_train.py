"""LAT stage end to end on tiny sizes: latent clips, training, NaN guard, labelling, mismatch errors, evaluation."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from repwam.data.lerobot import LeRobotDataset
from repwam.errors import RepwamError
from repwam.checkpoint import weights_hash
from repwam.lat.data import LatentClips, label_dataset, load_labels
from repwam.lat.model import LatentActionTokenizer
from repwam.train.lat import LATStage, LATTrainConfig, train_lat
from repwam.train.trainer import OptimConfig


def small(tokenizer, steps=30, **kw):
    return LATTrainConfig(tokenizer=str(tokenizer), val_fraction=0.34, **kw,
                          optim=OptimConfig(steps=steps, batch_size=16, lr=3e-3, save_every=15, log_every=5, warmup=2,
                                            val_items=16))


@pytest.fixture(scope="module")
def latents(tiny_tokenizer, tiny_dataset):
    """The tiny tokenizer's latent cache key: the hash of its weights."""
    from repwam.tokenizer.tokenize import tokenize_dataset

    return tokenize_dataset(tiny_tokenizer, tiny_dataset, progress=False).path.name


@pytest.fixture(scope="module")
def lat_ckpt(tiny_lat):
    return tiny_lat


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


def test_training_beats_copy_last_and_checkpoints(lat_ckpt, latents, tiny_tokenizer, tiny_dataset):
    model = LatentActionTokenizer.from_pretrained(lat_ckpt)
    meta = model.checkpoint_meta
    assert meta["parents"]["tokenizer"]["weights_hash"] == latents == weights_hash(tiny_tokenizer)
    assert meta["tokenizer"]["latent_dim"] == model.cfg.latent_dim and meta["split"]["val_episodes"]
    assert len(meta["ell_stats"]["mean"]) == model.cfg.action_dim and min(meta["ell_stats"]["std"]) > 0
    clips = LatentClips([tiny_dataset], latents, clip_frames=2)
    z = torch.stack([clips[i]["z"] for i in range(0, len(clips), 3)])
    losses = model.loss(z)
    assert losses["fwd"] < losses["copy_last"], "the FDM with ℓ must predict better than copying the last frame"
    with torch.no_grad():
        assert torch.equal(model(z), LatentActionTokenizer.from_pretrained(lat_ckpt)(z))


def test_label_cache_round_trip_with_valid_mask(lat_ckpt, latents, tiny_dataset):
    from repwam.tokenizer.tokenize import load_latents

    lat = LatentActionTokenizer.from_pretrained(lat_ckpt)
    cache = label_dataset(lat, tiny_dataset, progress=False)
    assert cache.path.name == weights_hash(lat_ckpt), "label caches are keyed by the LAT's weights"
    ells, valid, meta = load_labels(tiny_dataset, weights_hash(lat_ckpt))
    zs, nframes, _ = load_latents(tiny_dataset, latents)
    assert meta["tokenizer_hash"] == latents and meta["stats"] == lat.checkpoint_meta["ell_stats"]
    for e in range(len(zs)):
        assert ells[e].shape == (len(zs[e]) - 1, lat.cfg.action_dim)
        # a transition is valid when both its latent frames cover only real frames
        assert valid[e] == (nframes[e] - 1) // 4
    with torch.no_grad():
        torch.testing.assert_close(ells[0], lat(zs[0][None])[0])


def test_latents_from_another_tokenizer_are_refused(lat_ckpt, tiny_tokenizer, tiny_dataset, tmp_path):
    """Another checkpoint of the same architecture (different weights): an error naming both, never a silent mix."""
    from repwam.tokenizer.tokenize import load_tokenizer, tokenize_dataset

    other = load_tokenizer(tiny_tokenizer)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    other_path = other.save_pretrained(tmp_path / "other_tok", {k: v for k, v in other.checkpoint_meta.items()
                                                               if k not in ("path", "weights_hash", "type")})
    tokenize_dataset(other_path, tiny_dataset, progress=False)
    lat = LatentActionTokenizer.from_pretrained(lat_ckpt)
    with pytest.raises(RepwamError, match=f"{tiny_tokenizer}.*{weights_hash(tiny_tokenizer)}.*other_tok.*{weights_hash(other_path)}"):
        label_dataset(lat, tiny_dataset, tokenizer=other_path, progress=False)


def test_a_latent_cache_from_before_a_new_tokenizer_option_is_still_used(tiny_tokenizer, tiny_dataset, latents):
    """A cache whose recorded tokenizer config lacks an option added since (conv_stem) holds the same latents: reused,
    not refused as made with other settings."""
    import json

    from repwam.tokenizer.tokenize import latent_cache, tokenize_dataset

    cache = latent_cache(tiny_dataset, weights_hash(tiny_tokenizer))
    f = cache.path / "index.json"
    idx = json.loads(f.read_text())
    saved = json.dumps(idx)
    try:
        del idx["meta"]["tokenizer"]["conv_stem"]
        f.write_text(json.dumps(idx))
        assert tokenize_dataset(tiny_tokenizer, tiny_dataset, progress=False).path == cache.path
    finally:
        f.write_text(saved)


def test_exact_resume(tiny_tokenizer, tiny_dataset, tmp_path, monkeypatch):
    seen = []
    real = LATStage.loss

    def record(self, batch):
        if self._tag == "b" and len([t for t, _ in seen if t == "b"]) == 3 and not seen_crash:
            seen_crash.append(1)
            raise KeyboardInterrupt
        out = real(self, batch)
        seen.append((self._tag, float(out["loss"].detach())))
        return out

    seen_crash = []
    monkeypatch.setattr(LATStage, "loss", record)
    cfg = small(tiny_tokenizer, steps=6)
    cfg.optim.save_every = 3
    monkeypatch.setattr(LATStage, "_tag", "a", raising=False)
    a = train_lat(cfg, [tiny_dataset], tmp_path / "a", progress=False)
    monkeypatch.setattr(LATStage, "_tag", "b", raising=False)
    with pytest.raises(KeyboardInterrupt):
        train_lat(cfg, [tiny_dataset], tmp_path / "b", progress=False)
    b = train_lat(cfg, [tiny_dataset], tmp_path / "b", resume=True, progress=False)
    assert [v for t, v in seen if t == "a"] == [v for t, v in seen if t == "b"]
    wa = LatentActionTokenizer.from_pretrained(a).state_dict()
    wb = LatentActionTokenizer.from_pretrained(b).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_nan_loss_stops_with_clear_message(tiny_tokenizer, tiny_dataset, tmp_path, monkeypatch):
    from repwam.lat.model import LatentActionTokenizer

    real = LatentActionTokenizer.loss
    monkeypatch.setattr(LatentActionTokenizer, "loss", lambda self, z: {k: v * float("nan") for k, v in real(self, z).items()})
    with pytest.raises(RepwamError, match="non-finite at step 0"):
        train_lat(small(tiny_tokenizer, steps=3), [tiny_dataset], tmp_path / "run", progress=False)


def test_action_free_dataset(tiny_tokenizer, tiny_dataset, tmp_path):
    """Latent clips of a dataset with no action column: training works, no actions are returned."""
    from conftest import video_only_copy

    root = video_only_copy(tiny_dataset, tmp_path / "video_only")
    ckpt = train_lat(small(tiny_tokenizer, steps=2), [root], tmp_path / "run", progress=False)  # tokenizes root first
    assert (ckpt / "model.safetensors").exists()
    clips = LatentClips([root], weights_hash(tiny_tokenizer), clip_frames=2)
    assert not clips.has_actions and "action" not in clips[0]


def test_eval_lat_table_and_transfer_picture(lat_ckpt, tiny_dataset, tmp_path):
    from PIL import Image

    from repwam.eval.lat import evaluate_lat, evaluate_raw_pair, format_table, transfer_picture

    res = evaluate_lat(lat_ckpt, [tiny_dataset])
    assert res["copy_last_mse"] > 0 and np.isfinite(res["action_probe_r2_mlp"]) and res["val_transitions"] > 0
    ref = evaluate_raw_pair(res["tokenizer"]["weights_hash"], [tiny_dataset], val_fraction=0.34)
    assert np.isfinite(ref["action_probe_r2_ridge"]) and ref["val_transitions"] == res["val_transitions"]
    table = format_table([res, res], [ref])
    assert "continuous 4-d" in table and "raw pair" in table and " 2 |" in table  # two runs -> one row, 2 seeds
    assert f"{res['ell_std']:.2f} ± 0.00" in table  # the scale of ℓ, which the regulariser bounds
    reg = {**res, "action_reg": 0.01}
    assert len(format_table([res, reg]).splitlines()) == 4, "regulariser on and off are separate rows"
    pic = transfer_picture(lat_ckpt, tiny_dataset, tmp_path / "t.png", pairs=1, horizon=3)
    img = np.asarray(Image.open(pic))
    assert img.shape[0] == 3 * 64 * 2 and img.std() > 10
