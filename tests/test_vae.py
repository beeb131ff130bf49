"""CausalVAE (the conventional video VAE ablation): shapes, temporal causality, streaming, KL, a tiny overfit,
checkpoints and errors."""

import json
import time

import pytest
import torch

from repwam.errors import RepwamError
from repwam.tokenizer import RepViTok, TokenizerConfig
from repwam.tokenizer.tokenize import load_tokenizer
from repwam.tokenizer.vae import VAE_PRESETS, CausalVAE, VAEConfig, kl_divergence

CHANGED = 1e-4  # a latent or pixel that moved by more than this was influenced by the edit


def clip(b, t, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, size, size, generator=g) * 2 - 1


def smooth_clips(b, t, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b * t, 3, size // 8, size // 8, generator=g) * 2 - 1
    up = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return up.clamp(-1, 1).view(b, t, 3, size, size)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return CausalVAE(VAEConfig.preset("tiny")).eval()


# ---- config and shapes ----


def test_tiny_preset_matches_the_tiny_vit():
    vae = CausalVAE(VAEConfig.preset("tiny"))
    vit = RepViTok(TokenizerConfig.preset("tiny"))
    for attr in ("latent_grid", "tokens_per_frame", "latent_dim", "temporal_patch", "image_size"):
        assert getattr(vae, attr) == getattr(vit, attr), attr
    assert vae.latent_grid == (8, 8) and vae.temporal_patch == 4 and vae.latent_dim == 32
    n, n_vit = vae.num_params(), vit.num_params()
    print(f"tiny CausalVAE {n / 1e6:.2f}M params, tiny RepViTok {n_vit / 1e6:.2f}M")
    assert 0.7 * n_vit < n < 1.5 * n_vit
    assert set(VAE_PRESETS) >= {"tiny", "tiny128", "small"}
    vae128, vit128 = CausalVAE(VAEConfig.preset("tiny128")), RepViTok(TokenizerConfig.preset("tiny128"))
    for attr in ("latent_grid", "tokens_per_frame", "latent_dim", "temporal_patch", "image_size"):
        assert getattr(vae128, attr) == getattr(vit128, attr) == (getattr(vit, attr) if attr != "image_size" else 128)


@pytest.mark.parametrize("t,t_lat", [(1, 1), (5, 2), (9, 3)])
def test_shapes(tiny, t, t_lat):
    x = clip(2, t)
    with torch.no_grad():
        z = tiny.encode(x)
        assert z.shape == (2, t_lat, 64, 32)
        assert tiny.decode(z).shape == (2, t, 3, 64, 64)
        posterior = tiny.encode_dist(x)
        assert posterior.mean.shape == posterior.logvar.shape == z.shape
        recon, _ = tiny(x)
        assert recon.shape == x.shape
    assert tiny.num_latent_frames(t) == t_lat and tiny.num_frames(t_lat) == t


def test_single_images_and_the_small_preset():
    torch.manual_seed(0)
    small = CausalVAE(VAEConfig.preset("small")).eval()
    with torch.no_grad():
        z = small.encode(clip(1, 1, size=128)[:, 0])  # (B, C, H, W) accepted for single images
    assert z.shape == (1, 1, 16 * 16, 64) and small.latent_grid == (16, 16)


# ---- causality ----


def test_latent_frames_never_see_later_frames(tiny):
    x = clip(1, 9, seed=1)
    with torch.no_grad():
        z = tiny.encode(x)
        # latent frame 0 covers frame 0, latent 1 frames 1..4, latent 2 frames 5..8
        for f, unchanged in [(0, 1), (2, 1), (3, 1), (4, 2), (7, 2)]:
            x2 = x.clone()
            x2[:, f + 1 :] = clip(1, 8 - f, seed=10 + f)
            z2 = tiny.encode(x2)
            diff = (z - z2).abs().amax(dim=(0, 2, 3))  # per latent frame
            assert (diff[:unchanged] == 0).all(), f"frames > {f} changed latent frames < {unchanged}: {diff}"
            assert (diff[unchanged:] > CHANGED).all(), f"frames > {f} did not reach latent frames >= {unchanged}"
        # the last frame a latent frame covers reaches it
        x3 = x.clone()
        x3[:, 4] = clip(1, 1, seed=20)[:, 0]
        diff = (z - tiny.encode(x3)).abs().amax(dim=(0, 2, 3))
        assert diff[0] == 0 and diff[1] > CHANGED


def test_decoder_is_causal_too(tiny):
    z = torch.randn(1, 3, 64, 32, generator=torch.Generator().manual_seed(2))
    z2 = z.clone()
    z2[:, 2] = torch.randn(1, 64, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        r, r2 = tiny.decode(z), tiny.decode(z2)
    assert torch.equal(r[:, :5], r2[:, :5])
    assert (r[:, 5:] - r2[:, 5:]).abs().max() > CHANGED


def test_stream_equals_whole_clip_encode(tiny):
    x = clip(2, 13, seed=4)
    stream = tiny.stream_encoder(2)
    with torch.no_grad():
        whole = tiny.encode(x)
        zs = [stream.push(x[:, :1])] + [stream.push(x[:, i : i + 4]) for i in range(1, 13, 4)]
    assert torch.allclose(torch.stack(zs, dim=1), whole, atol=1e-5)
    with pytest.raises(RepwamError, match=r"push 4 takes the next tubelet of temporal_patch=4 frames"):
        stream.push(x[:, :1])
    stream.reset()
    assert torch.allclose(stream.push(x[:, 0]), whole[:, 0], atol=1e-5)


# ---- the context window ----


def test_context_window_bounds_what_a_latent_frame_sees(tiny):
    """With W = 3, latent frame i >= 3 is the last latent frame of the 9-frame clip ending at it (a training-length
    clip), so frames before that clip never reach it; without the window the receptive field runs much further."""
    assert tiny.cfg.context_window == 3
    x = clip(1, 25, seed=5)  # 7 latent frames
    unbounded = CausalVAE(VAEConfig.preset("tiny", context_window=None)).eval()
    unbounded.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        z = tiny.encode(x)
        assert z.shape == (1, 7, 64, 32)
        assert torch.allclose(z[:, :3], tiny.encode(x[:, :9]), atol=1e-5)  # one pass over the first W latent frames
        for i in range(3, 7):  # frames 4(i-2) .. 4i, encoded as a clip of their own
            assert torch.allclose(z[:, i], tiny.encode(x[:, 4 * (i - 2) : 4 * i + 1])[:, -1], atol=1e-5), i
        x2 = x.clone()
        x2[:, :8] = clip(1, 8, seed=6)  # frames 0..7: before latent frame 4's window (frames 8..16)
        diff = (tiny.encode(x2) - z).abs().amax(dim=(0, 2, 3))
        assert (diff[4:] == 0).all() and (diff[:3] > CHANGED).all()
        diff_unbounded = (unbounded.encode(x2) - unbounded.encode(x)).abs().amax(dim=(0, 2, 3))
        assert (diff_unbounded[4:] > CHANGED).all()  # the plain one-pass VAE still sees them


def test_windowed_decode_and_stream(tiny):
    z = torch.randn(2, 6, 64, 32, generator=torch.Generator().manual_seed(7))
    x = clip(2, 29, seed=8)  # 8 latent frames
    with torch.no_grad():
        r = tiny.decode(z)
        assert r.shape == (2, 21, 3, 64, 64)
        assert torch.allclose(r[:, :9], tiny.decode(z[:, :3]), atol=1e-5)
        for i in range(3, 6):  # latent frame i decodes to frames 4i-3 .. 4i from latents i-2 .. i only
            assert torch.allclose(r[:, 4 * i - 3 : 4 * i + 1], tiny.decode(z[:, i - 2 : i + 1])[:, -4:], atol=1e-5)
        whole = tiny.encode(x)
        stream = tiny.stream_encoder(2)
        zs = [stream.push(x[:, :1])] + [stream.push(x[:, i : i + 4]) for i in range(1, 29, 4)]
        assert stream.frames.shape[1] == 9  # the stream keeps one window of raw frames, however long it runs
    assert torch.allclose(torch.stack(zs, dim=1), whole, atol=1e-5)
    with pytest.raises(RepwamError, match="context_window must be >= 1"):
        VAEConfig.preset("tiny", context_window=0)


# ---- KL and latent statistics ----


def test_kl_term():
    zero = torch.zeros(2, 3)
    assert kl_divergence(zero, zero).item() == 0.0  # the prior itself
    mean, logvar = torch.full((4,), 2.0), torch.zeros(4)
    assert kl_divergence(mean, logvar).item() == pytest.approx(2.0)  # 0.5 * mean^2
    assert kl_divergence(zero, torch.full((2, 3), -2.0)).item() == pytest.approx(0.5 * (torch.e**-2 - 1 + 2))


def test_fit_latent_stats_gives_unit_scale_latents_and_decode_undoes_it():
    torch.manual_seed(0)
    vae = CausalVAE(VAEConfig.preset("tiny")).eval()
    clips = [clip(2, 5, seed=s) for s in range(2)]
    with torch.no_grad():
        before = vae.decode(vae.encode(clips[0]))
        vae.fit_latent_stats(clips)
        z = torch.cat([vae.encode(c) for c in clips]).flatten(0, 2)
        after = vae.decode(vae.encode(clips[0]))
    assert torch.allclose(z.mean(0), torch.zeros(32), atol=1e-4)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(32), atol=1e-3)
    assert torch.allclose(before, after, atol=1e-4)


# ---- training signal ----


def test_overfits_a_few_clips():
    # a 32x32 variant of the tiny architecture keeps this test to seconds on one core
    torch.manual_seed(0)
    vae = CausalVAE(VAEConfig(image_size=32, base_channels=16, latent_dim=16))
    x = smooth_clips(2, 5, 32)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    t0, l1s = time.time(), []
    for _ in range(100):
        recon, posterior = vae(x)  # training mode: the decoder sees a posterior sample
        terms = vae.loss_terms(recon, x, posterior)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        l1s.append(terms["l1"].item())
    print(f"L1 {l1s[0]:.3f} -> {l1s[-1]:.3f}, KL {terms['kl'].item():.2f} in {time.time() - t0:.1f}s")
    assert l1s[-1] < 0.3 * l1s[0]
    assert torch.isfinite(terms["kl"]) and terms["loss"].item() == pytest.approx(
        terms["l1"].item() + vae.cfg.kl_weight * terms["kl"].item(), rel=1e-5
    )


# ---- checkpoints and errors ----


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    vae = CausalVAE(VAEConfig.preset("tiny")).eval()
    x = clip(1, 5, seed=5)
    vae.fit_latent_stats([x])  # non-trivial buffers must travel too
    path = vae.save_pretrained(tmp_path / "vae", meta={"step": 3})
    config = json.loads((path / "config.json").read_text())
    assert config["type"] == "repwam.vae" and VAEConfig.from_dict(config["vae"]) == vae.cfg
    loaded = CausalVAE.from_pretrained(path)
    assert loaded.cfg == vae.cfg and loaded.checkpoint_meta["step"] == 3 and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), vae.encode(x))
    with pytest.raises(RepwamError, match="is not a repwam.tokenizer checkpoint"):
        RepViTok.from_pretrained(path)
    assert isinstance(load_tokenizer(path), CausalVAE)  # dispatch on the type in config.json
    vit_path = RepViTok(TokenizerConfig.preset("tiny")).save_pretrained(tmp_path / "vit")
    assert isinstance(load_tokenizer(vit_path, attn_window=2), RepViTok)


