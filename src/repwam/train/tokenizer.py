"""`repwam train tokenizer`: RepViTok aligned to a frozen teacher, its reconstruction-only ablation (teacher none),
or the conventional causal video VAE (arch vae), through the one trainer.

Teacher features are computed once per dataset, resized to the latent grid, and cached
(`<dataset>/cache/teacher/...`), so training never runs the teacher. Every batch takes one clip length from
`clip_lengths` (the longest clip is loaded and cut), so the tokenizer sees every latent-frame index up to the
longest and, with an attention window shorter than that, the sliding-window regime of whole-episode encoding.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from repwam.data.dataset import ClipDataset, frames_to_model, split_spec
from repwam.data.lerobot import LeRobotDataset, camera_key
from repwam.errors import RepwamError
from repwam.eval.metrics import clip_psnr, recon_grid
from repwam.tokenizer.losses import AlignHead, TokenizerLoss, teacher_cosine
from repwam.tokenizer.model import RepViTok, TokenizerConfig
from repwam.tokenizer.teachers import build_teacher, teacher_options, teacher_spec
from repwam.tokenizer.tokenize import clip_targets, teacher_cache
from repwam.train.trainer import OptimConfig, Stage, run_record, run_stage, val_subset

ARCHS = ("vit", "vae", "teacher")  # teacher: the frozen teacher as the tokenizer (repwam.tokenizer.frozen)


@dataclass
class TokenizerTrainConfig:
    arch: str = "vit"  # "vit": RepViTok (the method and its reconstruction-only ablation); "vae": causal 3-D conv VAE
    preset: str = "tiny"
    teacher: str = "efficientnet-lite0"  # "none": the reconstruction-only ablation (ViTok)
    teacher_layer: str | None = "stage5"
    teacher_path: str | None = None
    teacher_input_size: int | None = 128  # frames are resized to this before the teacher (None: its default)
    num_frames: int = 17  # T = 1 + 4k raw frames: the longest training clip
    clip_lengths: tuple[int, ...] = (5, 9, 13, 17)  # each batch takes one of these (all <= num_frames)
    attn_window: int | None = 3  # latent frames each latent frame attends to (itself included); encoding uses it too
    conv_stem: int | None = None  # vit: stride-2 convs before the patch projection (None: the preset's)
    # vit: the spatial patch side, which sets the latent grid (None: the preset's; tiny: 8, an 8x8 grid at 64 px;
    # 4 gives 16x16, each token a quarter of the pixels)
    patch_size: int | None = None
    frame_stride: int = 1
    # the views it learns, each clip one camera, every view with the same weights (None: every camera of the data)
    cameras: tuple[str, ...] | None = None
    l1_weight: float = 1.0
    perceptual_weight: float = 1.0
    perceptual_frames: int | None = 1  # random frames per clip that get the perceptual term (None: all)
    gan_weight: float = 0.0
    align_weight: float = 1.0
    val_fraction: float = 0.1
    split_seed: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=2000, batch_size=16, lr=4e-4, bf16=None))

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise RepwamError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.arch == "vae" and self.conv_stem:
            raise RepwamError("conv_stem is a setting of the ViT tokenizer (arch vit); the VAE is convolutional")
        if self.arch != "vit" and self.patch_size is not None:
            raise RepwamError(f"patch_size is a setting of the ViT tokenizer (arch vit), not of arch {self.arch!r}")
        self.clip_lengths = tuple(int(t) for t in (self.clip_lengths or (self.num_frames,)))
        if max(self.clip_lengths) > self.num_frames:
            raise RepwamError(f"clip_lengths {self.clip_lengths} must not exceed num_frames={self.num_frames}")

    @property
    def aligned(self) -> bool:
        return self.teacher != "none" and self.align_weight > 0


def build_tokenizer(cfg: TokenizerTrainConfig):
    if cfg.arch == "vae":
        from repwam.tokenizer.vae import CausalVAE, VAEConfig

        return CausalVAE(VAEConfig.preset(cfg.preset))
    if cfg.arch == "teacher":
        from repwam.tokenizer.frozen import FrozenTeacherConfig, FrozenTeacherTokenizer

        return FrozenTeacherTokenizer(FrozenTeacherConfig.preset(
            cfg.preset, teacher=cfg.teacher, teacher_layer=cfg.teacher_layer, teacher_input_size=cfg.teacher_input_size))
    given = {"conv_stem": cfg.conv_stem, "patch_size": cfg.patch_size}
    return RepViTok(TokenizerConfig.preset(cfg.preset, attn_window=cfg.attn_window,
                                           **{k: v for k, v in given.items() if v is not None}))


class TokenizerStage(Stage):
    name = "tokenizer"

    def __init__(self, cfg: TokenizerTrainConfig, data: list[str | Path], progress: bool = True):
        self.cfg, self.data = cfg, [str(d) for d in data]
        self.model = build_tokenizer(cfg)
        bad = [T for T in cfg.clip_lengths if T < 1 or (T - 1) % self.model.cfg.temporal_patch]
        if bad:
            raise RepwamError(f"clip_lengths {bad} are not 1 + {self.model.cfg.temporal_patch}k frames")
        self.grid = self.model.latent_grid
        common = dict(num_frames=cfg.num_frames, frame_stride=cfg.frame_stride, val_fraction=cfg.val_fraction,
                      split_seed=cfg.split_seed, progress=progress,
                      cameras=list(cfg.cameras) if cfg.cameras else "all", views="separate")
        self.train_set = ClipDataset(data, split="train", **common)
        self.val_set = ClipDataset(data, split="val", clip_step=8, **common)
        size = self.model.cfg.image_size
        if self.train_set.image_size != (size, size):
            raise RepwamError(
                f"the data has {self.train_set.image_size} images but preset {cfg.preset!r} expects {size}x{size}; "
                f"regenerate with --image-size {size} or pick another preset"
            )
        self.align_head, self.spec = None, {"name": "none"}
        if cfg.aligned:
            teacher = build_teacher(cfg.teacher, **teacher_options(cfg.teacher_layer, cfg.teacher_input_size,
                                                                   cfg.teacher_path))
            self.spec = teacher_spec(teacher)
            feats = [{cam: teacher_cache(root, teacher, self.grid, progress=progress, camera=cam)
                      for cam in self.train_set.cameras} for root in data]
            self.train_set.attach("teacher", feats)
            self.val_set.attach("teacher", feats)
            self.align_head = AlignHead(self.model.cfg.latent_dim, teacher.dim)
            del teacher  # training never runs it again
        self.loss_fn = TokenizerLoss(rec_l1=cfg.l1_weight, perceptual=cfg.perceptual_weight, gan=cfg.gan_weight,
                                     align=cfg.align_weight if cfg.aligned else 0.0,
                                     perceptual_frames=cfg.perceptual_frames)
        self.split = split_spec(self.train_set.datasets, cfg.val_fraction, cfg.split_seed)
        self._last = None

    def extra_modules(self):
        return {"align_head": self.align_head} if self.align_head is not None else {}

    def aux_modules(self):
        return {"discriminator": self.loss_fn.discriminator} if self.loss_fn.discriminator is not None else {}

    def to(self, device):
        self.loss_fn.to(device)

    def loss(self, batch):
        T = random.choice(self.cfg.clip_lengths)
        x = frames_to_model(batch["frames"][:, :T])  # (B, T, 3, H, W) in [-1, 1]
        targets = clip_targets(batch["teacher"][:, :T], self.grid) if self.align_head is not None else None
        recon, z = self.model(x)
        kl = None
        if self.cfg.arch == "vae":  # the VAE gives its posterior: align (if asked) its mean, weight its KL
            z, kl = z.mean, z.kl()
        losses = self.loss_fn(recon.float(), x, z.float(), targets, self.align_head)
        if kl is not None:
            losses["kl"] = kl.float()
            losses["loss"] = losses["loss"] + self.model.cfg.kl_weight * losses["kl"]
        self._last = (x.detach(), recon.detach().float())
        return losses

    def aux_loss(self):
        x, recon = self._last
        return self.loss_fn.discriminator_loss(recon, x)

    def images(self, batch):
        x, recon = self._last
        return {"recon": recon_grid(x.cpu(), recon.cpu())}

    @torch.no_grad()
    def validate(self, model):
        """L1, PSNR and (when aligned) teacher cosine on a fixed sample of clips over all validation episodes."""
        device = next(model.parameters()).device
        loader = torch.utils.data.DataLoader(val_subset(self.val_set, self.cfg.optim.val_items, seed=1), batch_size=16)
        l1s, psnrs, coss = [], [], []
        for batch in loader:
            x = frames_to_model(batch["frames"].to(device))
            recon, z = model(x)
            recon = recon.float()
            z = z.mean if self.cfg.arch == "vae" else z
            l1s.append(float((recon - x).abs().mean()))
            psnrs.append(float(clip_psnr(recon, x).mean()))
            if self.align_head is not None:
                coss.append(float(teacher_cosine(z.float(), clip_targets(batch["teacher"].to(device), self.grid),
                                                 self.align_head)))
        out = {"l1": float(np.mean(l1s)), "psnr": float(np.mean(psnrs))}
        if coss:
            out["teacher_cosine"] = float(np.mean(coss))
        return out

    def checkpoint_meta(self, model):
        cfg = self.cfg
        if cfg.arch == "vae":  # latents of unit scale for the later stages: per-channel stats of the posterior means
            sample = val_subset(self.train_set, self.cfg.optim.val_items, seed=2)
            device = next(model.parameters()).device
            model.fit_latent_stats(frames_to_model(b["frames"].to(device))
                                   for b in torch.utils.data.DataLoader(sample, batch_size=16))
        return {
            "teacher": self.spec,
            "teacher_dim": self.align_head.proj.out_features if self.align_head is not None else None,
            "num_frames": cfg.num_frames,
            "clip_lengths": list(cfg.clip_lengths),
            "frame_stride": cfg.frame_stride,
            "cameras": self.train_set.cameras,
            "align_weight": cfg.align_weight if cfg.aligned else 0.0,
            "data": self.data,
            "split": self.split,
        }


def train_tokenizer(cfg: TokenizerTrainConfig, data: list[str | Path], out: str | Path, *, resume: bool = False,
                    progress: bool = True) -> Path:
    """Train and return the path of the last checkpoint."""
    if cfg.arch == "teacher":
        return write_teacher_tokenizer(cfg, data, out)
    return run_stage(lambda: TokenizerStage(cfg, data, progress=progress), cfg, "train tokenizer", data, out,
                     resume=resume, progress=progress)


def write_teacher_tokenizer(cfg: TokenizerTrainConfig, data: list[str | Path], out: str | Path) -> Path:
    """arch teacher: nothing to train; writes the checkpoint that names the teacher (`<out>/checkpoints/last`) and
    run.json, with the cameras and image size checked against the data as training would."""
    datasets = [LeRobotDataset(d) for d in data]
    cams = [camera_key(c) for c in (cfg.cameras or datasets[0].camera_keys)]
    model = build_tokenizer(cfg)
    size = model.image_size
    for ds in datasets:
        missing = [c for c in cams if c not in ds.camera_keys]
        if missing:
            raise RepwamError(f"{ds.root} has no camera {missing}; it has {ds.camera_keys}")
        shape = tuple(ds.features[cams[0]]["shape"][:2])
        if shape != (size, size):
            raise RepwamError(f"the data has {shape} images but preset {cfg.preset!r} expects {size}x{size}; "
                              f"regenerate with --image-size {size} or pick another preset")
    meta = {"teacher": teacher_spec(model.teacher), "teacher_dim": None, "num_frames": cfg.num_frames,
            "frame_stride": cfg.frame_stride, "cameras": cams, "align_weight": 0.0, "data": [str(d) for d in data]}
    ckpt = model.save_pretrained(Path(out) / "checkpoints" / "last", meta=meta)
    (Path(out) / "run.json").write_text(json.dumps(run_record(cfg, "train tokenizer", data), indent=1, default=str))
    return ckpt


CONFIG = TokenizerTrainConfig
RECIPES = {
    "default": TokenizerTrainConfig(),  # RepViTok aligned to EfficientNet-Lite0 stage5 (the method)
    "none": TokenizerTrainConfig(teacher="none", align_weight=0.0),  # the reconstruction-only ablation ("ViTok")
    "privileged": TokenizerTrainConfig(teacher="privileged", teacher_layer=None, teacher_input_size=None),
    "vae": TokenizerTrainConfig(arch="vae", teacher="none", align_weight=0.0),  # conventional causal video VAE
    "teacher": TokenizerTrainConfig(arch="teacher"),  # the frozen teacher's features as z: nothing trained
}
train = train_tokenizer
