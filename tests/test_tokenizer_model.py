"""RepViTok model and tokenizer losses: shapes, causality, windowing, errors, a tiny overfit."""

import time

import pytest
import torch

from repwam.errors import RepwamError
from repwam.tokenizer import (
    PRESETS,
    AlignHead,
    PerceptualLoss,
    RepViTok,
    TokenizerConfig,
    TokenizerLoss,
    align_loss,
    block_causal_mask,
    teacher_cosine,
)


def clip(b, t, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, size, size, generator=g) * 2 - 1


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # measured: with other jobs on the 2 cores, 2 intra-op threads make each step ~20x slower (OpenMP spinning)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return RepViTok(TokenizerConfig.preset("tiny")).eval()


# ---- config and shapes ----


@pytest.mark.parametrize("name,batch", [("tiny", 2), ("tiny128", 1), ("small", 1)])
def test_preset_forward_shapes(name, batch):
    cfg = TokenizerConfig.preset(name)
    model = RepViTok(cfg).eval()
    s = cfg.image_size
    with torch.no_grad():
        recon, z = model(clip(batch, 5, s))
    h, w = model.latent_grid
    assert (h, w) == (s // cfg.patch_size,) * 2
    assert z.shape == (batch, 2, h * w, cfg.latent_dim)
    assert recon.shape == (batch, 5, 3, s, s)
    # z is LayerNorm'ed without affine: zero mean, unit variance per token
    assert torch.allclose(z.mean(-1), torch.zeros(()), atol=1e-4)
    assert torch.allclose(z.var(-1, unbiased=False), torch.ones(()), atol=1e-2)


def test_base_preset_on_meta_device():
    cfg = TokenizerConfig.preset("base")
    assert (cfg.image_size, cfg.patch_size, cfg.width, cfg.depth, cfg.latent_dim) == (256, 16, 768, 12, 96)
    with torch.device("meta"):
        model = RepViTok(cfg)
        frames = torch.empty(2, 9, 3, 256, 256)
        recon, z = model(frames)
    assert z.device.type == "meta"
    assert z.shape == (2, 3, 256, 96)  # T' = 1 + 8/4, L = 16*16
    assert recon.shape == (2, 9, 3, 256, 256)
    n = model.num_params()
    print(f"base RepViTok params: {n / 1e6:.1f}M")
    assert 150e6 < n < 200e6  # 2 x 12 x 768 ViT ~ 170M plus embeddings and heads


def test_presets_param_counts():
    counts = {}
    for name in PRESETS:
        with torch.device("meta"):
            counts[name] = RepViTok(TokenizerConfig.preset(name)).num_params()
    print({k: f"{v / 1e6:.1f}M" for k, v in counts.items()})
    assert counts["tiny"] < 3e6 < counts["small"] < counts["base"]
    assert counts["tiny"] < counts["tiny128"] < 3e6  # only the patch embedding and unpatchify grow


def test_config_dict_roundtrip_and_errors():
    cfg = TokenizerConfig.preset("tiny", attn_window=3)
    assert TokenizerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(RepwamError, match="unknown TokenizerConfig keys"):
        TokenizerConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(RepwamError, match="available"):
        TokenizerConfig.preset("huge")
    with pytest.raises(RepwamError, match="multiple of patch_size"):
        TokenizerConfig(image_size=60, patch_size=8)


# ---- masks and causality ----


def test_block_causal_mask_structure():
    m = block_causal_mask(3, 2)
    expected = torch.tensor([[1, 1, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 1, 1],
                             [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, expected)
    w2 = block_causal_mask(3, 2, window=2)
    assert torch.equal(w2[4:, :2], torch.zeros(2, 2, dtype=torch.bool))  # frame 2 no longer sees frame 0
    assert torch.equal(w2[4:, 2:], torch.ones(2, 4, dtype=torch.bool))
    assert torch.equal(block_causal_mask(3, 2, window=1), torch.block_diag(*[torch.ones(2, 2)] * 3).bool())
    assert torch.equal(block_causal_mask(3, 2, window=5), m)


def test_encoder_and_decoder_are_causal_across_latent_frames(tiny):
    x = clip(1, 9)
    with torch.no_grad():
        z = tiny.encode(x)
        x2 = x.clone()
        x2[:, 5:] = clip(1, 4, seed=1)  # frames of latent frame 2 only
        z2 = tiny.encode(x2)
        assert torch.allclose(z[:, :2], z2[:, :2], atol=1e-5)
        assert (z[:, 2] - z2[:, 2]).abs().max() > 1e-2
        x3 = x.clone()
        x3[:, 1:5] = clip(1, 4, seed=2)  # latent frame 1
        z3 = tiny.encode(x3)
        assert torch.allclose(z[:, 0], z3[:, 0], atol=1e-5)
        assert (z[:, 1:] - z3[:, 1:]).abs().max() > 1e-2
        # decoder: changing latent frame 2 leaves raw frames 0..4 untouched
        r, r2 = tiny.decode(z), tiny.decode(z2)
        assert torch.allclose(r[:, :5], r2[:, :5], atol=1e-5)
        assert (r[:, 5:] - r2[:, 5:]).abs().max() > 1e-3


def test_window_limits_context_and_positions_are_relative():
    torch.manual_seed(0)
    model = RepViTok(TokenizerConfig.preset("tiny", attn_window=1, max_latent_frames=2)).eval()
    x = clip(1, 13)  # 4 latent frames > max_latent_frames: fine with a window
    with torch.no_grad():
        z = model.encode(x)
        x2 = x.clone()
        x2[:, 1:5] = clip(1, 4, seed=3)
        z2 = model.encode(x2)
        changed = [(z[:, j] - z2[:, j]).abs().max().item() > 1e-3 for j in range(4)]
        assert changed == [False, True, False, False]
        # temporal RoPE is relative: the same tubelet gives the same latent at latent frame 3 and 1
        shifted = torch.cat([x[:, :1], x[:, 9:13]], dim=1)
        assert torch.allclose(model.encode(shifted)[:, 1], z[:, 3], atol=1e-5)
    no_window = RepViTok(TokenizerConfig.preset("tiny", max_latent_frames=2))
    with pytest.raises(RepwamError, match="set attn_window"):
        no_window.encode(x)


# ---- inputs ----


def test_single_image(tiny):
    with torch.no_grad():
        recon, z = tiny(clip(3, 1))
        assert z.shape == (3, 1, 64, 32) and recon.shape == (3, 1, 3, 64, 64)
        assert tiny.encode(clip(3, 1)[:, 0]).shape == (3, 1, 64, 32)  # (B, 3, H, W) accepted too
    assert tiny.num_latent_frames(1) == 1 and tiny.num_latent_frames(9) == 3 and tiny.num_frames(3) == 9


def test_bad_inputs_raise_clear_errors(tiny):
    with pytest.raises(RepwamError, match=r"got T=6 frames; RepViTok accepts T = 1 \+ 4k frames \(1, 5, 9"):
        tiny.encode(clip(1, 6))
    with pytest.raises(RepwamError, match=r"accepts \(B, T, 3, 64, 64\)"):
        tiny.encode(clip(1, 5, size=32))
    with pytest.raises(RepwamError, match="decoder accepts"):
        tiny.decode(torch.zeros(1, 2, 64, 16))


# ---- training signal ----


def smooth_clips(b, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b * t, 3, 8, 8, generator=g) * 2 - 1
    up = torch.nn.functional.interpolate(low, size=(64, 64), mode="bicubic", align_corners=False)
    return up.clamp(-1, 1).view(b, t, 3, 64, 64)


def test_round_trip_overfits_tiny_batch():
    torch.manual_seed(0)
    model = RepViTok(TokenizerConfig.preset("tiny"))
    x = smooth_clips(2, 5)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    t0, losses = time.time(), []
    for _ in range(200):
        recon, _ = model(x)
        loss = (recon - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"L1 {losses[0]:.3f} -> {losses[-1]:.3f} in {time.time() - t0:.1f}s")
    assert losses[-1] < 0.4 * losses[0]


# ---- losses ----


@pytest.fixture(scope="module")
def perceptual():
    return PerceptualLoss()


def test_perceptual_loss_zero_on_identity_and_grad_to_input_only(perceptual):
    x = clip(2, 1)[:, 0]
    y = clip(2, 1, seed=5)[:, 0]
    assert perceptual(x, x).item() == 0.0
    x = x.clone().requires_grad_(True)
    d = perceptual(x, y)
    assert d.item() > 0
    d.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in perceptual.parameters())
    perceptual.train()
    assert not perceptual.net.training
    # clips (B, T, 3, H, W) are accepted too
    assert perceptual(clip(1, 5), clip(1, 5, seed=1)).item() > 0


def test_align_loss_scale_and_cosine():
    torch.manual_seed(0)
    z = torch.randn(2, 2, 64, 32)
    targets = 5 + 4 * torch.randn(2, 2, 64, 112)  # raw teacher scale is irrelevant after LayerNorm
    head = AlignHead(32, 112)
    torch.nn.init.zeros_(head.proj.weight)
    torch.nn.init.zeros_(head.proj.bias)
    assert abs(align_loss(z, targets, head).item() - 1.0) < 1e-3
    # a head that reproduces the normalised targets: loss 0, cosine 1
    normed = torch.nn.functional.layer_norm(targets, (112,))
    sol = torch.linalg.lstsq(z.reshape(-1, 32), normed.reshape(-1, 112)).solution  # (32, 112)
    fit = torch.nn.Linear(32, 112, bias=False)
    with torch.no_grad():
        fit.weight.copy_(sol.T)
    assert teacher_cosine(z, targets, fit) < 1.0  # random z cannot explain random targets
    exact = lambda zz: normed  # noqa: E731
    assert align_loss(z, targets, exact).item() < 1e-10
    assert abs(teacher_cosine(z, targets, exact).item() - 1.0) < 1e-5
    with pytest.raises(RepwamError, match="teacher targets are"):
        align_loss(z, targets[..., :10], head)


def test_tokenizer_loss_components():
    torch.manual_seed(0)
    model = RepViTok(TokenizerConfig.preset("tiny"))
    head = AlignHead(32, 112)
    x = clip(1, 5)
    recon, z = model(x)
    targets = torch.randn(1, 2, 64, 112)
    full = TokenizerLoss(gan=0.1)
    out = full(recon, x, z, targets, head)
    assert set(out) == {"l1", "perceptual", "gan", "align", "loss"}
    expected = out["l1"] + out["perceptual"] + 0.1 * out["gan"] + out["align"]
    assert torch.allclose(out["loss"], expected)
    out["loss"].backward()
    assert head.proj.weight.grad is not None and model.patch_embed.image_proj.weight.grad is not None
    assert full.discriminator_loss(recon, x).item() > 0
    vitok = TokenizerLoss(align=0, perceptual=0)  # reconstruction-only ablation needs no teacher
    assert set(vitok(recon, x)) == {"l1", "loss"}
    with pytest.raises(RepwamError, match="align=0"):
        TokenizerLoss(perceptual=0)(recon, x)
    with pytest.raises(RepwamError, match="no discriminator"):
        vitok.discriminator_loss(recon, x)


def test_conv_stem_keeps_shapes_causality_and_errors():
    """conv_stem = k: k stride-2 convs per frame before a patch_size / 2^k projection: the same latent grid, still
    causal across latent frames; a patch size the stem cannot divide is refused."""
    torch.manual_seed(0)
    model = RepViTok(TokenizerConfig.preset("tiny", conv_stem=2)).eval()
    assert model.patch_embed.image_proj.kernel_size == (2, 2) and model.patch_embed.image_proj.in_channels == 64
    x = clip(1, 9)
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (1, 3, 64, 32) and model.decode(z).shape == x.shape
        x2 = x.clone()
        x2[:, 5:] = clip(1, 4, seed=1)
        z2 = model.encode(x2)
    assert torch.allclose(z[:, :2], z2[:, :2], atol=1e-5) and (z[:, 2] - z2[:, 2]).abs().max() > 1e-2
    with pytest.raises(RepwamError, match="conv_stem=4 needs patch_size=8 divisible by 2\\^4"):
        TokenizerConfig.preset("tiny", conv_stem=4)
