"""Tokenizer stage end to end on tiny sizes: train, checkpoint, resume, NaN guard, evaluate, tokenize."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from repwam.data.dataset import ClipDataset, frames_to_model
from repwam.data.lerobot import LeRobotDataset
from repwam.errors import RepwamError
from repwam.train.common import OptimConfig
from repwam.train.tokenizer import TokenizerTrainConfig, load_tokenizer, teacher_cache, train_tokenizer


def test_checkpoint_round_trip_without_teacher_weights(tiny_tokenizer, tiny_dataset):
    model, cfg, head = load_tokenizer(tiny_tokenizer, with_align_head=True)
    assert cfg["teacher"]["name"] == "efficientnet-lite0" and cfg["teacher"]["layer"] == "stage5"
    assert head is not None and head.proj.out_features == cfg["teacher_dim"]
    with safe_open(str(tiny_tokenizer / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    n_params = sum(p.numel() for p in model.parameters())
    assert len(keys) == len(model.state_dict()), "only the tokenizer's own weights are saved"
    assert (tiny_tokenizer / "model.safetensors").stat().st_size < 4 * n_params + 100_000
    ds = ClipDataset(tiny_dataset, num_frames=5, progress=False)
    x = frames_to_model(ds[0]["frames"][None])
    model2, _ = load_tokenizer(tiny_tokenizer)
    with torch.no_grad():
        assert torch.equal(model.encode(x), model2.encode(x))
    # the teacher was not run while training: its features came from the cache
    assert any((tiny_dataset / "cache" / "teacher").glob("*/shard-*.safetensors"))


def test_teacher_cache_is_reused(tiny_tokenizer, tiny_dataset, monkeypatch):
    from repwam.tokenizer.teachers import build_teacher

    teacher = build_teacher("efficientnet-lite0", layer="stage5")
    calls = []
    monkeypatch.setattr(type(teacher), "forward", lambda self, x: calls.append(1))
    feats = teacher_cache(tiny_dataset, teacher, (8, 8))
    assert not calls, "a complete cache must not run the teacher again"
    assert feats.shape == (LeRobotDataset(tiny_dataset).num_frames, 64, teacher.dim)


def test_resume_continues_and_refuses_to_clobber(tiny_dataset, tmp_path):
    cfg = TokenizerTrainConfig(teacher="none", optim=OptimConfig(steps=2, batch_size=2, save_every=2, log_every=1, warmup=1))
    out = tmp_path / "run"
    train_tokenizer(cfg, [tiny_dataset], out, progress=False)
    state = torch.load(out / "training_state.pt", weights_only=False)
    assert state["step"] == 2
    with pytest.raises(RepwamError, match="--resume"):
        train_tokenizer(cfg, [tiny_dataset], out, progress=False)
    cfg.optim.steps = 4
    train_tokenizer(cfg, [tiny_dataset], out, resume=True, progress=False)
    assert torch.load(out / "training_state.pt", weights_only=False)["step"] == 4
    assert json.loads((out / "checkpoints" / "last" / "config.json").read_text())["step"] == 4
    other = TokenizerTrainConfig(teacher="none", num_frames=9, optim=cfg.optim)
    with pytest.raises(RepwamError, match="other settings"):
        train_tokenizer(other, [tiny_dataset], out, resume=True, progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    from repwam.tokenizer import losses

    cfg = TokenizerTrainConfig(teacher="none", optim=OptimConfig(steps=4, batch_size=2, save_every=2, log_every=1, warmup=1))
    real = losses.l1
    calls = {"n": 0}

    def l1_nan_after_two(recon, target):
        calls["n"] += 1
        out = real(recon, target)
        return out * float("nan") if calls["n"] > 2 else out

    monkeypatch.setattr(losses, "l1", l1_nan_after_two)
    with pytest.raises(RepwamError, match="non-finite.*step 2.*checkpoints/last"):
        train_tokenizer(cfg, [tiny_dataset], tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "checkpoints" / "last" / "config.json").read_text())["step"] == 2


def test_eval_and_tokenize(tiny_tokenizer, tiny_dataset, tmp_path):
    from repwam.eval.tokenizer import evaluate_tokenizer, format_table
    from repwam.tokenizer.tokenize import load_latents, tokenize_dataset

    res = evaluate_tokenizer(tiny_tokenizer, [tiny_dataset], val_fraction=0.34, out_dir=tmp_path, progress=False)
    assert 5 < res["psnr"] < 60 and 0 < res["ssim"] <= 1
    assert -1 <= res["teacher_cosine_linear"] <= 1 and "teacher_cosine_head" in res
    assert set(res["state_probe_r2"]) == {"hand", "gripper", "object", "goal", "mean"}
    assert (tmp_path / res["recon_grid"].split("/")[-1]).exists()
    assert "efficientnet-lite0" in format_table([res])

    cache = tokenize_dataset(tiny_tokenizer, tiny_dataset, progress=False)
    zs, valid, meta = load_latents(tiny_dataset, cache.path.name)
    ds = LeRobotDataset(tiny_dataset)
    model, _ = load_tokenizer(tiny_tokenizer)
    assert meta["attn_window"] == 2 and len(zs) == ds.num_episodes
    for e in (0, ds.num_episodes - 1):
        n = ds.episodes[e]["length"]
        assert valid[e] == n
        assert zs[e].shape == (1 + -(-(n - 1) // 4), 64, model.cfg.latent_dim)
    # windowed whole-episode encoding equals encoding the first clip on its own (causality + relative time)
    frames = frames_to_model(torch.from_numpy(ds.episode_frames(0, ds.camera_keys[0])[:5]).permute(0, 3, 1, 2))
    with torch.no_grad():
        z_clip = model.encode(frames[None])[0]
    torch.testing.assert_close(zs[0][:2], z_clip, atol=1e-4, rtol=1e-4)
    # a second call reuses the cache
    assert tokenize_dataset(tiny_tokenizer, tiny_dataset, progress=False).path == cache.path
