"""The plain-policy baseline: an image-to-action-chunk policy with the WAM's flow-matching action head (a diffusion-
policy / ACT-style baseline, the one a user would pick instead of a world action model). Same inputs as RepWAM's
policy: the camera, the proprioceptive state and the instruction's token embeddings from the frozen text encoder.

    images  (B, n_obs, [V,] 3, S, S) in [-1, 1]   the current frame and the n_obs-1 before it (repeated at an episode
            start), of each of V cameras (`num_views`; every view through the same encoder, + a learned view embedding)
      -> image encoder, per frame:
           "vit"     p x p patches -> Linear (the observation transformer below is the ViT's body)
           "resnet"  stride-2 conv stem, then stages of two GroupNorm residual blocks (the first strides 2) down to
                     stride p -> 1x1 conv
         -> (B, n_obs·G, W) tokens, G = (S/p)², + 2-D sin-cos position + a learned embedding of the frame's age
    state   (B, n_obs, D_s) normalised    -> Linear -> n_obs tokens (+ the frame's age embedding)
    text    (B, N_text, D_text), mask      -> Linear -> N_text tokens (+ a learned text-type embedding)
      -> observation transformer: `obs_depth` pre-LN blocks of self-attention over all these tokens (padded text keys
         masked) -> LayerNorm -> memory (B, M, W)

    action chunk (B, H, A) normalised, noised to x_a = (1-a)·eps + a·u   (rectified flow, a ~ U(0, 1) per sample)
      -> Linear + learned position -> `depth` DiT blocks, each:
           x += g1 · SelfAttention(modulate(LN(x)))                 (over the H action tokens)
           x += CrossAttention(LN_affine(x), memory)                (out-projection zero-initialised)
           x += g2 · MLP(modulate(LN(x)))
         adaLN-Zero conditioning c = TimeMLP(sincos(1000·a)) + MLP(masked mean of the memory)
      -> adaLN head, zero-initialised -> velocity (B, H, A); the target is u - eps, padded steps (past an episode's
         end, `action_mask` False) are left out of the loss.

Language therefore enters twice: by cross-attention from every action token (through the observation transformer,
where image and text tokens attend to each other) and, pooled, in the adaLN conditioning. Sampling runs the encoder
once and `steps` Euler steps of the decoder from noise (a = 0) to data (a = 1), as the WAM's action steps.

`PlainPolicy` serves a checkpoint through the `Policy` interface (receding horizon: it samples a chunk of H actions,
executes the first `execute`, then replans), with the transforms of `repwam.data.transforms` used in training too.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from repwam.checkpoint import Pretrained
from repwam.config import ModelConfig
from repwam.data.transforms import Normalizer, image_to_model
from repwam.errors import RepwamError
from repwam.policy.base import INSTRUCTION_KEY, read_state
from repwam.policy.estimator import StateEstimator, policy_cameras, policy_estimator, robot_and_estimate
from repwam.serve import ENV_STATE_KEY, EST_STATE_KEY, STATE_KEY, validate_observation
from repwam.layers import MLP, sincos_1d, sincos_2d

ENCODERS = ("vit", "resnet")
TIME_SCALE = 1000.0  # a in [0, 1] is embedded as a DiT-style timestep a * 1000 (as the WAM)
MAX_IMAGE_SIZE = 1024  # the largest camera image a policy accepts (it is area-resized to the model's size)


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------


@dataclass
class PlainConfig(ModelConfig):
    # inputs
    image_size: int = 64  # S: camera images are area-resized to S x S
    n_obs: int = 2  # frames (and states) observed per plan: the current one and n_obs - 1 before it
    num_views: int = 1  # V: cameras per observation, each encoded with the same weights
    state_dim: int = 4  # D_s (Meta-World: hand xyz + gripper opening)
    action_dim: int = 4  # A
    horizon: int = 16  # H: raw actions per denoised chunk
    text_dim: int = 384  # D_text (all-MiniLM-L6-v2)
    # observation encoder
    encoder: str = "vit"  # "vit" | "resnet"
    patch_size: int = 8  # p: the ViT's patch, or the ResNet's total stride; (S/p)² tokens per frame
    conv_channels: tuple[int, ...] = (32, 64, 128)  # ResNet widths: the stem, then one stage each (log2(p) entries)
    obs_depth: int = 2  # observation transformer blocks
    # action decoder
    width: int = 128  # W
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    qk_norm: bool = True
    time_freq_dim: int = 256
    # inference default
    steps: int = 10  # Euler steps (the WAM's action_steps)
    # training only: a privileged read-out (0: none). An MLP on the pooled observation memory regresses an
    # aux_dim-d target of the current step (train/plain's aux_key: the simulator's object and goal poses), so the
    # encoder must find them in the image; sampling never uses it and the policy never sees the target.
    aux_dim: int = 0
    # with aux_dim: the read-out (detached) also goes back into the memory as one more token, a state estimate the
    # action decoder can use as the privileged reference uses the true state (sampling then computes it too)
    aux_feedback: bool = False

    def __post_init__(self):
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        if self.encoder not in ENCODERS:
            raise RepwamError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.image_size % self.patch_size:
            raise RepwamError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        stages = math.log2(self.patch_size)
        if self.encoder == "resnet" and (stages != int(stages) or len(self.conv_channels) != int(stages)):
            raise RepwamError(f"the ResNet encoder strides 2 per stage: patch_size={self.patch_size} needs "
                              f"log2(patch_size) conv_channels, got {list(self.conv_channels)}")
        if any(c % 8 for c in self.conv_channels):
            raise RepwamError(f"conv_channels must be multiples of 8 (GroupNorm of 8 groups), got {self.conv_channels}")
        if self.width % self.heads or self.width % 4:
            raise RepwamError(f"width={self.width} must split into heads={self.heads} and be a multiple of 4")
        if self.aux_feedback and not self.aux_dim:
            raise RepwamError("aux_feedback feeds the read-out back: it needs aux_dim > 0")
        for name in ("n_obs", "horizon", "steps", "state_dim", "action_dim", "depth", "obs_depth", "aux_dim"):
            if getattr(self, name) < (0 if name in ("state_dim", "obs_depth", "aux_dim") else 1):
                raise RepwamError(f"PlainConfig.{name} is out of range: {getattr(self, name)}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        return self.grid**2

    @classmethod
    def presets(cls) -> dict:
        return PRESETS


PRESETS: dict[str, PlainConfig] = {
    # CPU: 64x64 frames, 8x8 tokens per frame, ~2.0M params (~2.7M with the ResNet), as the tiny tokenizer + WAM
    "tiny": PlainConfig(),
    # tiny at 128x128 frames: 16x16 patches, the same 8x8 tokens per frame (as the tiny128 tokenizer)
    "tiny128": PlainConfig(image_size=128, patch_size=16, conv_channels=(32, 64, 128, 128)),
    # one GPU: 128x128 frames, 8x8 tokens per frame (ResNet stride 16), ~66M params, as the small WAM
    "small": PlainConfig(image_size=128, encoder="resnet", patch_size=16, conv_channels=(64, 128, 256, 256),
                         width=512, heads=8, obs_depth=4, depth=8),
}


# --------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def masked_mean(x, mask):
    """x (B, M, W), mask (B, M) bool -> the mean over the tokens mask keeps, (B, W)."""
    m = mask[..., None].to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


class Attention(nn.Module):
    """Multi-head attention from x to a context (x itself when None), per-head RMS qk-norm, fused SDPA."""

    def __init__(self, dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        norm = lambda: nn.RMSNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()  # noqa: E731
        self.q_norm, self.k_norm = norm(), norm()

    def forward(self, x, context=None, mask=None):
        # x (B, N, D), context (B, M, D) or None, mask (B, 1, 1, M) bool (True = may attend) or None -> (B, N, D)
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731  (B, h, N, d)
        k, v = self.kv(x if context is None else context).chunk(2, dim=-1)
        q, k, v = self.q_norm(split(self.q(x))), self.k_norm(split(k)), split(v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).flatten(2))


class ResBlock(nn.Module):
    """Two 3x3 convs with GroupNorm (as diffusion policy's ResNet, which swaps BatchNorm for GroupNorm)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(8, cout)
        self.skip = nn.Identity() if cin == cout and stride == 1 else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(8, cout))

    def forward(self, x):
        h = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.skip(x) + self.norm2(self.conv2(h)))


