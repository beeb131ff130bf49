"""`repwam train tokenizer`: train RepViTok (aligned to a frozen teacher) or its reconstruction-only ablation.

Teacher features are computed once per dataset, resized to the latent grid, and cached
(`<dataset>/cache/teacher/<teacher>-<layer>-<grid>/`), so training never runs the teacher.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from repwam.cache import ShardedCache, cache_dir
from repwam.checkpoint import load_into, read_config
from repwam.data.dataset import ClipDataset, frames_from_model, frames_to_model
from repwam.data.lerobot import LeRobotDataset
from repwam.errors import RepwamError
from repwam.tokenizer.losses import AlignHead, TokenizerLoss
from repwam.tokenizer.model import RepViTok, TokenizerConfig
from repwam.tokenizer.teachers import Teacher, build_teacher, build_teacher_from_spec, teacher_spec, teacher_targets
from repwam.train.common import OptimConfig, Run, cosine_schedule, infinite, seed_everything

CHECKPOINT_TYPE = "repwam.tokenizer"


@dataclass
class TokenizerTrainConfig:
    preset: str = "tiny"
    teacher: str = "efficientnet-lite0"  # "none": the reconstruction-only ablation (ViTok)
    teacher_layer: str | None = None
    teacher_path: str | None = None
    teacher_input_size: int | None = None  # frames are resized to this before the teacher (None: its default)
    num_frames: int = 5  # T = 1 + 4k raw frames per clip
    frame_stride: int = 1
    l1_weight: float = 1.0
    perceptual_weight: float = 1.0
    perceptual_frames: int | None = 1  # random frames per clip that get the perceptual term (None: all)
    gan_weight: float = 0.0
    align_weight: float = 1.0
    val_fraction: float = 0.1
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=3000, batch_size=16, lr=4e-4))


# ---------------------------------------------------------------------------------------- teacher cache
def teacher_cache(root: str | Path, teacher: Teacher, latent_grid: tuple[int, int], batch: int = 128) -> torch.Tensor:
    """Teacher features of every frame of a dataset on the latent grid: (num_frames, L, C) float16.

    Computed once and cached as safetensors shards (one per episode batch); an interrupted run resumes.
    """
    ds = LeRobotDataset(root)
    spec = teacher_spec(teacher)
    size = f"-in{spec['input_size']}" if spec.get("input_size") else ""
    name = f"{spec['name']}-{spec.get('layer') or 'default'}{size}-{latent_grid[0]}x{latent_grid[1]}"
    cache = ShardedCache(cache_dir(ds.root, "teacher", name))
    meta = {"teacher": spec, "latent_grid": list(latent_grid), "num_frames": ds.num_frames, "camera": ds.camera_keys[0]}
    if not (cache.exists() and cache.meta == meta):
        done = cache.start(meta)
        todo = [e for e in range(ds.num_episodes) if f"episode_{e:06d}" not in done]
        for start in tqdm(range(0, len(todo), 8), desc=f"teacher {spec['name']} features", unit="8 ep"):
            shard = {}
            for e in todo[start : start + 8]:
                frames = torch.from_numpy(ds.episode_frames(e, ds.camera_keys[0])).permute(0, 3, 1, 2)
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


# ---------------------------------------------------------------------------------------- loading
def load_tokenizer(path: str | Path, with_align_head: bool = False):
    """A trained tokenizer from its checkpoint directory -> (model in eval mode, config dict[, align head])."""
    cfg = read_config(path)
    if cfg.get("type") != CHECKPOINT_TYPE:
        raise RepwamError(f"{path} is not a tokenizer checkpoint (type {cfg.get('type')!r})")
    model = load_into(RepViTok(TokenizerConfig.from_dict(cfg["tokenizer"])), path).eval()
    if not with_align_head:
        return model, cfg
    head = None
    if cfg.get("teacher_dim"):
        head = load_into(AlignHead(model.cfg.latent_dim, cfg["teacher_dim"]), path, "align_head").eval()
    return model, cfg, head


def clip_psnr(recon: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per clip of (B, T, 3, H, W) tensors in [-1, 1] (recon clamped to the range) -> (B,)."""
    mse = ((recon.clamp(-1, 1) - frames) / 2).square().flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def recon_grid(frames: torch.Tensor, recon: torch.Tensor, n: int = 4) -> np.ndarray:
    """Rows: clip; columns: frames then reconstructions. uint8 (H', W', 3)."""
    f, r = frames_from_model(frames[:n]), frames_from_model(recon[:n])  # (n, T, 3, H, W)
    rows = [torch.cat([torch.cat(list(f[i]), 2), torch.cat(list(r[i]), 2)], 2) for i in range(len(f))]
    return torch.cat(rows, 1).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------------------------- training
