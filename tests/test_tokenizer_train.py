"""Tokenizer stage end to end on tiny sizes, through the one trainer: checkpoint, exact resume, guards, evaluation,
the latent cache keyed by weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from repwam.checkpoint import weights_hash
from repwam.data.dataset import ClipDataset, frames_to_model
from repwam.data.lerobot import LeRobotDataset
from repwam.errors import RepwamError
from repwam.tokenizer.model import RepViTok
from repwam.tokenizer.tokenize import load_align_head, load_tokenizer, teacher_cache
from repwam.train.progress import read_progress
from repwam.train.tokenizer import TokenizerStage, TokenizerTrainConfig, train_tokenizer
from repwam.train.trainer import OptimConfig


def small(teacher="none", steps=4, **kw):
    kw = {"num_frames": 9, "clip_lengths": (5, 9), "attn_window": 2, "val_fraction": 0.34, **kw}
    return TokenizerTrainConfig(teacher=teacher, align_weight=0.0 if teacher == "none" else 1.0,
                                optim=OptimConfig(steps=steps, batch_size=2, save_every=2, log_every=1, warmup=1,
                                                  val_items=4), **kw)


def test_checkpoint_round_trip_without_teacher_weights(tiny_tokenizer, tiny_dataset):
    model, head = load_tokenizer(tiny_tokenizer), load_align_head(tiny_tokenizer)
    meta = model.checkpoint_meta
    assert meta["teacher"]["name"] == "efficientnet-lite0" and meta["teacher"]["layer"] == "stage5"
    assert head is not None and head.proj.out_features == meta["teacher_dim"]
    assert meta["weights_hash"] == weights_hash(tiny_tokenizer) and meta["split"]["val_episodes"]
    assert model.cfg.attn_window == 2 and meta["clip_lengths"] == [5, 9]
    with safe_open(str(tiny_tokenizer / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    n_params = sum(p.numel() for p in model.parameters())
    assert len(keys) == len(model.state_dict()), "only the tokenizer's own weights are saved"
    assert (tiny_tokenizer / "model.safetensors").stat().st_size < 4 * n_params + 100_000
    ds = ClipDataset(tiny_dataset, num_frames=5, progress=False)
    x = frames_to_model(ds[0]["frames"][None])
    with torch.no_grad():
        assert torch.equal(model.encode(x), RepViTok.from_pretrained(tiny_tokenizer).encode(x))
    # the teacher was not run while training: its features came from the cache
    assert any((tiny_dataset / "cache" / "teacher").glob("*/shard-*.safetensors"))


def test_bf16_training_validates_on_cached_teacher_targets(tiny_tokenizer, tiny_dataset, tmp_path):
    """The recipes train in bf16 autocast, and validation runs under it too: batches holding the float16 teacher
    cache must collate there (they did not: `repwam demo` died at its first validation)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = small(teacher="efficientnet-lite0", steps=2, teacher_layer="stage5")
    cfg.optim.bf16, cfg.optim.save_every = True, 1
    ckpt = train_tokenizer(cfg, [tiny_dataset], tmp_path / "run", progress=False)
    assert (ckpt / "model.safetensors").exists()
    ea = EventAccumulator(str(tmp_path / "run" / "tb"))
    ea.Reload()
    cos = [e.value for e in ea.Scalars("val/teacher_cosine")]
    assert len(cos) == 2 and all(-1 <= v <= 1 for v in cos)


def test_teacher_cache_is_reused(tiny_tokenizer, tiny_dataset, monkeypatch):
    from repwam.tokenizer.teachers import build_teacher

    teacher = build_teacher("efficientnet-lite0", layer="stage5", input_size=128)
    calls = []
    monkeypatch.setattr(type(teacher), "forward", lambda self, x: calls.append(1))
    feats = teacher_cache(tiny_dataset, teacher, (8, 8), progress=False)
    assert not calls, "a complete cache must not run the teacher again"
    assert feats.shape == (LeRobotDataset(tiny_dataset).num_frames, 64, teacher.dim)