def test_bad_inputs_raise_clear_errors(tiny):
    with pytest.raises(RepwamError, match=r"got T=6 frames; CausalVAE accepts T = 1 \+ 4k frames \(1, 5, 9"):
        tiny.encode(clip(1, 6))
    with pytest.raises(RepwamError, match=r"accepts \(B, T, 3, 64, 64\)"):
        tiny.encode(clip(1, 5, size=32))
    with pytest.raises(RepwamError, match=r"decoder accepts \(B, T', 64, 32\)"):
        tiny.decode(torch.zeros(1, 2, 64, 16))
    with pytest.raises(RepwamError, match="temporal_down has 1 entries but there are 3 downsampling steps"):
        VAEConfig(temporal_down=(True,))
    with pytest.raises(RepwamError, match="not a multiple of the spatial compression 8"):
        VAEConfig(image_size=60)
    with pytest.raises(RepwamError, match="unknown VAEConfig keys"):
        VAEConfig.from_dict({"tubelet": 8})
    with pytest.raises(RepwamError, match="patch_size must be >= 1"):
        VAEConfig(patch_size=0)


def test_the_tokenizer_evaluation_takes_a_vae(tmp_path, tiny_dataset):
    """The tokenizer table's row for the VAE: `repwam eval tokenizer` and the PSNR-by-index pass run on a VAE
    checkpoint through the same code as for RepViTok."""
    from repwam.eval.tokenizer import evaluate_tokenizer, format_table, psnr_by_index

    vae = CausalVAE(VAEConfig.preset("tiny")).eval()
    path = vae.save_pretrained(tmp_path / "vae", {"teacher": {"name": "none"}, "num_frames": 9, "frame_stride": 1,
                                                  "align_weight": 0.0})
    res = evaluate_tokenizer(path, [tiny_dataset], reference_teacher="none", val_fraction=0.34, max_train_clips=40,
                             progress=False)
    assert res["val_clips"] > 0 and 0 < res["psnr"] < 60 and set(res["state_probe_r2"]) >= {"hand", "mean"}
    assert "vae" in format_table([res])
    by = psnr_by_index(path, [tiny_dataset], max_index=2, max_episodes=2, progress=False)
    assert len(by["psnr_by_index"]) == 3 and all(0 < v < 60 for v in by["psnr_by_index"])
