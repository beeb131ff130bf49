"""RepViTok streaming encoder (per-layer KV cache, attention window) and its checkpoint round trip."""

import json

import pytest
import torch

from repwam.checkpoint import save_checkpoint
from repwam.errors import RepwamError
from repwam.tokenizer import RepViTok, TokenizerConfig

MAX_LATENT_FRAMES = 6  # longest clip compared against the whole-sequence pass


def clip(b, t, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, size, size, generator=g) * 2 - 1


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return RepViTok(TokenizerConfig.preset("tiny", **overrides)).eval()


def push_all(stream, frames, tp):
    """Push a clip (B, 1 + tp k, ...) as the first frame then tubelets; yield each returned z."""
    yield stream.push(frames[:, 0])  # (B, C, H, W) form for the first frame
    for i in range(1, frames.shape[1], tp):
        yield stream.push(frames[:, i : i + tp])


@pytest.mark.parametrize("temporal_pos,conv_stem", [("rope", 0), ("sincos", 0), ("rope", 2)])
@pytest.mark.parametrize("window", [None, 1, 2, 3])
def test_stream_equals_whole_sequence_encode(window, temporal_pos, conv_stem):
    model = tiny(attn_window=window, temporal_pos=temporal_pos, conv_stem=conv_stem)
    tp, L = model.temporal_patch, model.tokens_per_frame
    x = clip(2, model.num_frames(MAX_LATENT_FRAMES))
    stream = model.stream_encoder(batch_size=2)
    with torch.no_grad():
        for t, z_t in enumerate(push_all(stream, x, tp)):
            n_lat = t + 1
            assert z_t.shape == (2, L, model.latent_dim)
            whole = model.encode(x[:, : model.num_frames(n_lat)])  # T' = n_lat latent frames
            assert torch.allclose(z_t, whole[:, -1], atol=2e-5), f"latent frame {t}"
            held = n_lat if window is None else min(n_lat, window - 1)
            assert stream.cache_frames == held
            for cache in stream.caches:  # every encoder attention layer, the latent projection included
                size = 0 if cache.k is None else cache.k.shape[2]
                assert size == held * L and (window is None or size <= (window - 1) * L)
    assert stream.num_pushed == MAX_LATENT_FRAMES


def test_windowed_stream_runs_past_max_latent_frames_with_a_bounded_cache():
    model = tiny(attn_window=2, max_latent_frames=2)
    x = clip(1, model.num_frames(8), seed=1)
    stream = model.stream_encoder(1)
    with torch.no_grad():
        zs = torch.stack(list(push_all(stream, x, model.temporal_patch)), dim=1)
        assert stream.cache_frames == 1
        assert torch.allclose(zs, model.encode(x), atol=2e-5)
    # reset starts a new video: the first push is a single frame again and gives the same z as before
    stream.reset()
    assert stream.cache_frames == 0 and stream.num_pushed == 0
    assert torch.allclose(stream.push(x[:, :1]), zs[:, 0], atol=1e-6)


def test_stream_without_window_stops_at_max_latent_frames():
    model = tiny(max_latent_frames=2)
    x = clip(1, model.num_frames(3), seed=2)
    stream = model.stream_encoder(1)
    pushes = push_all(stream, x, model.temporal_patch)
    next(pushes), next(pushes)
    with pytest.raises(RepwamError, match="stream has 3 latent frames but max_latent_frames=2.*set attn_window"):
        next(pushes)


def test_wrong_push_raises_clear_error():
    model = tiny()
    stream = model.stream_encoder(2)
    with pytest.raises(RepwamError, match=r"first push takes the first frame: \(2, 1, 3, 64, 64\) or \(2, 3, 64, 64\)"):
        stream.push(clip(2, 5))
    with pytest.raises(RepwamError, match="stream push got frames of shape"):
        stream.push(clip(1, 1))  # wrong batch size
    with pytest.raises(RepwamError, match="stream push got frames of shape"):
        stream.push(clip(2, 1, size=32))
    stream.push(clip(2, 1))
    tubelet = r"push 1 takes the next tubelet of temporal_patch=4 frames: \(2, 4, 3, 64, 64\)"
    with pytest.raises(RepwamError, match=tubelet):
        stream.push(clip(2, 1)[:, 0])
    with pytest.raises(RepwamError, match="temporal_patch=4"):
        stream.push(clip(2, 3))
    assert stream.num_pushed == 1  # failed pushes change nothing
    with pytest.raises(RepwamError, match="batch_size"):
        model.stream_encoder(0)


# ---- checkpoints ----


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = tiny(seed=3)
    x = clip(2, 9, seed=4)
    path = model.save_pretrained(tmp_path / "tok", meta={"teacher": "efficientnet-lite0", "step": 7})
    config = json.loads((path / "config.json").read_text())
    assert config["type"] == "repwam.tokenizer" and config["tokenizer"] == model.cfg.to_dict()
    loaded = RepViTok.from_pretrained(path)
    assert not loaded.training and loaded.cfg == model.cfg
    assert loaded.checkpoint_meta["teacher"] == "efficientnet-lite0" and loaded.checkpoint_meta["step"] == 7
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), model.encode(x))


def test_from_pretrained_override_leaves_the_file_alone(tmp_path):
    model = tiny(seed=5)
    path = model.save_pretrained(tmp_path / "tok")
    before = (path / "config.json").read_bytes()
    windowed = RepViTok.from_pretrained(path, attn_window=2)
    assert windowed.cfg.attn_window == 2
    assert (path / "config.json").read_bytes() == before
    assert RepViTok.from_pretrained(path).cfg.attn_window is None
    # the override acts: with a window of 2, latent frames 0 and 1 see what they saw before, frame 2 does not
    x = clip(1, 9, seed=6)
    with torch.no_grad():
        z, zw = model.encode(x), windowed.encode(x)
    assert torch.allclose(z[:, :2], zw[:, :2], atol=1e-5)
    assert (z[:, 2] - zw[:, 2]).abs().max() > 1e-3


def test_checkpoints_written_by_the_training_loop_still_load(tmp_path):
    model = tiny(seed=8)
    cfg = {"type": "repwam.tokenizer", "tokenizer": model.cfg.to_dict(), "teacher": "efficientnet-lite0", "step": 4}
    path = save_checkpoint(tmp_path / "old", cfg, model)
    x = clip(1, 5, seed=9)
    with torch.no_grad():
        assert torch.equal(RepViTok.from_pretrained(path).encode(x), model.encode(x))
    (path / "config.json").write_text(json.dumps({**cfg, "type": "repwam.vae"}))
    with pytest.raises(RepwamError, match="is not a repwam.tokenizer checkpoint"):
        RepViTok.from_pretrained(path)