def test_exact_resume_matches_uninterrupted_run(tiny_dataset, tmp_path, monkeypatch):
    """4 steps in one go == 2 steps, stop, resume to 4: same losses at every step and the same final weights
    (data order, random clip lengths, optimiser, schedule, EMA and RNG state all restored)."""
    seen: list[tuple[str, float]] = []
    real = TokenizerStage.loss
    crash_at = {"b": 2}  # run b is killed when it starts its third step (after the checkpoint at step 2)

    def record(self, batch):
        if self._run_tag == "b" and sum(t == "b" for t, _ in seen) == crash_at.get("b"):
            del crash_at["b"]
            raise KeyboardInterrupt
        out = real(self, batch)
        seen.append((self._run_tag, float(out["loss"].detach())))
        return out

    monkeypatch.setattr(TokenizerStage, "loss", record)
    monkeypatch.setattr(TokenizerStage, "_run_tag", "a", raising=False)
    cfg = small(steps=4)
    cfg.optim.ema = 0.9
    a = train_tokenizer(cfg, [tiny_dataset], tmp_path / "a", progress=False)
    losses_a = [v for tag, v in seen if tag == "a"]

    monkeypatch.setattr(TokenizerStage, "_run_tag", "b", raising=False)
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer(cfg, [tiny_dataset], tmp_path / "b", progress=False)
    assert torch.load(tmp_path / "b" / "training_state.pt", weights_only=False)["step"] == 2
    first = read_progress(tmp_path / "b")  # the loop's wall time up to the last save, kept across sittings
    assert first["step"] == 2 and first["steps"] == 4 and first["train_seconds"] > 0
    with pytest.raises(RepwamError, match="--resume"):
        train_tokenizer(cfg, [tiny_dataset], tmp_path / "b", progress=False)
    b = train_tokenizer(cfg, [tiny_dataset], tmp_path / "b", resume=True, progress=False)
    losses_b = [v for tag, v in seen if tag == "b"]

    assert len(losses_a) == len(losses_b) == 4
    assert losses_a == losses_b
    wa, wb = RepViTok.from_pretrained(a).state_dict(), RepViTok.from_pretrained(b).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert torch.load(tmp_path / "b" / "training_state.pt", weights_only=False)["step"] == 4
    last = read_progress(tmp_path / "b")
    assert last["step"] == 4 and last["train_seconds"] > first["train_seconds"]
    other = small(steps=4, num_frames=13, clip_lengths=(5, 13))
    with pytest.raises(RepwamError, match="other settings"):
        train_tokenizer(other, [tiny_dataset], tmp_path / "b", resume=True, progress=False)
    # a run from before an option existed (its run.json lacks it) resumes while the option is at its default,
    # and is refused when it is not
    run = tmp_path / "b" / "run.json"
    recorded = json.loads(run.read_text())
    del recorded["gan_weight"], recorded["num_frames"], recorded["optim"]["min_lr_ratio"]  # default, 9 (not 17), default
    run.write_text(json.dumps(recorded))
    with pytest.raises(RepwamError, match="other settings.*num_frames"):
        train_tokenizer(cfg, [tiny_dataset], tmp_path / "b", resume=True, progress=False)
    run.write_text(json.dumps({**recorded, "num_frames": 9, "gan_weight": 0.5}))
    with pytest.raises(RepwamError, match="other settings.*gan_weight"):
        train_tokenizer(cfg, [tiny_dataset], tmp_path / "b", resume=True, progress=False)
    run.write_text(json.dumps({**recorded, "num_frames": 9}))
    cfg.optim.steps = 6
    train_tokenizer(cfg, [tiny_dataset], tmp_path / "b", resume=True, progress=False)
    assert torch.load(tmp_path / "b" / "training_state.pt", weights_only=False)["step"] == 6


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    from repwam.tokenizer import losses

    real = losses.l1
    calls = {"n": 0}

    def l1_nan_after_two(recon, target):
        calls["n"] += 1
        out = real(recon, target)
        return out * float("nan") if calls["n"] > 2 else out

    monkeypatch.setattr(losses, "l1", l1_nan_after_two)
    with pytest.raises(RepwamError, match="loss.*non-finite at step 2.*checkpoints/last"):
        train_tokenizer(small(steps=4), [tiny_dataset], tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "checkpoints" / "last" / "config.json").read_text())["step"] == 2


def test_nan_gradient_stops(tiny_dataset, tmp_path, monkeypatch):
    real = TokenizerStage.loss

    def poisoned(self, batch):  # finite loss, non-finite gradient
        p = next(self.model.parameters())
        if not hasattr(p, "poisoned"):
            p.register_hook(lambda g: torch.full_like(g, float("nan")))
            p.poisoned = True
        return real(self, batch)

    monkeypatch.setattr(TokenizerStage, "loss", poisoned)
    with pytest.raises(RepwamError, match="gradient norm became non-finite at step 0.*no checkpoint"):
        train_tokenizer(small(steps=2), [tiny_dataset], tmp_path / "run", progress=False)


