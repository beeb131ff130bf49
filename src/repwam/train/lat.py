"""`repwam train lat` and `repwam lat label`: the latent action tokenizer on cached, frozen visual latents.

Transitions are consecutive latent frames (a gap of one latent frame = 4 strided raw frames). Transition j spans
strided frames 4j .. 4j+4: the robot actions taken at strided frames 4j .. 4j+3 (times the frame stride in raw
steps) are what happened between z_j and z_{j+1}. Works on datasets with no `action` column (action-free video).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from repwam.cache import ShardedCache, cache_dir
from repwam.checkpoint import load_into, read_config
from repwam.data.dataset import split_episodes
from repwam.data.lerobot import LeRobotDataset
from repwam.errors import RepwamError
from repwam.lat.model import LATConfig, LatentActionTokenizer
from repwam.tokenizer.tokenize import check_latents_match, load_latents
from repwam.train.common import OptimConfig, Run, cosine_schedule, infinite, seed_everything

CHECKPOINT_TYPE = "repwam.lat"


@dataclass
class LATTrainConfig:
    preset: str = "tiny"
    latents: str = ""  # latent cache name (<data>/cache/latents/<name>), written by `repwam tokenize`
    quantizer: str | None = None  # None: continuous ℓ (the method); "fsq" / "vq": the LAPA-style baseline
    action_dim: int = 4
    pool: str = "attn"
    clip_frames: int = 3  # latent frames per training clip (clip_frames - 1 transitions)
    val_fraction: float = 0.1
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=3000, batch_size=64, lr=1e-3, warmup=100))


class LatentClips(torch.utils.data.Dataset):
    """Clips of `clip_frames` consecutive valid latent frames from cached episode latents, with the robot actions
    of each transition when the dataset has them.

    Item: z (clip_frames, L, d_v); action (clip_frames - 1, 4 * stride, A) and episode, start.
    """

    def __init__(self, roots: list[str | Path], latents: str, *, clip_frames: int = 2, split: str = "all",
                 val_fraction: float = 0.1, split_seed: int = 0):
        self.datasets = [LeRobotDataset(r) for r in roots]
        self.latents, self.valid, self.meta = [], [], None
        for root in roots:
            zs, valid, meta = load_latents(root, latents)
            if self.meta is not None and meta["tokenizer"] != self.meta["tokenizer"]:
                check_latents_match(meta, self.meta["tokenizer"], f"the latents of {roots[0]}")
            self.meta = meta
            self.latents.append(zs)
            self.valid.append(valid)
        self.stride, self.tp = int(self.meta["frame_stride"]), int(self.meta["temporal_patch"])
        self.clip_frames = clip_frames
        self.has_actions = all("action" in ds.features for ds in self.datasets)
        self.actions = {}
        self.index = []
        for d, e in split_episodes(self.datasets, split, val_fraction, split_seed):
            n_valid_lat = 1 + (self.valid[d][e] - 1) // self.tp  # latent frames whose frames are all real
            if self.has_actions:
                self.actions[(d, e)] = np.asarray(self.datasets[d].episode_data(e)["action"], np.float32)
            for s in range(0, n_valid_lat - clip_frames + 1):
                self.index.append((d, e, s))
        if not self.index:
            raise RepwamError(f"no clip of {clip_frames} latent frames in the {split} episodes")

    @property
    def latent_shape(self) -> tuple[int, int]:
        z = self.latents[0][0]
        return int(z.shape[1]), int(z.shape[2])

    def transition_actions(self, d: int, e: int, j: int) -> np.ndarray:
        """Raw actions between latent frames j and j+1: (4 * stride, A)."""
        act = self.actions[(d, e)]
        lo = self.tp * j * self.stride
        rows = np.minimum(np.arange(lo, lo + self.tp * self.stride), len(act) - 1)
        return act[rows]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        d, e, s = self.index[i]
        item = {"z": self.latents[d][e][s : s + self.clip_frames], "episode": e, "source": d, "start": s}
        if self.has_actions:
            item["action"] = torch.from_numpy(
                np.stack([self.transition_actions(d, e, j) for j in range(s, s + self.clip_frames - 1)])
            )
        return item


def load_lat(path: str | Path) -> tuple[LatentActionTokenizer, dict]:
    cfg = read_config(path)
    if cfg.get("type") != CHECKPOINT_TYPE:
        raise RepwamError(f"{path} is not a LAT checkpoint (type {cfg.get('type')!r})")
    return load_into(LatentActionTokenizer(LATConfig.from_dict(cfg["lat"])), path).eval(), cfg


def train_lat(cfg: LATTrainConfig, data: list[str | Path], out: str | Path, *, resume: bool = False,
              progress: bool = True) -> Path:
    o = cfg.optim
    seed_everything(o.seed)
    if not cfg.latents:
        raise RepwamError("name the latent cache to train on (--latents NAME; see `repwam tokenize`)")
    train_set = LatentClips(data, cfg.latents, clip_frames=cfg.clip_frames, split="train", val_fraction=cfg.val_fraction)
    val_set = LatentClips(data, cfg.latents, clip_frames=2, split="val", val_fraction=cfg.val_fraction)
    L, d = train_set.latent_shape
    lat_cfg = LATConfig.preset(cfg.preset, latent_dim=d, num_tokens=L, action_dim=cfg.action_dim,
                               quantizer=cfg.quantizer, pool=cfg.pool)
    model = LatentActionTokenizer(lat_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay, betas=(0.9, 0.95))
    sched = cosine_schedule(opt, o.warmup, o.steps)
    run = Run(out, {"type": "train-lat", **asdict(cfg), "data": [str(p) for p in data]}, resume=resume)
    step = run.resume(opt, sched, model)
    ckpt_config = {
        "type": CHECKPOINT_TYPE,
        "lat": lat_cfg.to_dict(),
        "latents": cfg.latents,
        "tokenizer": train_set.meta["tokenizer"],
        "tokenizer_checkpoint": train_set.meta["checkpoint"],
        "teacher": train_set.meta.get("teacher"),
        "frame_stride": train_set.stride,
        "data": [str(p) for p in data],
    }
    loader = torch.utils.data.DataLoader(train_set, batch_size=o.batch_size, shuffle=True, drop_last=True)
    batches = infinite(loader)
    bar = tqdm(total=o.steps, initial=step, desc="train lat", disable=not progress)
    last = None
    model.train()
    while step < o.steps:
        z = next(batches)["z"]
        losses = model.loss(z)
        run.check_finite(step, losses)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        sched.step()
        step += 1
        bar.update(1)
        if step % o.log_every == 0 or step == o.steps:
            run.log(step, {**{f"train/{k}": float(v.detach()) for k, v in losses.items()},
                           "train/grad_norm": float(gnorm), "train/lr": sched.get_last_lr()[0]})
            bar.set_postfix(fwd=f"{float(losses['fwd'].detach()):.4f}", copy=f"{float(losses['copy_last']):.4f}")
        if step % o.save_every == 0 or step == o.steps:
            run.log(step, {f"val/{k}": v for k, v in forward_errors(model, val_set).items()})
            model.train()
            last = run.save(step, ckpt_config, model, {}, opt, sched, [model], keep=o.keep_snapshots)
    bar.close()
    run.close()
    return last or Path(out) / "checkpoints" / "last"


@torch.no_grad()
def forward_errors(model: LatentActionTokenizer, clips: LatentClips, batch_size: int = 256) -> dict[str, float]:
    """Mean squared forward-prediction error of the FDM vs the copy-last-frame baseline on `clips`."""
    model.eval()
    fwd, copy, n = 0.0, 0.0, 0
    for batch in torch.utils.data.DataLoader(clips, batch_size=batch_size):
        z = batch["z"]
        losses = model.loss(z)
        fwd += float(losses["fwd"]) * len(z)
        copy += float(losses["copy_last"]) * len(z)
        n += len(z)
    return {"fwd_mse": fwd / n, "copy_last_mse": copy / n, "fwd_over_copy": fwd / max(copy, 1e-12)}


@torch.no_grad()
def label_dataset(checkpoint: str | Path, root: str | Path, *, latents: str | None = None, progress: bool = True) -> ShardedCache:
    """Write ℓ for every transition of every episode to `<data>/cache/latent_actions/<LAT run name>/`:
    entries episode_NNNNNN -> (T'_ep - 1, A) float32."""
    from repwam.tokenizer.tokenize import latent_cache_name

    model, cfg = load_lat(checkpoint)
    name = latents or cfg["latents"]
    zs, _, meta = load_latents(root, name)
    check_latents_match(meta, cfg["tokenizer"], f"LAT {checkpoint}")
    ds = LeRobotDataset(root)
    cache = ShardedCache(cache_dir(ds.root, "latent_actions", latent_cache_name(checkpoint)))
    cache.start({"lat_checkpoint": str(Path(checkpoint).resolve()), "latents": name, "lat": cfg["lat"]})
    shard = {}
    for e, z in enumerate(tqdm(zs, desc="label", unit="ep", disable=not progress)):
        shard[f"episode_{e:06d}"] = model(z[None])[0].float() if len(z) > 1 else torch.zeros(0, model.cfg.action_dim)
    cache.add_shard(shard)
    cache.finish()
    return cache
