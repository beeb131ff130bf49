"""`repwam train lat`: the latent action tokenizer on the cached, frozen latents of one tokenizer checkpoint.

The LAT names its tokenizer by checkpoint; its latents are read from `<data>/cache/latents/<tokenizer weights hash>/`
(encoded first if missing), and the LAT checkpoint records that tokenizer (path and weights hash) as its parent, its
data split, and the mean/std of ℓ over its training transitions (the WAM normalises ℓ with them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from repwam.data.dataset import split_spec
from repwam.errors import RepwamError
from repwam.eval.lat import forward_errors
from repwam.lat.data import LatentClips, ell_stats
from repwam.lat.model import LATConfig, LatentActionTokenizer
from repwam.tokenizer.tokenize import load_tokenizer, tokenize_dataset, tokenizer_ref
from repwam.train.trainer import OptimConfig, Stage, run_stage, val_subset


@dataclass
class LATTrainConfig:
    tokenizer: str = ""  # the tokenizer checkpoint whose latents the LAT learns on
    preset: str = "tiny"
    quantizer: str | None = None  # None: continuous ℓ (the method); "fsq" / "vq": the LAPA-style baseline
    action_dim: int = 4
    pool: str = "attn"
    action_reg: float = 0.0  # weight of mean ℓ² (bounds ℓ's scale; continuous ℓ only)
    clip_frames: int = 3  # latent frames per training clip (clip_frames - 1 transitions)
    val_fraction: float = 0.1
    split_seed: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=1500, batch_size=64, lr=1e-3, warmup=100))


class LATStage(Stage):
    name = "lat"

    def __init__(self, cfg: LATTrainConfig, data: list[str | Path], progress: bool = True):
        if not cfg.tokenizer:
            raise RepwamError("name the tokenizer checkpoint whose latents to train on (--tokenizer CHECKPOINT)")
        self.cfg, self.data = cfg, [str(d) for d in data]
        self.tokenizer = tokenizer_ref(load_tokenizer(cfg.tokenizer))
        for root in data:  # a no-op when the latents are cached
            tokenize_dataset(cfg.tokenizer, root, progress=progress)
        h = self.tokenizer["weights_hash"]
        common = dict(val_fraction=cfg.val_fraction, split_seed=cfg.split_seed)
        self.train_set = LatentClips(data, h, clip_frames=cfg.clip_frames, split="train", **common)
        self.val_set = LatentClips(data, h, clip_frames=2, split="val", **common)
        self.stats_set = LatentClips(data, h, clip_frames=2, split="train", **common)
        L, d = self.train_set.latent_shape
        grid = self.train_set.meta.get("latent_grid")  # several views: one taller grid (V h, w)
        lat_cfg = LATConfig.preset(cfg.preset, latent_dim=d, num_tokens=L, action_dim=cfg.action_dim,
                                   quantizer=cfg.quantizer, pool=cfg.pool, action_reg=cfg.action_reg,
                                   grid=tuple(grid) if grid else None)
        self.model = LatentActionTokenizer(lat_cfg)
        self.split = split_spec(self.train_set.datasets, cfg.val_fraction, cfg.split_seed)

    def collate_fn(self, items):
        return {"z": torch.stack([it["z"] for it in items])}

    def loss(self, batch):
        return self.model.loss(batch["z"])

    def validate(self, model):
        return forward_errors(model, val_subset(self.val_set, 4 * self.cfg.optim.val_items, seed=1))

    def checkpoint_meta(self, model):
        meta = self.train_set.meta
        return {
            "parents": {"tokenizer": self.tokenizer},
            "teacher": meta.get("teacher"),
            "tokenizer": meta["tokenizer"],
            "frame_stride": self.train_set.stride,
            "temporal_patch": self.train_set.tp,
            "data": self.data,
            "split": self.split,
            "ell_stats": ell_stats(model, self.stats_set),
        }


def train_lat(cfg: LATTrainConfig, data: list[str | Path], out: str | Path, *, resume: bool = False,
              progress: bool = True) -> Path:
    return run_stage(lambda: LATStage(cfg, data, progress=progress), cfg, "train lat", data, out, resume=resume,
                     progress=progress)


CONFIG = LATTrainConfig
RECIPES = {
    "default": LATTrainConfig(),  # continuous 4-d ℓ (the method)
    "reg": LATTrainConfig(action_reg=1e-2),  # with the ℓ-scale regulariser
    "fsq": LATTrainConfig(quantizer="fsq"),  # the LAPA-style quantized baseline
}
train = train_lat