def test_eval_psnr_by_index_and_tokenize(tiny_tokenizer, tiny_dataset, tmp_path):
    from repwam.eval.tokenizer import evaluate_tokenizer, format_index_table, format_table, psnr_by_index
    from repwam.tokenizer.tokenize import load_latents, tokenize_dataset

    spec = load_tokenizer(tiny_tokenizer).checkpoint_meta["teacher"]  # the cached teacher it was aligned to
    res = evaluate_tokenizer(tiny_tokenizer, [tiny_dataset], reference_teacher=spec, out_dir=tmp_path, progress=False)
    assert 5 < res["psnr"] < 60 and 0 < res["ssim"] <= 1
    assert -1 <= res["teacher_cosine_linear"] <= 1 and "teacher_cosine_head" in res
    assert set(res["state_probe_r2"]) == {"hand", "gripper", "object", "goal", "mean"}
    assert (tmp_path / res["recon_grid"].split("/")[-1]).exists()
    assert "efficientnet-lite0" in format_table([res])
    by = psnr_by_index(tiny_tokenizer, [tiny_dataset], max_index=4, progress=False)
    assert len(by["psnr_by_index"]) == 5 and all(5 < v < 60 for v in by["psnr_by_index"])
    assert by["frames_by_index"][0] == by["episodes"] and "4+" in format_index_table([by])

    cache = tokenize_dataset(tiny_tokenizer, tiny_dataset, progress=False)
    h = weights_hash(tiny_tokenizer)
    assert cache.path.name == h, "latent caches are keyed by the weights that made them"
    zs, valid, meta = load_latents(tiny_dataset, h)
    ds = LeRobotDataset(tiny_dataset)
    model = load_tokenizer(tiny_tokenizer)
    assert meta["attn_window"] == 2 and meta["tokenizer_hash"] == h and len(zs) == ds.num_episodes
    for e in (0, ds.num_episodes - 1):
        n = ds.episodes[e]["length"]
        assert valid[e] == n
        assert zs[e].shape == (1 + -(-(n - 1) // 4), 64, model.cfg.latent_dim)
    # whole-episode encoding == streaming the episode frame by frame, as the policy will
    frames = frames_to_model(torch.from_numpy(ds.episode_frames(0, ds.camera_keys[0])[:17]).permute(0, 3, 1, 2))
    stream = model.stream_encoder(1)
    with torch.no_grad():
        z_stream = [stream.push(frames[None, :1])] + [stream.push(frames[None, 1 + 4 * j : 5 + 4 * j]) for j in range(4)]
    torch.testing.assert_close(zs[0][:5], torch.cat(z_stream), atol=1e-4, rtol=1e-4)
    # a second call reuses the cache; another dataset size under the same key is an error, never a silent wipe
    assert tokenize_dataset(tiny_tokenizer, tiny_dataset, progress=False).path == cache.path
    with pytest.raises(RepwamError, match="tokenizer"):
        load_latents(tiny_dataset, "0123456789abcdef")


def test_cache_made_with_other_settings_is_not_wiped(tmp_path):
    from repwam.cache import ShardedCache

    c = ShardedCache(tmp_path / "c")
    c.start({"a": 1})
    c.add_shard({"x": torch.zeros(2)})
    c.finish()
    with pytest.raises(RepwamError, match="other settings.*delete"):
        c.start({"a": 2})
    assert torch.equal(c.load()["x"], torch.zeros(2)), "the old entries are still there"
    assert c.start({"a": 2}, overwrite=True) == set()


def test_cli_options_come_from_the_config(tiny_dataset, tmp_path):
    """`repwam train tokenizer` derives its options from TokenizerTrainConfig and saves a replayable run.json."""
    from typer.testing import CliRunner

    from repwam.cli import app
    from repwam.config import from_dict, load_run_config

    out = tmp_path / "run"
    args = ["train", "tokenizer", "--recipe", "none", "--data", str(tiny_dataset), "--out", str(out),
            "--num-frames", "9", "--clip-lengths", "5", "9", "--attn-window", "2", "--val-fraction", "0.34",
            "--optim.steps", "2", "--optim.batch-size", "2", "--optim.save-every", "2", "--optim.val-items", "4"]
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    fields, data = load_run_config(out, "tokenizer")
    cfg = from_dict(TokenizerTrainConfig, fields)
    assert cfg.teacher == "none" and cfg.clip_lengths == (5, 9) and cfg.optim.steps == 2 and data == [str(tiny_dataset)]
    # replay: the saved run with one override
    r = CliRunner().invoke(app, ["train", "tokenizer", "--config", str(out / "run.json"), "--out", str(tmp_path / "r2"),
                                 "--optim.steps", "1"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    fields2, _ = load_run_config(tmp_path / "r2", "tokenizer")
    assert fields2["optim"]["steps"] == 1 and fields2["clip_lengths"] == [5, 9]


def test_cache_lock_serialises_writers(tmp_path):
    """Two writers of one cache (xdist workers, torchrun ranks): the second waits for the first's lock."""
    import threading
    import time

    from repwam.cache import ShardedCache

    c = ShardedCache(tmp_path / "c")
    order = []

    def first():
        with c.lock():
            order.append("first in")
            time.sleep(0.3)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    time.sleep(0.05)
    with c.lock():
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]
