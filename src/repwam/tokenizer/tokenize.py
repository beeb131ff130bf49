"""`repwam tokenize`: the visual latents of a whole dataset, cached for the later stages (LAT, WAM).

Each episode is encoded in one causal pass at the checkpoint's frame stride. The attention window is set to the
number of latent frames the tokenizer was trained on; with rotary (relative) temporal positions, every latent
frame then sees exactly the context length it saw in training. Frames are padded by repeating the last one up to
1 + 4k; `valid_frames` records how many raw (strided) frames are real.

Cache: `<dataset>/cache/latents/<tokenizer run name>/`, entries `episode_NNNNNN` -> z (T'_ep, L, d_v) float32,
index meta: the tokenizer's config, checkpoint path, frame stride, and per-episode valid frame counts.
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


def latent_cache_name(checkpoint: str | Path) -> str:
    p = Path(checkpoint).resolve()
    return p.parent.parent.name if p.name == "last" and p.parent.name == "checkpoints" else p.name


def tokenize_dataset(checkpoint: str | Path, root: str | Path, *, name: str | None = None, progress: bool = True,
                     episodes_per_shard: int = 16) -> ShardedCache:
    from repwam.train.tokenizer import load_tokenizer

    model, cfg = load_tokenizer(checkpoint)
    ds = LeRobotDataset(root)
    tp = model.cfg.temporal_patch
    stride = int(cfg["frame_stride"])
    window = model.num_latent_frames(int(cfg["num_frames"]))
    model.cfg.attn_window = window
    cache = ShardedCache(cache_dir(ds.root, "latents", name or latent_cache_name(checkpoint)))
    meta = {
        "tokenizer": cfg["tokenizer"],
        "teacher": cfg.get("teacher"),
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_step": cfg.get("step"),
        "frame_stride": stride,
        "attn_window": window,
        "temporal_patch": tp,
        "num_episodes": ds.num_episodes,
        "camera": ds.camera_keys[0],
    }
    if cache.exists() and cache.meta == meta:
        return cache
    done = cache.start(meta)
    todo = [e for e in range(ds.num_episodes) if f"episode_{e:06d}" not in done]
    with torch.no_grad():
        for start in tqdm(range(0, len(todo), episodes_per_shard), desc="tokenize", unit=f"{episodes_per_shard} ep",
                          disable=not progress):
            shard = {}
            for e in todo[start : start + episodes_per_shard]:
                frames = torch.from_numpy(ds.episode_frames(e, ds.camera_keys[0])[::stride]).permute(0, 3, 1, 2)
                n = len(frames)
                k = math.ceil((n - 1) / tp)
                pad = 1 + tp * k - n
                if pad:
                    frames = torch.cat([frames, frames[-1:].expand(pad, *frames.shape[1:])])
                z = model.encode(frames_to_model(frames)[None])[0]  # (T', L, d_v)
                shard[f"episode_{e:06d}"] = z.float()
                shard[f"valid_{e:06d}"] = torch.tensor([n])
            cache.add_shard(shard)
    cache.finish()
    return cache


def load_latents(root: str | Path, name: str) -> tuple[list[torch.Tensor], list[int], dict]:
    """Cached latents of every episode: (list of z (T'_ep, L, d_v), list of valid strided frame counts, meta)."""
    ds = LeRobotDataset(root)
    cache = ShardedCache(cache_dir(ds.root, "latents", name))
    if not cache.exists():
        raise RepwamError(f"no latent cache {cache.path}; run `repwam tokenize --checkpoint CKPT --data {root}` first")
    entries = cache.load()
    z = [entries[f"episode_{e:06d}"] for e in range(ds.num_episodes)]
    valid = [int(entries[f"valid_{e:06d}"][0]) for e in range(ds.num_episodes)]
    return z, valid, cache.meta


def check_latents_match(meta: dict, expected_tokenizer: dict, what: str) -> None:
    """Latents from another tokenizer than `what` was built for: a clear error naming both."""
    if meta["tokenizer"] != expected_tokenizer:
        got, exp = meta["tokenizer"], expected_tokenizer
        diff = {k: (got.get(k), exp.get(k)) for k in set(got) | set(exp) if got.get(k) != exp.get(k)}
        raise RepwamError(
            f"the latents come from tokenizer {meta.get('checkpoint')} but {what} was trained on another tokenizer; "
            f"config differences (latents, {what}): {diff}"
        )
