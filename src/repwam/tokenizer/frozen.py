"""The frozen teacher as the tokenizer: z = the teacher's features on the latent grid (a reference, not the method).

RepViTok is trained to make latents the teacher can be read from (`W_align z ≈ G(o)`); this tokenizer is the limit of
that, `z = LayerNorm(G(o))` itself, as world models on frozen foundation features do (DINO-WM). It has no decoder and
nothing to train: `repwam train tokenizer --arch teacher` (recipe `teacher`) only writes the checkpoint. It answers
how far the rest of the chain (latent actions, world action model, adaptation) goes when the visual latents carry
everything the teacher sees, i.e. what a tokenizer aligned perfectly would give.

    frames (B, T, 3, S, S) in [-1, 1] -> teacher maps (B, T, C, h, w) -> resized to the latent grid, latent frame 0 =
    frame 0, latent frame j = the mean over its tubelet's 4 frames (the alignment targets' rule) -> LayerNorm per
    token (the alignment's normalisation; RepViTok's z ends in a LayerNorm too) -> z (B, T', L, C)

The teacher is referenced by name in config.json, never copied: the weights file holds only the teacher's spec (as
bytes), so the weights hash that caches and children are keyed by changes with the teacher, its layer and its input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from repwam.checkpoint import Pretrained
from repwam.config import ModelConfig
from repwam.errors import RepwamError
from repwam.tokenizer.model import EncoderStream, VisualTokenizer
from repwam.tokenizer.teachers import build_teacher, teacher_options, teacher_spec
from repwam.tokenizer.teachers.base import HoldsTeacher, teacher_targets


@dataclass
class FrozenTeacherConfig(ModelConfig):
    teacher: str = "efficientnet-lite0"
    teacher_layer: str | None = "stage5"
    teacher_input_size: int | None = 128
    image_size: int = 64
    grid: tuple[int, int] = (8, 8)  # the latent grid: the teacher's maps are resized to it
    latent_dim: int | None = None  # the teacher's channels (None: taken from the teacher when built)
    temporal_patch: int = 4
    in_channels: int = 3

    def __post_init__(self):
        self.grid = tuple(int(g) for g in self.grid)
        if self.temporal_patch < 1:
            raise RepwamError(f"temporal_patch must be >= 1, got {self.temporal_patch}")

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    @classmethod
    def presets(cls) -> dict:
        return {"tiny": cls(), "tiny128": cls(image_size=128)}


class FrozenTeacherTokenizer(HoldsTeacher, VisualTokenizer, Pretrained, nn.Module):
    """frames (B, T, 3, S, S) in [-1, 1] -> z (B, T', L, C): the tokenizer interface, encode-only."""

    checkpoint_type = "repwam.teacher_tokenizer"
    config_class = FrozenTeacherConfig
    config_key = "teacher_tokenizer"

    def __init__(self, cfg: FrozenTeacherConfig):
        super().__init__()
        self.cfg = cfg
        teacher = build_teacher(cfg.teacher, **teacher_options(cfg.teacher_layer, cfg.teacher_input_size))
        if teacher is None:
            raise RepwamError("the frozen-teacher tokenizer needs a teacher (teacher 'none' has no features)")
        if cfg.latent_dim is None:
            cfg = self.cfg = replace(cfg, latent_dim=teacher.dim)
        if teacher.dim != cfg.latent_dim:
            raise RepwamError(f"teacher {cfg.teacher} ({cfg.teacher_layer}) has {teacher.dim} channels, not "
                              f"latent_dim={cfg.latent_dim}")
        self.hold_teacher(teacher)  # not a submodule: its weights are never saved here
        spec = json.dumps(teacher_spec(teacher), sort_keys=True).encode()
        self.register_buffer("teacher_spec", torch.tensor(list(spec), dtype=torch.uint8))  # hashes with the teacher

    def _latents(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, T, C, H, W), T = 1 + tp·k -> z (B, T', L, C)."""
        b, t = frames.shape[:2]
        with torch.no_grad():
            maps = self.teacher(frames.reshape(b * t, *frames.shape[2:]))  # (B T, C, h, w)
        z = teacher_targets(maps.reshape(b, t, *maps.shape[1:]), self.cfg.grid, self.cfg.temporal_patch)
        return F.layer_norm(z, z.shape[-1:])

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        c, s = self.cfg.in_channels, self.cfg.image_size
        if frames.ndim == 4:
            frames = frames[:, None]
        if frames.ndim != 5 or tuple(frames.shape[2:]) != (c, s, s):
            raise RepwamError(f"got frames of shape {tuple(frames.shape)}; the tokenizer accepts (B, T, {c}, {s}, "
                              f"{s}) or (B, {c}, {s}, {s}) for single images")
        self.num_latent_frames(frames.shape[1])  # T = 1 + tp·k, or a clear error
        return self._latents(frames)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise RepwamError("the frozen-teacher tokenizer has no decoder: it makes latents, not images (run the "
                          "policy actions-only; imagined futures need a trained tokenizer)")

    def stream_encoder(self, batch_size: int) -> "TeacherEncoderStream":
        return TeacherEncoderStream(self, batch_size)


class TeacherEncoderStream(EncoderStream):
    """Stateless: each push's latent frame depends on its own frames only."""

    def _step(self, frames: torch.Tensor) -> torch.Tensor:
        # the first push (1 frame) is latent frame 0; later pushes are one tubelet: the mean over its frames
        b, n = frames.shape[:2]
        with torch.no_grad():
            maps = self.tokenizer.teacher(frames.reshape(b * n, *frames.shape[2:]))  # (B n, C, h, w)
        z = teacher_targets(maps[:, None], self.tokenizer.cfg.grid)[:, 0]  # each frame on the grid: (B n, L, C)
        z = z.reshape(b, n, *z.shape[1:]).mean(1)
        return F.layer_norm(z, z.shape[-1:])  # (B, L, C)
