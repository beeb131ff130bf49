"""Artefacts a tokenizer derives from a dataset, cached beside it, and loading any tokenizer checkpoint.

- Teacher features (for training): every frame's frozen-teacher features on the latent grid,
  `<dataset>/cache/teacher/<teacher>-<layer>-in<size>-<grid>/`.
- Visual latents (for the LAT and the WAM): every episode encoded in one causal pass,
  `<dataset>/cache/latents/<tokenizer weights hash>/`. The cache is keyed by a hash of the weights that made it,
  never by a directory name, so two runs cannot collide and a later stage can check where its latents came from.

Whole-episode encoding uses the attention window the tokenizer was trained with (`cfg.attn_window`; checkpoints
from before that field fall back to the training clip's latent frames). With rotary (relative) temporal positions
every latent frame then sees the context geometry it saw in training; the streaming encoder of the policy gives
the same latents frame by frame. Frames are padded by repeating the last one up to 1 + 4k; `valid_<e>` records
how many (strided) frames are real.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm import tqdm

from repwam.cache import ShardedCache, cache_dir
from repwam.checkpoint import read_config
from repwam.data.dataset import frames_to_model
from repwam.data.lerobot import LeRobotDataset
from repwam.errors import RepwamError
from repwam.tokenizer.teachers import Teacher, teacher_spec, teacher_targets

# ---------------------------------------------------------------------------------------- loading
def load_tokenizer(path: str | Path, **overrides):
    """Any tokenizer checkpoint (RepViTok or the conventional video VAE) in eval mode, with `checkpoint_meta`."""
    from repwam.tokenizer.frozen import FrozenTeacherTokenizer
    from repwam.tokenizer.model import RepViTok
    from repwam.tokenizer.vae import CausalVAE

    classes = {c.checkpoint_type: c for c in (RepViTok, CausalVAE, FrozenTeacherTokenizer)}
    kind = read_config(path).get("type")
    if kind not in classes:
        raise RepwamError(f"{path} is a {kind!r} checkpoint, not a visual tokenizer (one of {sorted(classes)})")
    model = classes[kind].from_pretrained(path, **overrides)
    if getattr(model.cfg, "attn_window", "absent") is None and "num_frames" in model.checkpoint_meta:
        # trained before the window was a training setting: encode with the training clip's context
        window = model.num_latent_frames(int(model.checkpoint_meta["num_frames"]))
        model = type(model).from_pretrained(path, **{"attn_window": window, **overrides})
    return model


def load_parent_tokenizer(ref: dict, child: str | Path):
    """The tokenizer a child checkpoint (LAT, WAM) names as its parent ({path, weights_hash}), checked to still have
    those weights."""
    model = load_tokenizer(ref["path"])
    if model.checkpoint_meta["weights_hash"] != ref["weights_hash"]:
        raise RepwamError(f"the tokenizer at {ref['path']} has weights {model.checkpoint_meta['weights_hash']}, not the "
                          f"{ref['weights_hash']} that {child} was trained on")
    return model


def load_align_head(path: str | Path):
    """The trained W_align of an aligned tokenizer checkpoint, or None."""
    from repwam.checkpoint import load_into
    from repwam.tokenizer.losses import AlignHead

    cfg = read_config(path)
    if not cfg.get("teacher_dim"):
        return None
    latent_dim = cfg[{"repwam.tokenizer": "tokenizer", "repwam.vae": "vae"}[cfg["type"]]]["latent_dim"]
    return load_into(AlignHead(latent_dim, cfg["teacher_dim"]), path, "align_head").eval()


def tokenizer_ref(model) -> dict:
    """How a child checkpoint or cache names its tokenizer: type, path and weights hash."""
    meta = model.checkpoint_meta
    return {"type": meta["type"], "path": meta["path"], "weights_hash": meta["weights_hash"]}


# ---------------------------------------------------------------------------------------- teacher features
def teacher_cache(root: str | Path, teacher: Teacher, latent_grid: tuple[int, int], batch: int = 128,
                  progress: bool = True, camera: str | None = None) -> torch.Tensor:
    """Teacher features of every frame of one camera (default: the first) on the latent grid: (num_frames, L, C)
    float16.

    Computed once and cached as safetensors shards (one per episode batch); an interrupted run resumes.
    """
    ds = LeRobotDataset(root)
    camera = camera or ds.camera_keys[0]
    if camera not in ds.camera_keys:
        raise RepwamError(f"{ds.root} has no camera {camera!r}; it has {ds.camera_keys}")
    spec = teacher_spec(teacher)
    size = f"-in{spec['input_size']}" if spec.get("input_size") else ""
    view = "" if camera == ds.camera_keys[0] else f"-{camera.removeprefix('observation.images.')}"
    name = f"{spec['name']}-{spec.get('layer') or 'default'}{size}-{latent_grid[0]}x{latent_grid[1]}{view}"
    cache = ShardedCache(cache_dir(ds.root, "teacher", name))
    meta = {"teacher": spec, "latent_grid": list(latent_grid), "num_frames": ds.num_frames, "camera": camera}
    with cache.lock():
        if not (cache.exists() and cache.meta == meta):
            done = cache.start(meta)
            todo = [e for e in range(ds.num_episodes) if f"episode_{e:06d}" not in done]
            for start in tqdm(range(0, len(todo), 8), desc=f"teacher {spec['name']} features", unit="8 ep",
                              disable=not progress):
                shard = {}
                for e in todo[start : start + 8]:
                    frames = torch.from_numpy(ds.episode_frames(e, camera)).permute(0, 3, 1, 2)
                    feats = []
                    with torch.no_grad():
                        for i in range(0, len(frames), batch):
                            f = teacher(frames_to_model(frames[i : i + batch]))  # (n, C, h, w)
                            feats.append(teacher_targets(f[:, None], latent_grid)[:, 0])  # (n, L, C)
                    shard[f"episode_{e:06d}"] = torch.cat(feats).half()
                cache.add_shard(shard)
            cache.finish()
    entries = cache.load()
    out = torch.cat([entries[f"episode_{e:06d}"] for e in range(ds.num_episodes)])
    if len(out) != ds.num_frames:
        raise RepwamError(f"teacher cache {cache.path} has {len(out)} frames but {ds.root} has {ds.num_frames}")
    return out


def clip_targets(per_frame: torch.Tensor, latent_grid: tuple[int, int], temporal_patch: int = 4) -> torch.Tensor:
    """Cached per-frame features (B, T, L, C) -> targets (B, T', L, C): mean over the frames of each latent frame."""
    b, t, _, c = per_frame.shape
    maps = per_frame.float().transpose(2, 3).reshape(b, t, c, *latent_grid)
    return teacher_targets(maps, latent_grid, temporal_patch)


# ---------------------------------------------------------------------------------------- latents
def latent_cache(root: str | Path, tokenizer_hash: str) -> ShardedCache:
    return ShardedCache(cache_dir(LeRobotDataset(root).root, "latents", tokenizer_hash))


def encode_episode(model, frames_uint8: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Frames (n, 3, H, W) uint8 of one episode -> (z (T', L, d_v), n): padded by repeating the last frame."""
    tp = model.cfg.temporal_patch
    n = len(frames_uint8)
    pad = 1 + tp * math.ceil((n - 1) / tp) - n
    if pad:
        frames_uint8 = torch.cat([frames_uint8, frames_uint8[-1:].expand(pad, *frames_uint8.shape[1:])])
    return model.encode(frames_to_model(frames_uint8)[None])[0], n


def latent_cameras(model, ds: LeRobotDataset) -> list[str]:
    """The views a tokenizer's latents hold, in order: the cameras it was trained on (older checkpoints: the data's
    first camera). A dataset without one of them is a clear error."""
    cams = list(model.checkpoint_meta.get("cameras") or [ds.camera_keys[0]])
    missing = [c for c in cams if c not in ds.camera_keys]
    if missing:
        raise RepwamError(f"the tokenizer was trained on cameras {cams} but {ds.root} has no {missing}; it has "
                          f"{ds.camera_keys}")
    return cams


def multiview_grid(grid: tuple[int, int], num_views: int) -> tuple[int, int]:
    """The latent grid of V views stacked as one taller grid: (V h, w). Tokens are view-major (view 0's h w first)."""
    return (num_views * grid[0], grid[1])


def tokenize_dataset(checkpoint: str | Path, root: str | Path, *, progress: bool = True,
                     episodes_per_shard: int = 16) -> ShardedCache:
    """Encode every episode of `root` with the tokenizer at `checkpoint` into its latent cache (resumable).

    With several cameras each view is encoded with the same weights and the views' tokens are concatenated per
    latent frame, view-major: z (T', V L, d_v) on the grid (V h, w) (`multiview_grid`)."""
    model = load_tokenizer(checkpoint)
    ds = LeRobotDataset(root)
    cams = latent_cameras(model, ds)
    stride = int(model.checkpoint_meta.get("frame_stride", 1))
    ref = tokenizer_ref(model)
    cache = latent_cache(root, ref["weights_hash"])
    meta = {
        "tokenizer_hash": ref["weights_hash"],
        "tokenizer_type": ref["type"],
        "tokenizer": model.cfg.to_dict(),
        "teacher": model.checkpoint_meta.get("teacher"),
        "frame_stride": stride,
        "attn_window": getattr(model.cfg, "attn_window", None),
        "temporal_patch": model.cfg.temporal_patch,
        "num_episodes": ds.num_episodes,
        "num_frames": ds.num_frames,
        "camera": cams[0],
        "cameras": cams,
        "latent_grid": list(multiview_grid(model.latent_grid, len(cams))),
    }
    defaults = type(model.cfg)().to_dict()
    if cache.exists() and _same(cache.meta, meta, defaults):
        return cache
    with cache.lock():
        if cache.exists() and _same(cache.meta, meta, defaults):  # another process made it while we waited
            return cache
        done = cache.start({**meta, "checkpoint": ref["path"]})
        todo = [e for e in range(ds.num_episodes) if f"episode_{e:06d}" not in done]
        with torch.no_grad():
            for start in tqdm(range(0, len(todo), episodes_per_shard), desc="tokenize",
                              unit=f"{episodes_per_shard} ep", disable=not progress):
                shard = {}
                for e in todo[start : start + episodes_per_shard]:
                    views = []
                    for cam in cams:
                        frames = torch.from_numpy(ds.episode_frames(e, cam)[::stride]).permute(0, 3, 1, 2)
                        z, n = encode_episode(model, frames)  # (T', L, d_v)
                        views.append(z)
                    shard[f"episode_{e:06d}"] = torch.cat(views, dim=1).float()  # (T', V L, d_v)
                    shard[f"valid_{e:06d}"] = torch.tensor([n])
                cache.add_shard(shard)
        cache.finish()
    return cache


def _same(cached: dict, meta: dict, cfg_defaults: dict) -> bool:
    """The cache holds these latents (the checkpoint path may differ: a copied checkpoint has the same weights). A
    tokenizer setting the cache does not record (made before the option existed) counts as its default."""
    cached = {k: v for k, v in cached.items() if k != "checkpoint"}
    if isinstance(cached.get("tokenizer"), dict):
        cached["tokenizer"] = {**cfg_defaults, **cached["tokenizer"]}
    return cached == meta


def load_latents(root: str | Path, tokenizer_hash: str, *, what: str = "this stage",
                 expected_from: str | None = None) -> tuple[list[torch.Tensor], list[int], dict]:
    """Cached latents of every episode made by the tokenizer with weights `tokenizer_hash`:
    (list of z (T'_ep, L, d_v), list of valid strided frame counts, meta)."""
    ds = LeRobotDataset(root)
    cache = latent_cache(root, tokenizer_hash)
    if not cache.exists():
        hint = f"--checkpoint {expected_from}" if expected_from else "--checkpoint <the tokenizer>"
        raise RepwamError(
            f"{root} has no latents of tokenizer {tokenizer_hash} ({what} needs them); run `repwam tokenize {hint} "
            f"--data {root}` first"
        )
    meta = cache.meta
    if meta.get("tokenizer_hash") != tokenizer_hash:
        raise RepwamError(f"latent cache {cache.path} says it was made by tokenizer {meta.get('tokenizer_hash')}, "
                          f"not {tokenizer_hash}; delete it to rebuild")
    if meta.get("num_episodes") != ds.num_episodes:
        raise RepwamError(f"latent cache {cache.path} has {meta.get('num_episodes')} episodes but {root} has "
                          f"{ds.num_episodes}; delete it to rebuild")
    entries = cache.load()
    z = [entries[f"episode_{e:06d}"] for e in range(ds.num_episodes)]
    valid = [int(entries[f"valid_{e:06d}"][0]) for e in range(ds.num_episodes)]
    return z, valid, meta


def check_same_tokenizer(expected: dict, got: dict, what: str) -> None:
    """`expected` and `got` are tokenizer refs ({type, path, weights_hash}): a clear error naming both."""
    if expected["weights_hash"] != got["weights_hash"]:
        raise RepwamError(
            f"{what} was trained on latents of tokenizer {expected.get('path')} (weights {expected['weights_hash']}) "
            f"but was given latents of tokenizer {got.get('path')} (weights {got['weights_hash']}); use the tokenizer "
            "it was trained on, or retrain it on these latents"
        )