def train_tokenizer(cfg: TokenizerTrainConfig, data: list[str | Path], out: str | Path, *, resume: bool = False,
                    progress: bool = True) -> Path:
    """Train and return the path of the last checkpoint."""
    o = cfg.optim
    seed_everything(o.seed)
    tok_cfg = TokenizerConfig.preset(cfg.preset)
    model = RepViTok(tok_cfg)
    teacher = None
    if cfg.teacher != "none" and cfg.align_weight > 0:
        kw = {k: v for k, v in (("layer", cfg.teacher_layer), ("path_or_id", cfg.teacher_path),
                                ("input_size", cfg.teacher_input_size)) if v is not None}
        teacher = build_teacher(cfg.teacher, **kw)
    grid = model.latent_grid

    train_set = ClipDataset(data, num_frames=cfg.num_frames, frame_stride=cfg.frame_stride, split="train",
                            val_fraction=cfg.val_fraction, progress=progress)
    val_set = ClipDataset(data, num_frames=cfg.num_frames, frame_stride=cfg.frame_stride, split="val",
                          val_fraction=cfg.val_fraction, clip_step=8, progress=progress)
    if train_set.image_size != (tok_cfg.image_size, tok_cfg.image_size):
        raise RepwamError(
            f"the data has {train_set.image_size} images but preset {cfg.preset!r} expects "
            f"{tok_cfg.image_size}x{tok_cfg.image_size}; regenerate with --image-size {tok_cfg.image_size} or pick another preset"
        )
    align_head, spec = None, {"name": "none"}
    if teacher is not None:
        spec = teacher_spec(teacher)
        feats = [teacher_cache(root, teacher, grid) for root in data]
        train_set.attach("teacher", feats)
        val_set.attach("teacher", feats)
        align_head = AlignHead(tok_cfg.latent_dim, teacher.dim)
        del teacher  # training never runs it again
    loss_fn = TokenizerLoss(rec_l1=cfg.l1_weight, perceptual=cfg.perceptual_weight, gan=cfg.gan_weight,
                            align=cfg.align_weight if align_head is not None else 0.0,
                            perceptual_frames=cfg.perceptual_frames)

    params = list(model.parameters()) + (list(align_head.parameters()) if align_head is not None else [])
    opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=(0.9, 0.95))
    sched = cosine_schedule(opt, o.warmup, o.steps)
    modules = [model] + ([align_head] if align_head is not None else [])
    d_opt = None
    if loss_fn.discriminator is not None:
        d_opt = torch.optim.AdamW(loss_fn.discriminator.parameters(), lr=o.lr, betas=(0.5, 0.9))
        modules.append(loss_fn.discriminator)

    run_config = {"type": "train-tokenizer", **asdict(cfg), "data": [str(d) for d in data]}
    run = Run(out, run_config, resume=resume)
    step = run.resume(opt, sched, *modules)
    ckpt_config = {
        "type": CHECKPOINT_TYPE,
        "tokenizer": tok_cfg.to_dict(),
        "teacher": spec,
        "teacher_dim": align_head.proj.out_features if align_head is not None else None,
        "num_frames": cfg.num_frames,
        "frame_stride": cfg.frame_stride,
        "align_weight": cfg.align_weight if align_head is not None else 0.0,
        "data": [str(d) for d in data],
    }
    extras = {"align_head": align_head} if align_head is not None else {}

    loader = torch.utils.data.DataLoader(train_set, batch_size=o.batch_size, shuffle=True, drop_last=True,
                                         num_workers=o.num_workers, persistent_workers=o.num_workers > 0)
    batches = infinite(loader)
    model.train()
    bar = tqdm(total=o.steps, initial=step, desc="train tokenizer", disable=not progress)
    last = None
    while step < o.steps:
        batch = next(batches)
        x = frames_to_model(batch["frames"])  # (B, T, 3, H, W) in [-1, 1]
        targets = clip_targets(batch["teacher"], grid) if align_head is not None else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=o.bf16):
            recon, z = model(x)
            losses = loss_fn(recon.float(), x, z.float(), targets, align_head)
        run.check_finite(step, losses)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
        opt.step()
        sched.step()
        if d_opt is not None:
            d_opt.zero_grad(set_to_none=True)
            loss_fn.discriminator_loss(recon.float(), x).backward()
            d_opt.step()
        step += 1
        bar.update(1)
        if step % o.log_every == 0 or step == o.steps:
            scalars = {f"train/{k}": float(v.detach()) for k, v in losses.items()}
            scalars.update({"train/grad_norm": float(gnorm), "train/lr": sched.get_last_lr()[0]})
            run.log(step, scalars)
            bar.set_postfix(loss=f"{float(losses['loss'].detach()):.4f}", l1=f"{float(losses['l1'].detach()):.4f}")
        if step % o.image_every == 0 or step == o.steps:
            run.log_image(step, "recon", recon_grid(x.detach(), recon.detach().float()))
        if step % o.save_every == 0 or step == o.steps:
            run.log(step, validate(model, val_set, align_head, grid, batch_size=o.batch_size))
            model.train()
            last = run.save(step, ckpt_config, model, extras, opt, sched, modules, keep=o.keep_snapshots)
    bar.close()
    run.close()
    return last or Path(out) / "checkpoints" / "last"


@torch.no_grad()
def validate(model: RepViTok, val_set: ClipDataset, align_head, grid, batch_size: int = 16, max_batches: int = 8) -> dict:
    """Validation L1, PSNR and (when aligned) teacher cosine on held-out episodes."""
    from repwam.tokenizer.losses import teacher_cosine

    model.eval()
    loader = torch.utils.data.DataLoader(val_set, batch_size=batch_size, shuffle=False)
    l1s, psnrs, coss = [], [], []
    for i, batch in enumerate(loader):
        if i == max_batches:
            break
        x = frames_to_model(batch["frames"])
        recon, z = model(x)
        l1s.append(float((recon - x).abs().mean()))
        psnrs.append(float(clip_psnr(recon, x).mean()))
        if align_head is not None:
            coss.append(float(teacher_cosine(z, clip_targets(batch["teacher"], grid), align_head)))
    out = {"val/l1": float(np.mean(l1s)), "val/psnr": float(np.mean(psnrs))}
    if coss:
        out["val/teacher_cosine"] = float(np.mean(coss))
    return out