class ResNetEncoder(nn.Module):
    """(N, 3, S, S) -> (N, (S/p)², W): a stride-2 stem (conv_channels[0]), then a stage of two residual blocks per
    further conv_channels entry, the first striding 2 (log2(p) halvings in all), then a 1x1 conv to the width."""

    def __init__(self, cfg: PlainConfig):
        super().__init__()
        c = cfg.conv_channels
        layers: list[nn.Module] = [nn.Conv2d(3, c[0], 3, 2, 1, bias=False), nn.GroupNorm(8, c[0]), nn.ReLU()]
        for cin, cout in zip(c[:-1], c[1:]):
            layers += [ResBlock(cin, cout, 2), ResBlock(cout, cout)]
        layers.append(nn.Conv2d(c[-1], cfg.width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).flatten(2).transpose(1, 2)


class PatchEncoder(nn.Module):
    """(N, 3, S, S) -> (N, (S/p)², W): non-overlapping p x p patches, linearly embedded (a ViT's stem)."""

    def __init__(self, cfg: PlainConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, cfg.patch_size, cfg.patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block over the observation tokens (padded text keys masked)."""

    def __init__(self, cfg: PlainConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.width), nn.LayerNorm(cfg.width)
        self.attn = Attention(cfg.width, cfg.heads, cfg.qk_norm)
        self.mlp = MLP(cfg.width, cfg.mlp_ratio * cfg.width)

    def forward(self, x, mask):
        # x (B, M, W); mask (B, 1, 1, M) bool (True = may attend)
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """DiT block over the action tokens with cross-attention to the observation memory; adaLN-Zero from c (B, W)."""

    def __init__(self, cfg: PlainConfig):
        super().__init__()
        W = cfg.width
        self.norm1 = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(W, eps=1e-6)  # before cross-attention: affine, unmodulated (as the WAM)
        self.norm3 = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(W, cfg.heads, cfg.qk_norm)
        self.cross = Attention(W, cfg.heads, cfg.qk_norm)
        self.mlp = MLP(W, cfg.mlp_ratio * W)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(W, 6 * W))

    def forward(self, x, c, memory, memory_mask):
        # x (B, H, W), c (B, W), memory (B, M, W), memory_mask (B, 1, 1, M) bool
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))
        x = x + self.cross(self.norm2(x), memory, memory_mask)
        return x + gate2 * self.mlp(modulate(self.norm3(x), shift2, scale2))


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------


class PlainPolicyModel(Pretrained, nn.Module):
    """Observation encoder + flow-matching action decoder (see the module docstring).

    Training: `loss(batch)`. Sampling: `sample_actions(images, state, text, text_mask)`, or `encode` once and
    `denoise`. Checkpoints: `save_pretrained` / `from_pretrained`; the text encoder is referenced by name in the meta.
    """

    checkpoint_type = "repwam.plain"
    config_class = PlainConfig
    config_key = "plain"

    def __init__(self, cfg: PlainConfig):
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        self.image_encoder = ResNetEncoder(cfg) if cfg.encoder == "resnet" else PatchEncoder(cfg)
        self.register_buffer("image_pos", sincos_2d(cfg.grid, cfg.grid, W), persistent=False)
        self.frame_embed = nn.Parameter(torch.zeros(cfg.n_obs, W))  # the age of a frame (and of its state)
        self.view_embed = nn.Parameter(torch.zeros(cfg.num_views, W)) if cfg.num_views > 1 else None  # which camera
        self.state_embed = nn.Linear(cfg.state_dim, W) if cfg.state_dim else None
        self.text_embed = nn.Linear(cfg.text_dim, W)
        self.text_type = nn.Parameter(torch.zeros(W))
        self.obs_blocks = nn.ModuleList([EncoderBlock(cfg) for _ in range(cfg.obs_depth)])
        self.obs_norm = nn.LayerNorm(W)

        self.action_embed = nn.Linear(cfg.action_dim, W)
        self.action_pos = nn.Parameter(torch.zeros(cfg.horizon, W))
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_freq_dim, W), nn.SiLU(), nn.Linear(W, W))
        self.cond_mlp = nn.Sequential(nn.Linear(W, W), nn.SiLU(), nn.Linear(W, W))
        self.blocks = nn.ModuleList([DecoderBlock(cfg) for _ in range(cfg.depth)])
        self.head_norm = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.head_ada = nn.Sequential(nn.SiLU(), nn.Linear(W, 2 * W))
        self.head = nn.Linear(W, cfg.action_dim)
        self.aux_head = nn.Sequential(nn.Linear(W, W), nn.GELU(approximate="tanh"), nn.Linear(W, cfg.aux_dim)) \
            if cfg.aux_dim else None  # training only (see PlainConfig.aux_dim)
        self.aux_embed = nn.Linear(cfg.aux_dim, W) if cfg.aux_feedback else None  # the estimate as a memory token
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for p in (self.frame_embed, self.text_type, self.action_pos, self.view_embed):
            if p is not None:
                nn.init.normal_(p, std=0.02)
        for lin in (self.time_mlp[0], self.time_mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        zero = [self.head_ada[1], self.head] + [b.ada[1] for b in self.blocks] + [b.cross.proj for b in self.blocks]
        for lin in zero:  # adaLN-Zero: every block starts as the identity, the head at 0; cross-attention as a no-op
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    @classmethod
    def from_pretrained(cls, path, **overrides):
        try:
            return super().from_pretrained(path, **overrides)
        except RuntimeError as e:  # load_state_dict: shapes differ from what config.json describes
            first = str(e).strip().splitlines()[1:2] or [str(e)]
            raise RepwamError(f"{path}: model.safetensors does not fit the plain policy built from its config.json "
                              f"({first[0].strip()})") from None

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- observation ----

    def encode(self, images, state, text, text_mask):
        """images (B, n_obs, V, 3, S, S) in [-1, 1] ((B, n_obs, 3, S, S) when V = 1), state (B, n_obs, D_s)
        normalised, text (B, N, D_text), text_mask (B, N) bool -> memory (B, M, W), memory_mask (B, M) bool."""
        memory, mask, _ = self.observe(images, state, text, text_mask)
        return memory, mask

    def observe(self, images, state, text, text_mask, read_out: bool = False):
        """`encode`, and the privileged read-out (B, aux_dim), with its gradient, when read_out (training) or when
        aux_feedback needs it (then the memory's last token is its detached estimate); None otherwise."""
        c = self.cfg
        if images.ndim == 5 and c.num_views == 1:
            images = images[:, :, None]
        B, T = images.shape[:2]
        if images.ndim != 6 or T != c.n_obs or tuple(images.shape[2:]) != (c.num_views, 3, c.image_size, c.image_size):
            raise RepwamError(f"the plain policy takes images (B, {c.n_obs}, {c.num_views}, 3, {c.image_size}, "
                              f"{c.image_size}) (n_obs frames of {c.num_views} camera(s)), got {tuple(images.shape)}")
        V = c.num_views
        age = self.frame_embed.to(images.dtype)
        x = self.image_encoder(images.flatten(0, 2))  # (B·T·V, G, W)
        x = (x + self.image_pos.to(x.dtype)).unflatten(0, (B, T, V)) + age[None, :, None, None]
        if self.view_embed is not None:
            x = x + self.view_embed.to(x.dtype)[None, None, :, None]
        tokens = [x.flatten(1, 3)]
        if self.state_embed is not None:
            tokens.append(self.state_embed(state.to(x.dtype)) + age[None])
        tokens.append(self.text_embed(text.to(x.dtype)) + self.text_type.to(x.dtype))
        memory = torch.cat(tokens, 1)
        mask = torch.cat([torch.ones(B, memory.shape[1] - text.shape[1], dtype=torch.bool, device=memory.device),
                          text_mask.bool()], 1)
        for blk in self.obs_blocks:
            memory = blk(memory, mask[:, None, None, :])
        memory = self.obs_norm(memory)
        estimate = None
        if self.aux_head is not None and (read_out or self.aux_embed is not None):
            estimate = self.aux_head(masked_mean(memory, mask))
        if self.aux_embed is not None:  # the read-out, detached: it learns from its own loss only
            memory = torch.cat([memory, self.aux_embed(estimate.detach())[:, None]], 1)
            mask = torch.cat([mask, mask.new_ones(B, 1)], 1)
        return memory, mask, estimate

    # ---- action decoder ----

    def velocity(self, x, alpha, memory, memory_mask, pooled=None):
        """x (B, H, A) noised normalised actions, alpha (B,) in [0, 1] -> predicted velocity u - eps (B, H, A)."""
        if pooled is None:
            pooled = self.pool(memory, memory_mask)
        t = sincos_1d(alpha.float() * TIME_SCALE, self.cfg.time_freq_dim).to(memory.dtype)
        c = self.time_mlp(t) + pooled
        h = self.action_embed(x.to(memory.dtype)) + self.action_pos.to(memory.dtype)
        mask = memory_mask[:, None, None, :]
        for blk in self.blocks:
            h = blk(h, c, memory, mask)
        shift, scale = self.head_ada(c)[:, None].chunk(2, dim=-1)
        return self.head(modulate(self.head_norm(h), shift, scale))

    def pool(self, memory, memory_mask):
        """The observation's adaLN conditioning: the masked mean of the memory through an MLP -> (B, W)."""
        return self.cond_mlp(masked_mean(memory, memory_mask))

    def loss(self, batch: dict, noise=None, alpha=None, aux_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Rectified flow on the action chunk. batch: images, state, text, text_mask, action (B, H, A) normalised,
        action_mask (B, H) bool, and with an aux head `aux` (B, aux_dim), the read-out's target (its MSE, times
        aux_weight, is added). noise / alpha: fixed draws (validation); drawn here otherwise."""
        u = batch["action"].float()
        noise = torch.randn_like(u) if noise is None else noise
        alpha = torch.rand(u.shape[0], device=u.device) if alpha is None else alpha
        a = alpha[:, None, None]
        x = (1 - a) * noise + a * u
        read_out = self.aux_head is not None and "aux" in batch
        memory, mask, estimate = self.observe(batch["images"], batch["state"], batch["text"], batch["text_mask"],
                                              read_out=read_out)
        v = self.velocity(x, alpha, memory, mask).float()
        valid = batch["action_mask"].float()[..., None]
        err = ((v - (u - noise)) ** 2 * valid).sum() / (valid.sum() * u.shape[-1]).clamp(min=1)
        if not read_out:
            return {"loss": err}
        aux = F.mse_loss(estimate.float(), batch["aux"].float())
        return {"loss": err + aux_weight * aux, "flow": err.detach(), "aux": aux.detach()}

    @torch.no_grad()
    def denoise(self, memory, memory_mask, steps: int | None = None, noise=None, generator=None):
        """Euler steps from noise (a = 0) to a normalised action chunk (a = 1) -> (B, H, A) float32."""
        steps = int(steps or self.cfg.steps)
        B = memory.shape[0]
        if noise is None:
            noise = torch.randn(B, self.cfg.horizon, self.cfg.action_dim, generator=generator,
                                device=generator.device if generator is not None else memory.device)
        x = noise.to(memory.device).float()
        pooled = self.pool(memory, memory_mask)
        for i in range(steps):
            alpha = torch.full((B,), i / steps, device=memory.device)
            x = x + self.velocity(x, alpha, memory, memory_mask, pooled).float() / steps
        return x

    @torch.no_grad()
    def sample_actions(self, images, state, text, text_mask, *, steps: int | None = None, noise=None, generator=None):
        """Observations -> a sampled normalised action chunk (B, H, A)."""
        memory, mask = self.encode(images, state, text, text_mask)
        return self.denoise(memory, mask, steps, noise, generator)


# --------------------------------------------------------------------------------------------
# the policy
# --------------------------------------------------------------------------------------------


class PlainPolicy:
    """A plain-policy checkpoint behind the `Policy` interface: receding-horizon planning over sampled chunks.

    infer(obs): check the observation, transform the image and the state as in training, keep the last n_obs of
    them (the first one repeated at an episode's start, as training pads), and when the queue of planned actions is
    empty sample a chunk of H and queue its first `execute`; return the queue (current action first) and pop it.
    """

    SETTINGS = ("execute", "steps", "seed", "device", "estimator")  # what `load_policy(path, **settings)` takes

    def __init__(self, model: PlainPolicyModel, text, *, execute: int = 8, steps: int | None = None, seed: int = 0,
                 device: str = "cpu", estimator: StateEstimator | None = None):
        meta = model.checkpoint_meta
        c = model.cfg
        if not 1 <= int(execute) <= c.horizon:
            raise RepwamError(f"execute must be in [1, {c.horizon}] (the chunk length), got {execute}")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.text = text
        self.execute, self.steps, self.seed = int(execute), int(steps or c.steps), int(seed)
        self.cameras = list(meta.get("cameras") or [meta["camera"]])
        if len(self.cameras) != c.num_views:
            raise RepwamError(f"{meta.get('path')}: config.json names cameras {self.cameras} for a model of "
                              f"{c.num_views} view(s)")
        self.action_norm = Normalizer.from_dict(meta["action_stats"])
        self.state_norm = Normalizer.from_dict(meta["state_stats"]) if c.state_dim else None
        # which observation the state token reads: the robot's state, or (a privileged reference policy) the whole
        # simulator observation, which the robot's protocol then does not ask for
        self.state_key = meta.get("state_key", STATE_KEY)
        privileged = self.state_key == ENV_STATE_KEY
        # EST_STATE_KEY: the state reads the robot's state followed by the estimator's reading of its cameras
        self.estimator, robot_state_dim = None, c.state_dim
        if self.state_key == EST_STATE_KEY:
            if estimator is None:
                raise RepwamError(f"{meta.get('path')} reads {EST_STATE_KEY}: it needs its state estimator")
            self.estimator = estimator.eval()
            robot_state_dim = c.state_dim - estimator.cfg.target_dim
        self.metadata: dict[str, Any] = {
            "policy": "plain",
            "checkpoint": meta.get("path"),
            "camera_keys": policy_cameras(self.cameras, self.estimator),
            "image_size": c.image_size,
            "max_image_size": MAX_IMAGE_SIZE,
            "state_dim": 0 if privileged else robot_state_dim,
            "action_dim": c.action_dim,
            "action_horizon": self.execute,
            "instruction_key": INSTRUCTION_KEY,
            "privileged": privileged,
        }
        self._text_memo: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._episode: dict | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, *, execute: int = 8, steps: int | None = None, seed: int = 0,
                        device: str = "cpu", estimator: str | None = None, text_encoder=None) -> "PlainPolicy":
        """Settings: execute (actions run per plan), steps (Euler steps), seed, device, estimator (another state
        estimator's directory in place of the one it was trained with: `load_estimator`). `text_encoder`: an object
        with `encode(str) -> (emb, mask)` to use instead of the checkpoint's (tests, a shared encoder)."""
        from repwam.wam.text import TextEncoder

        model = PlainPolicyModel.from_pretrained(path)
        if text_encoder is None:
            spec = model.checkpoint_meta.get("text_encoder")
            if not spec:
                raise RepwamError(f"{path}: config.json names no text encoder")
            text_encoder = TextEncoder(spec["name"], max_length=spec.get("max_length"))
        meta = model.checkpoint_meta
        estimator = policy_estimator(meta, "plain policy", path, estimator)
        return cls(model, text_encoder, execute=execute, steps=steps, seed=seed, device=device, estimator=estimator)

    # ------------------------------------------------------------------ episode
    def reset(self, instruction: str) -> None:
        if not isinstance(instruction, str) or not instruction.strip():
            raise RepwamError(f"reset needs the episode's instruction (a non-empty string), got {instruction!r}")
        if instruction not in self._text_memo:  # the encoder runs once per instruction string
            emb, mask = self.text.encode(instruction)
            self._text_memo[instruction] = (emb[None].to(self.device), mask[None].to(self.device))
        self._episode = {
            "instruction": instruction,
            "text": self._text_memo[instruction],
            "frames": deque(maxlen=self.model.cfg.n_obs),  # (images (V, 3, S, S), state (D_s,) or None)
            "queue": deque(),  # planned (unnormalised) actions still to execute
            "plans": 0,
            "generator": torch.Generator(self.device).manual_seed(self.seed),
        }

    @torch.inference_mode()
    def infer(self, obs: dict) -> dict[str, np.ndarray]:
        if self._episode is None:
            raise RepwamError("call reset(instruction) before infer: the policy needs the episode's instruction")
        obs = validate_observation(obs, self.metadata, strict=False)
        ep, c = self._episode, self.model.cfg
        image = torch.stack([image_to_model(obs[cam], c.image_size) for cam in self.cameras])  # (V, 3, S, S)
        state, out = None, {}
        if self.estimator is not None:
            robot = read_state(obs, STATE_KEY, self.metadata["state_dim"])
            full, out["estimated_state"] = robot_and_estimate(self.estimator, obs, robot, ep["instruction"])
            state = self.state_norm(full)
        elif self.state_norm is not None:
            state = self.state_norm(read_state(obs, self.state_key, c.state_dim))
        frames = ep["frames"]
        while len(frames) < c.n_obs - 1:  # an episode's first frame stands in for the frames before it
            frames.append((image, state))
        frames.append((image, state))
        if not ep["queue"]:
            self._plan()
        actions = np.stack(list(ep["queue"])).astype(np.float32)
        ep["queue"].popleft()
        return {"actions": actions, **out}

    def _plan(self) -> None:
        ep, c = self._episode, self.model.cfg
        images = torch.stack([im for im, _ in ep["frames"]])[None].to(self.device)  # (1, n_obs, V, 3, S, S)
        if self.state_norm is not None:
            state = torch.stack([st for _, st in ep["frames"]])[None].to(self.device)  # (1, n_obs, D_s)
        else:
            state = torch.zeros(1, c.n_obs, 0, device=self.device)
        emb, mask = ep["text"]
        chunk = self.model.sample_actions(images, state, emb, mask, steps=self.steps, generator=ep["generator"])
        actions = self.action_norm.inverse(chunk[0, : self.execute].float().cpu()).numpy()
        ep["queue"].extend(actions)
        ep["plans"] += 1

    @property
    def plans(self) -> int:
        """Chunks sampled in the current episode."""
        return 0 if self._episode is None else self._episode["plans"]
