"""The teacher interface shared by every backend, the checkpoint spec, and targets on the latent grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from repwam.errors import RepwamError

# --------------------------------------------------------------------------------------------
# the interface
# --------------------------------------------------------------------------------------------


class Teacher(nn.Module):
    """A frozen feature extractor: frames (N, 3, H, W) in [-1, 1] -> feature map (N, dim, h, w)."""

    name: str
    dim: int
    layer: str | None = None
    path: str | None = None

    def __init__(self):
        super().__init__()
        self.options: dict = {}  # extra settings needed to rebuild the same teacher (input_size, ...)

    def freeze(self) -> "Teacher":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True):  # a teacher never leaves eval mode
        return super().train(False)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise RepwamError(f"teacher {self.name} expects frames (N, 3, H, W) in [-1, 1], got {tuple(frames.shape)}")
        with torch.no_grad():
            return self.features(frames.float())

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, layer={self.layer!r}, path={self.path!r}"


class HoldsTeacher:
    """Mixin for a module that runs a frozen teacher it never saves (the frozen-teacher tokenizer, the state
    estimator): `hold_teacher` keeps it outside the submodules, so its weights stay out of the state dict and the
    checkpoint (config.json names it), and `.to(device)` moves it all the same."""

    def hold_teacher(self, teacher: Teacher) -> None:
        self.__dict__["teacher"] = teacher.freeze()

    def _apply(self, fn, *args, **kwargs):
        self.__dict__["teacher"] = self.teacher._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)


def teacher_spec(teacher: Teacher | None) -> dict:
    """What to store in config.json to rebuild the teacher: {"name", "layer", "path", **options}."""
    if teacher is None:
        return {"name": "none"}
    return {"name": teacher.name, "layer": teacher.layer, "path": teacher.path, **teacher.options}


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


# --------------------------------------------------------------------------------------------
# targets on the latent grid
# --------------------------------------------------------------------------------------------


def teacher_targets(feats: torch.Tensor, latent_grid: tuple[int, int], temporal_patch: int = 4) -> torch.Tensor:
    """Teacher maps (B, T, C, h, w) -> targets (B, T', L, C) aligned with RepViTok's tokens.

    Space: each map is resized to the latent grid (area averaging when shrinking, bilinear
    otherwise); tokens are flattened row-major like the tokenizer's patches. Time: latent frame 0
    is frame 0; latent frame j > 0 is the mean over frames 4j-3 .. 4j (the frames its tubelet covers).
    """
    b, t, c, h, w = feats.shape
    if (t - 1) % temporal_patch:
        raise RepwamError(f"got T={t} teacher frames; expected T = 1 + {temporal_patch}k")
    gh, gw = latent_grid
    x = feats.reshape(b * t, c, h, w).float()
    if (gh, gw) != (h, w):
        if gh <= h and gw <= w:
            x = F.adaptive_avg_pool2d(x, (gh, gw))
        else:
            x = F.interpolate(x, size=(gh, gw), mode="bilinear", align_corners=False, antialias=True)
    x = rearrange(x, "(b t) c h w -> b t (h w) c", b=b)
    first = x[:, :1]
    if t == 1:
        return first
    rest = rearrange(x[:, 1:], "b (k tp) l c -> b k tp l c", tp=temporal_patch).mean(2)
    return torch.cat([first, rest], dim=1)


def compute_targets(teacher: Teacher, frames: torch.Tensor, latent_grid: tuple[int, int],
                    temporal_patch: int = 4, chunk: int = 64) -> torch.Tensor:
    """Run the teacher over clips (B, T, 3, H, W) in chunks of frames -> targets (B, T', L, C)."""
    b, t = frames.shape[:2]
    flat = frames.reshape(b * t, *frames.shape[2:])
    feats = torch.cat([teacher(flat[i : i + chunk]) for i in range(0, len(flat), chunk)])
    return teacher_targets(feats.view(b, t, *feats.shape[1:]), latent_grid, temporal_patch)
