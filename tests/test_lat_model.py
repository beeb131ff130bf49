"""Latent action tokenizer: shapes, transport map, reversed-pair consistency, overfitting, save/load, errors."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from repwam.errors import RepwamError
from repwam.lat import LatentActionTokenizer, LATConfig, copy_last_error


def shifted_clips(B: int, T: int, h: int, w: int, d: int, seed: int = 0) -> torch.Tensor:
    """Clips (B, T, h*w, d): each next frame is the previous token grid rolled by a random (dy, dx) ∈ {-1,0,1}²."""
    g = torch.Generator().manual_seed(seed)
    frames = [torch.randn(B, h, w, d, generator=g)]
    for _ in range(T - 1):
        s = torch.randint(-1, 2, (B, 2), generator=g)
        frames.append(torch.stack([frames[-1][b].roll((int(s[b, 0]), int(s[b, 1])), dims=(0, 1)) for b in range(B)]))
    return torch.stack(frames, 1).flatten(2, 3)


def check_transport(K: torch.Tensor, B: int, L: int) -> None:
    assert K.shape == (B, L, L)
    assert (K >= 0).all()
    torch.testing.assert_close(K.sum(-1), torch.ones(B, L), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pool", ["attn", "mean", "flatten"])
def test_tiny_shapes(pool):
    torch.manual_seed(0)
    cfg = LATConfig.preset("tiny", latent_dim=32, num_tokens=64, pool=pool)
    m = LatentActionTokenizer(cfg)
    z = torch.randn(2, 3, 64, 32)
    assert m(z).shape == (2, 2, 4)
    ell = m.idm(z[:, 0], z[:, 1])
    assert ell.shape == (2, 4)
    z_pred, K, delta = m.fdm(z[:, 0], ell)
    assert z_pred.shape == delta.shape == (2, 64, 32)
    check_transport(K, 2, 64)
    out = m.loss(z)
    assert {"loss", "fwd", "cons", "aux", "reg", "copy_last"} <= set(out)
    torch.testing.assert_close(out["loss"], out["fwd"] + out["cons"] + out["aux"] + out["reg"])
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())


def test_paper_shapes():
    torch.manual_seed(0)
    m = LatentActionTokenizer(LATConfig.preset("paper", latent_dim=96, num_tokens=256))
    assert (m.cfg.hidden, m.cfg.depth, m.cfg.action_dim) == (256, 4, 4)
    z = torch.randn(1, 2, 256, 96)
    assert m(z).shape == (1, 1, 4)
    z_pred, K, delta = m.fdm(z[:, 0], m.idm(z[:, 0], z[:, 1]))
    assert z_pred.shape == (1, 256, 96)
    check_transport(K, 1, 256)


def test_non_square_grid_and_fdm_options():
    torch.manual_seed(0)
    z = torch.randn(2, 2, 24, 8)
    m = LatentActionTokenizer(LATConfig.preset("tiny", latent_dim=8, num_tokens=24, grid=(4, 6), fdm_cond="concat"))
    check_transport(m.fdm(z[:, 0], torch.randn(2, 4))[1], 2, 24)
    m = LatentActionTokenizer(LATConfig.preset("tiny", latent_dim=8, num_tokens=24, fdm_transport=False))
    assert m.cfg.grid_hw == (1, 24)
    z_pred, K, delta = m.fdm(z[:, 0], torch.randn(2, 4))
    torch.testing.assert_close(K, torch.eye(24).expand(2, 24, 24))
    torch.testing.assert_close(z_pred, z[:, 0] + delta)


def test_fsq_actions_lie_on_the_grid():
    torch.manual_seed(0)
    m = LatentActionTokenizer(LATConfig.preset("tiny", latent_dim=8, num_tokens=16, quantizer="fsq"))
    z = torch.randn(3, 4, 16, 8)
    ell = m(z).reshape(-1, 4)
    codebook = m.quantizer.implicit_codebook  # (prod(levels), 4)
    dist = torch.cdist(ell, codebook).min(dim=1).values
    assert dist.max() < 1e-5


def test_vq_loss_includes_commitment():
    torch.manual_seed(0)
    m = LatentActionTokenizer(LATConfig.preset("tiny", latent_dim=8, num_tokens=16, quantizer="vq", vq_codebook_size=8))
    out = m.loss(torch.randn(2, 3, 16, 8))
    assert out["aux"] > 0
    assert out["reg"] == 0
    torch.testing.assert_close(out["loss"], out["fwd"] + out["cons"] + out["aux"])


def test_consistency_is_the_reversed_prediction(monkeypatch):
    torch.manual_seed(0)
    m = LatentActionTokenizer(LATConfig.preset("tiny", latent_dim=8, num_tokens=16))
    z = torch.randn(2, 3, 16, 8)
    z_t, z_next = z[:, :-1].reshape(4, 16, 8), z[:, 1:].reshape(4, 16, 8)
    idm_calls, fdm_calls = [], []
    idm_fwd, fdm_fwd = m.idm_net.forward, m.fdm_net.forward

    def idm_spy(a, b):
        idm_calls.append((a, b, idm_fwd(a, b)))
        return idm_calls[-1][2]

    def fdm_spy(a, ell):
        fdm_calls.append((a, ell, fdm_fwd(a, ell)))
        return fdm_calls[-1][2]

    monkeypatch.setattr(m.idm_net, "forward", idm_spy)
    monkeypatch.setattr(m.fdm_net, "forward", fdm_spy)
    out = m.loss(z)
    assert len(idm_calls) == len(fdm_calls) == 2
    (a0, b0, ell0), (a1, b1, ell1) = idm_calls
    assert torch.equal(a0, z_t) and torch.equal(b0, z_next)  # forward pair
    assert torch.equal(a1, z_next) and torch.equal(b1, z_t)  # reversed pair
    assert torch.equal(fdm_calls[0][0], z_t) and torch.equal(fdm_calls[0][1], ell0)
    assert torch.equal(fdm_calls[1][0], z_next) and torch.equal(fdm_calls[1][1], ell1)
    torch.testing.assert_close(out["fwd"], F.mse_loss(fdm_calls[0][2][0], z_next))
    torch.testing.assert_close(out["cons"], F.mse_loss(fdm_calls[1][2][0], z_t))  # target is z_t
    assert not torch.allclose(out["fwd"], out["cons"])


def test_copy_last_baseline():
    z = torch.randn(2, 3, 16, 8)
    m = LatentActionTokenizer(LATConfig.preset("tiny", latent_dim=8, num_tokens=16))
    expected = ((z[:, 1:] - z[:, :-1]) ** 2).mean()
    torch.testing.assert_close(m.copy_last_baseline(z), expected)
    torch.testing.assert_close(copy_last_error(z), expected)


@pytest.mark.parametrize("quantizer", [None, "fsq"])
def test_overfits_shifted_latents(quantizer):
    """z_{t+1} = z_t rolled by an action-dependent offset: only transport driven by ℓ can explain it."""
    torch.manual_seed(0)
    z = shifted_clips(B=8, T=3, h=4, w=4, d=8)
    m = LatentActionTokenizer(LATConfig.preset("tiny", latent_dim=8, num_tokens=16, quantizer=quantizer))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    start = m.loss(z)
    for _ in range(150):
        out = m.loss(z)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    with torch.no_grad():
        end = m.loss(z)
    assert end["loss"] < 0.2 * start["loss"]
    assert end["fwd"] < 0.2 * end["copy_last"]


def test_generalises_to_unseen_content():
    """Trained on fresh random clips, the LAT predicts held-out shifted clips: ℓ carries motion, not content."""
    torch.manual_seed(0)
    m = LatentActionTokenizer(LATConfig.preset("tiny", latent_dim=8, num_tokens=16))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for step in range(250):
        out = m.loss(shifted_clips(B=16, T=2, h=4, w=4, d=8, seed=step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    with torch.no_grad():
        held_out = m.loss(shifted_clips(B=64, T=2, h=4, w=4, d=8, seed=10_000))
    assert held_out["fwd"] < 0.1 * held_out["copy_last"]


@pytest.mark.parametrize("quantizer", [None, "vq"])
def test_safetensors_round_trip(tmp_path, quantizer):
    torch.manual_seed(0)
    cfg = LATConfig.preset("tiny", latent_dim=8, num_tokens=16, quantizer=quantizer)
    m = LatentActionTokenizer(cfg).eval()
    save_file(m.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    torch.manual_seed(1)
    m2 = LatentActionTokenizer(LATConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))).eval()
    m2.load_state_dict(load_file(tmp_path / "model.safetensors"))
    z = torch.randn(2, 3, 16, 8)
    with torch.no_grad():
        assert torch.equal(m(z), m2(z))
        ell = m(z)[:, 0]
        for a, b in zip(m.fdm(z[:, 0], ell), m2.fdm(z[:, 0], ell)):
            assert torch.equal(a, b)


def test_config_round_trip_and_errors():
    cfg = LATConfig.preset("paper", latent_dim=96, num_tokens=256, quantizer="fsq", grid=(16, 16))
    assert LATConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(RepwamError, match="unknown LAT config keys"):
        LATConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(RepwamError, match="unknown LAT preset"):
        LATConfig.preset("huge", latent_dim=8, num_tokens=16)
    with pytest.raises(RepwamError, match="pool"):
        LATConfig(latent_dim=8, num_tokens=16, pool="max")
    with pytest.raises(RepwamError, match="grid"):
        LATConfig(latent_dim=8, num_tokens=16, grid=(3, 3))


def test_wrong_shapes_give_clear_errors():
    m = LatentActionTokenizer(LATConfig.preset("tiny", latent_dim=96, num_tokens=256))
    with pytest.raises(RepwamError, match=r"latents have L=64 tokens of dim 32, but this LAT was built for L=256, d_v=96"):
        m.loss(torch.randn(1, 2, 64, 32))
    with pytest.raises(RepwamError, match=r"L=256 tokens of dim 32"):
        m(torch.randn(1, 2, 256, 32))
    with pytest.raises(RepwamError, match=r"\(B, T', L, d_v\)"):
        m(torch.randn(2, 256, 96))
    with pytest.raises(RepwamError, match="at least 2 latent frames"):
        m(torch.randn(1, 1, 256, 96))
    with pytest.raises(RepwamError, match=r"L=64 tokens of dim 96"):
        m.idm(torch.randn(1, 64, 96), torch.randn(1, 64, 96))
    with pytest.raises(RepwamError, match="latent actions of shape"):
        m.fdm(torch.randn(1, 256, 96), torch.randn(1, 3))
