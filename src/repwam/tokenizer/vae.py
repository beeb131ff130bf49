"""CausalVAE: a conventional causal 3-D convolutional video VAE, the paper's WAN2.2-VAE tokenizer ablation.

Same interface as RepViTok (encode / decode / stream_encoder / latent_grid / tokens_per_frame / latent_dim /
temporal_patch / num_latent_frames / num_frames / image_size, save_pretrained / from_pretrained), so every
later stage can take either. The WAN weights cannot be had here; this is the same *kind* of model, trained
from scratch: no semantic alignment, reconstruction + a small KL term only.

    frames (B, T, 3, H, W), T = 1 + 4k
      -> (B, 3 p², T, H/p, W/p) (space-to-depth, patch_size p) -> CausalConv3d -> [ResBlock x n, Downsample] per level -> mid ResBlock x 2
      -> GroupNorm, SiLU, CausalConv3d -> (mean, logvar) each (B, d_v, T', h, w)
      -> z = (mean - latent_mean) / latent_std, as tokens (B, T', L = h*w, d_v)
    z -> CausalConv3d -> mid ResBlock x 2 -> [ResBlock x (n+1), Upsample] per level -> GroupNorm, SiLU,
      CausalConv3d -> (B, 3 p², T, H/p, W/p) -> depth-to-space -> frames (B, T, 3, H, W)

Causality in time, as in WAN's VAE. Every 3-D convolution pads time on the left only (zeros), so an output
frame never sees a later input frame. A temporal downsampling step is a causal convolution with kernel 3 and
stride 2 in time: with two frames of left padding it maps 1 + 2m frames to 1 + m, output j ending at input 2j;
two such steps map T = 1 + 4k frames to T' = 1 + k latent frames, latent frame 0 seeing frame 0 alone and latent
frame i seeing frames <= 4i (it covers frames 4i-3 .. 4i). GroupNorm is taken per frame (over channels and
space), never across time, so its statistics cannot carry the future backwards either. The decoder mirrors
this: a temporal upsampling step keeps frame 0 as one frame and turns every later frame into two.

Context window. The stacked causal convolutions see far back: in `tiny` the encoder's receptive field is 76 raw
frames (~19 latent frames) and the decoder's is as long, while training clips have at most 5 latent frames. So
late in a whole episode a one-pass encode hands every layer real history where training only ever had zero
padding, and decodes degrade (measured: 22.9 dB at latent index 1-2, 18.5 dB from index 8 on). With
`context_window = W` (latent frames; RepViTok's attention window plays the same role), `encode` and `decode`
compute latent frame i >= W from the W latent frames ending at i only (raw frames 4(i-W+1) .. 4i, a clip of
1 + 4(W-1) frames exactly like a training clip), taking that window's last latent frame (or its last 4 decoded
frames); frames before index W come from one pass over the start, as in training. `forward` and `encode_dist`
(training) take whole clips. None keeps the plain one-pass behaviour.

Streaming. Because every temporal operation is a causal convolution, the encoder can run chunk by chunk
(the first frame, then each group of 4 frames) if each CausalConv3d remembers the last few input frames of
the previous chunk in place of its zero padding (WAN's feature cache): `model.stream_encoder(B).push(...)`
gives exactly `encode`'s latent frames with constant memory. With a context window the stream keeps the last
1 + 4(W-1) raw frames instead and encodes them at each push (the window's last latent frame).

KL. The encoder outputs a diagonal Gaussian; `encode` returns its mean (deterministic, what downstream stages
use), `encode_dist` the distribution for training. The loss is mean-L1 (+ perceptual, from
`repwam.tokenizer.losses`) + kl_weight * KL, the KL averaged per latent element. kl_weight = 1e-4 per element:
next to an L1 of ~0.05 it keeps the posterior from collapsing to a point and the means from drifting to large
scales without limiting reconstruction (LDM's 1e-6 on *summed* terms is ~2e-8 per element, which in practice
makes a plain autoencoder). Downstream stages expect unit-scale latents: after training, `fit_latent_stats`
stores per-channel mean and std of the posterior means (WAN's VAE ships such constants), which `encode` removes
and `decode` restores.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from repwam.checkpoint import Pretrained
from repwam.errors import RepwamError
from repwam.config import ModelConfig
from repwam.tokenizer.model import EncoderStream, VisualTokenizer

LOGVAR_RANGE = (-30.0, 20.0)  # clamp of the posterior log-variance (as in LDM) against overflow in exp


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------


@dataclass
class VAEConfig(ModelConfig):
    image_size: int = 64  # square frames, H = W = image_size
    in_channels: int = 3
    patch_size: int = 1  # space-to-depth p x p before the first conv and depth-to-space after the last (WAN2.2's VAE: 2)
    latent_dim: int = 32  # d_v: latent channels
    base_channels: int = 24  # width of the full-resolution level
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)  # width per level; each level after the first halves H and W
    temporal_down: tuple[bool, ...] = (False, True, True)  # per downsampling step: also halve time?
    num_res_blocks: int = 1  # ResBlocks per encoder level (the decoder has one more, as in LDM / WAN)
    norm_groups: int = 8
    kl_weight: float = 1e-4  # weight of the per-element mean KL next to the per-pixel mean L1
    # latent frames of context `encode` / `decode` give each latent frame (None: one pass over the whole video);
    # at most the longest training clip's latent frames, so that every window is a context seen in training
    context_window: int | None = None

    def __post_init__(self):
        self.channel_mult, self.temporal_down = tuple(self.channel_mult), tuple(self.temporal_down)
        if len(self.temporal_down) != len(self.channel_mult) - 1:
            raise RepwamError(
                f"temporal_down has {len(self.temporal_down)} entries but there are {len(self.channel_mult) - 1} "
                f"downsampling steps (len(channel_mult) - 1)"
            )
        if self.patch_size < 1:
            raise RepwamError(f"patch_size must be >= 1, got {self.patch_size}")
        if self.image_size % self.spatial_compression:
            raise RepwamError(
                f"image_size={self.image_size} is not a multiple of the spatial compression {self.spatial_compression}"
            )
        if self.context_window is not None and self.context_window < 1:
            raise RepwamError(f"context_window must be >= 1 latent frame or None, got {self.context_window}")
        for c in [self.base_channels * m for m in self.channel_mult]:
            if c % self.norm_groups:
                raise RepwamError(f"channel width {c} is not divisible by norm_groups={self.norm_groups}")

    @property
    def spatial_compression(self) -> int:
        return self.patch_size * 2 ** (len(self.channel_mult) - 1)

    @property
    def temporal_patch(self) -> int:
        return 2 ** sum(self.temporal_down)

    @property
    def grid(self) -> tuple[int, int]:
        n = self.image_size // self.spatial_compression
        return (n, n)

    @property
    def tokens_per_frame(self) -> int:
        h, w = self.grid
        return h * w

    @classmethod
    def presets(cls) -> dict:
        return VAE_PRESETS


# beside RepViTok "tiny" (1.9M): 64x64 frames -> 8x8 latent grid, 4x in time, d_v = 32. A 2x2 space-to-depth
# input (as WAN2.2's VAE) instead of a full-resolution level: ~4x fewer FLOPs, which is what makes a conv VAE
# trainable on a CPU at all (the full-resolution variant, patch_size=1 with channel_mult (1, 2, 2, 2), took
# 21 s per bf16 step of 16 x 17 frames on one thread against RepViTok's 1.2 s)
# context_window 3: the tiny RepViTok's attention window (its clips of 2-5 latent frames all contain it)
_TINY = VAEConfig(image_size=64, latent_dim=32, patch_size=2, base_channels=24, channel_mult=(1, 2, 2),
                  temporal_down=(True, True), context_window=3)
VAE_PRESETS: dict[str, VAEConfig] = {
    "tiny": _TINY,
    # tiny at 128x128: a 4x4 space-to-depth input, the same 8x8 grid
    "tiny128": replace(_TINY, image_size=128, patch_size=4),
    # beside RepViTok "small" (30M): 128x128 -> 16x16 grid, d_v = 64; WAN's level widths (1, 2, 4, 4) and
    # 2 ResBlocks per level (34M params)
    "small": VAEConfig(
        image_size=128, latent_dim=64, base_channels=48, channel_mult=(1, 2, 4, 4), num_res_blocks=2, norm_groups=16,
        context_window=3,
    ),
}


# --------------------------------------------------------------------------------------------
# layers: all on (B, C, T, H, W)
# --------------------------------------------------------------------------------------------


class CausalConv3d(nn.Conv3d):
    """Conv3d with zero padding on the left in time only (causal) and symmetric ("same") padding in space.

    With a `cache` dict (streaming) the left padding is the last `kt - stride_t` input frames of the previous
    chunk instead of zeros, so chunk-by-chunk outputs equal the whole-clip outputs.
    """

    def __init__(self, c_in: int, c_out: int, kernel=(3, 3, 3), stride=(1, 1, 1)):
        super().__init__(c_in, c_out, kernel, stride=stride)
        kt, kh, kw = kernel
        self.time_pad = kt - 1
        self.space_pad = (kw // 2, kw // 2, kh // 2, kh // 2)
        self.carry = kt - stride[0]  # input frames the next chunk's first window still needs

    def forward(self, x, cache: dict | None = None):
        if cache is None:
            return super().forward(F.pad(x, (*self.space_pad, self.time_pad, 0)))
        past = cache.get(self)
        if past is None:  # first chunk: zeros, as in the whole-clip pass
            past = x.new_zeros(*x.shape[:2], self.time_pad, *x.shape[3:])
        x = torch.cat([past, x], dim=2)
        if self.carry > 0:
            cache[self] = x[:, :, x.shape[2] - self.carry :]
        return super().forward(F.pad(x, self.space_pad))


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over (C, H, W) of each frame on its own: statistics never mix time steps (causality)."""

    def forward(self, x):
        b = x.shape[0]
        y = super().forward(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(y, "(b t) c h w -> b c t h w", b=b)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> CausalConv3d, twice, plus a (1x1x1 projected) skip."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = FrameGroupNorm(groups, c_in), CausalConv3d(c_in, c_out)
        self.norm2, self.conv2 = FrameGroupNorm(groups, c_out), CausalConv3d(c_out, c_out)
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, cache: dict | None = None):
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve H and W (stride-2 conv per frame); optionally halve time: causal stride-2 conv, 1 + 2m -> 1 + m."""

    def __init__(self, c: int, temporal: bool):
        super().__init__()
        self.spatial = CausalConv3d(c, c, kernel=(1, 3, 3), stride=(1, 2, 2))
        self.temporal = CausalConv3d(c, c, kernel=(3, 1, 1), stride=(2, 1, 1)) if temporal else None

    def forward(self, x, cache: dict | None = None):
        x = self.spatial(x, cache)
        return x if self.temporal is None else self.temporal(x, cache)


class Upsample(nn.Module):
    """Optionally double time (frame 0 stays one frame; a causal conv gives every later frame 2C channels,
    read as two frames: 1 + m -> 1 + 2m), then double H and W (nearest + conv per frame)."""

    def __init__(self, c: int, temporal: bool):
        super().__init__()
        self.temporal = CausalConv3d(c, 2 * c, kernel=(3, 1, 1)) if temporal else None
        self.spatial = CausalConv3d(c, c, kernel=(1, 3, 3))

    def forward(self, x):
        if self.temporal is not None and x.shape[2] > 1:
            later = rearrange(self.temporal(x)[:, :, 1:], "b (two c) t h w -> b c (t two) h w", two=2)
            x = torch.cat([x[:, :, :1], later], dim=2)
        b = x.shape[0]
        x = F.interpolate(rearrange(x, "b c t h w -> (b t) c h w"), scale_factor=2.0, mode="nearest")
        return self.spatial(rearrange(x, "(b t) c h w -> b c t h w", b=b))


class Encoder(nn.Module):
    """Frames (B, C, T, H, W) -> posterior parameters (B, 2 d_v, T', h, w)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths, g = [cfg.base_channels * m for m in cfg.channel_mult], cfg.norm_groups
        self.patch = cfg.patch_size
        self.conv_in = CausalConv3d(cfg.in_channels * cfg.patch_size**2, widths[0])
        layers, c = [], widths[0]
        for i, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(c, w, g))
                c = w
            if i < len(widths) - 1:
                layers.append(Downsample(c, cfg.temporal_down[i]))
        layers += [ResBlock(c, c, g), ResBlock(c, c, g)]  # mid
        self.layers = nn.ModuleList(layers)
        self.norm_out = FrameGroupNorm(g, c)
        self.conv_out = CausalConv3d(c, 2 * cfg.latent_dim)

    def forward(self, x, cache: dict | None = None):
        x = rearrange(x, "b c t (h p) (w q) -> b (c p q) t h w", p=self.patch, q=self.patch)  # space-to-depth
        x = self.conv_in(x, cache)
        for layer in self.layers:
            x = layer(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


class Decoder(nn.Module):
    """Latents (B, d_v, T', h, w) -> frames (B, C, T, H, W)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths, g = [cfg.base_channels * m for m in cfg.channel_mult], cfg.norm_groups
        c = widths[-1]
        self.conv_in = CausalConv3d(cfg.latent_dim, c)
        layers = [ResBlock(c, c, g), ResBlock(c, c, g)]  # mid
        for i in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResBlock(c, widths[i], g))
                c = widths[i]
            if i > 0:
                layers.append(Upsample(c, cfg.temporal_down[i - 1]))
        self.layers = nn.ModuleList(layers)
        self.norm_out = FrameGroupNorm(g, c)
        self.patch = cfg.patch_size
        self.conv_out = CausalConv3d(c, cfg.in_channels * cfg.patch_size**2)

    def forward(self, z):
        x = self.conv_in(z)
        for layer in self.layers:
            x = layer(x)
        x = self.conv_out(F.silu(self.norm_out(x)))
        return rearrange(x, "b (c p q) t h w -> b c t (h p) (w q)", p=self.patch, q=self.patch)  # depth-to-space


# --------------------------------------------------------------------------------------------
# posterior and KL
# --------------------------------------------------------------------------------------------


@dataclass
class DiagonalGaussian:
    """The encoder's posterior q(z | frames) in raw latent units; mean, logvar (B, T', L, d_v)."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * eps

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)), averaged over batch, latent frames, tokens and channels."""
        return kl_divergence(self.mean, self.logvar)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean per element of KL(N(mean, exp(logvar)) || N(0, 1)) = 0.5 (mean^2 + var - 1 - logvar)."""
    return 0.5 * (mean.float().square() + logvar.float().exp() - 1.0 - logvar.float()).mean()


# --------------------------------------------------------------------------------------------
# the tokenizer
# --------------------------------------------------------------------------------------------


class CausalVAE(VisualTokenizer, Pretrained, nn.Module):
    """Causal 3-D conv video VAE: frames (B, T, 3, H, W) in [-1, 1] <-> z (B, T', L, d_v)."""

    checkpoint_type = "repwam.vae"
    config_class = VAEConfig
    config_key = "vae"

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # per-channel statistics of the posterior means (fit_latent_stats); saved with the weights
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_dim))
        self.register_buffer("latent_std", torch.ones(cfg.latent_dim))

    # ---- shapes and validation ----

    def _check_frames(self, frames: torch.Tensor) -> torch.Tensor:
        c, s = self.cfg.in_channels, self.image_size
        if frames.ndim == 4:  # (B, C, H, W): a batch of single images, T = 1
            frames = frames[:, None]
        if frames.ndim != 5 or tuple(frames.shape[2:]) != (c, s, s):
            raise RepwamError(
                f"got frames of shape {tuple(frames.shape)}; the VAE accepts (B, T, {c}, {s}, {s}) "
                f"(image_size={s}) or (B, {c}, {s}, {s}) for single images"
            )
        self.num_latent_frames(frames.shape[1])
        return frames

    # ---- context window ----

    def _windows(self, x: torch.Tensor, step: int, first: int) -> torch.Tensor:
        """(B, N, ...) -> (B * n, first + step (W-1), ...): the windows of W latent frames ending at latent frames
        W .. n + W - 1, where latent frame i spans items [0, first) for i = 0 and first + step (i-1) .. first + step i - 1."""
        W = self.cfg.context_window
        size = first + step * (W - 1)
        win = x.unfold(1, size, step)[:, 1:]  # (B, n, ..., size): windows starting at latent frames 1 .. n
        win = win.movedim(-1, 2)  # (B, n, size, ...)
        return win.flatten(0, 1)

    def _windowed(self, fn, x: torch.Tensor, step: int, first: int, out_step: int) -> torch.Tensor:
        """Run `fn` (a causal map from (B, N, ...) to (B, N_out, ...), latent frame i >= 1 of the input giving the
        `out_step` output items after those of frame i - 1) with the context window: one pass
        over the first W latent frames, then each later latent frame from the W latent frames ending at it."""
        W, n_lat = self.cfg.context_window, 1 + (x.shape[1] - first) // step
        if W is None or n_lat <= W:
            return fn(x)
        head = fn(x[:, : first + step * (W - 1)])
        B = x.shape[0]
        tail = fn(self._windows(x, step, first))[:, -out_step:]  # (B * n, out_step, ...)
        tail = tail.reshape(B, -1, *tail.shape[2:])
        return torch.cat([head, tail], dim=1)

    def _encode_mean(self, frames: torch.Tensor) -> torch.Tensor:
        """Posterior means (raw units) (B, T', L, d_v) under the context window."""
        frames = self._check_frames(frames)
        p = self.temporal_patch
        return self._windowed(lambda f: self.encode_dist(f).mean, frames, p, 1, 1)

    # ---- latent units ----

    def _to_tokens(self, h: torch.Tensor) -> torch.Tensor:
        return rearrange(h, "b c t h w -> b t (h w) c")

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.latent_mean.to(raw.dtype)) / self.latent_std.to(raw.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std.to(z.dtype) + self.latent_mean.to(z.dtype)

    @torch.no_grad()
    def fit_latent_stats(self, clips: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Set latent_mean / latent_std per channel from the posterior means of `clips` (batches of frames),
        so that `encode` gives ~zero-mean, unit-variance latents. Call after training, before saving."""
        n, s1, s2 = 0, 0.0, 0.0
        for frames in clips:
            mean = self._encode_mean(frames).double().flatten(0, 2)  # (N, d_v)
            n, s1, s2 = n + mean.shape[0], s1 + mean.sum(0), s2 + mean.square().sum(0)
        if n == 0:
            raise RepwamError("fit_latent_stats got no clips")
        mu = s1 / n
        std = (s2 / n - mu.square()).clamp_min(1e-12).sqrt()
        self.latent_mean.copy_(mu.float())
        self.latent_std.copy_(std.float())
        return self.latent_mean, self.latent_std

    # ---- API ----

    def encode_dist(self, frames: torch.Tensor) -> DiagonalGaussian:
        """frames (B, T, 3, H, W) in [-1, 1], T = 1 + 4k -> posterior, raw units, mean/logvar (B, T', L, d_v)."""
        frames = self._check_frames(frames)
        h = self._to_tokens(self.encoder(rearrange(frames, "b t c h w -> b c t h w")))
        mean, logvar = h.chunk(2, dim=-1)
        return DiagonalGaussian(mean, logvar.clamp(*LOGVAR_RANGE))

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, T, 3, H, W) in [-1, 1], T = 1 + 4k -> z (B, T', L, d_v): the normalised posterior mean
        (under the context window)."""
        return self.normalize(self._encode_mean(frames))

    def _decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        h, w = self.latent_grid
        x = self.decoder(rearrange(raw, "b t (h w) c -> b c t h w", h=h, w=w))
        return rearrange(x, "b c t h w -> b t c h w")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, T', L, d_v) (normalised, as `encode` gives) -> frames (B, 1 + 4(T'-1), 3, H, W)."""
        L, dv = self.tokens_per_frame, self.latent_dim
        if z.ndim != 4 or tuple(z.shape[2:]) != (L, dv) or z.shape[1] < 1:
            raise RepwamError(f"got latents of shape {tuple(z.shape)}; the decoder accepts (B, T', {L}, {dv})")
        p = self.temporal_patch
        return self._windowed(self._decode_raw, self.denormalize(z), 1, 1, p)

    def forward(self, frames: torch.Tensor, sample: bool | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        """frames -> (recon (B, T, 3, H, W), posterior). The decoder sees a posterior sample when `sample`
        (default: in training mode), the mean otherwise."""
        posterior = self.encode_dist(frames)
        sample = self.training if sample is None else sample
        return self._decode_raw(posterior.sample() if sample else posterior.mean), posterior

    def loss_terms(self, recon: torch.Tensor, frames: torch.Tensor, posterior: DiagonalGaussian) -> dict:
        """{"l1", "kl", "loss" = l1 + kl_weight * kl}. Add a perceptual term (TokenizerLoss with align=0) on top."""
        out = {"l1": (recon - frames).abs().mean(), "kl": posterior.kl()}
        out["loss"] = out["l1"] + self.cfg.kl_weight * out["kl"]
        return out

    def stream_encoder(self, batch_size: int) -> "VAEEncoderStream":
        """An online encoder: push the first frame, then each group of `temporal_patch` frames."""
        return VAEEncoderStream(self, batch_size)



class VAEEncoderStream(EncoderStream):
    """CausalVAE's stream: each CausalConv3d keeps the last kt - stride_t input frames of the previous chunk
    (at most 2 frames per convolution), so memory is constant however long the stream runs. With a context
    window W it keeps the last 1 + 4(W-1) raw frames instead and encodes that window at every push."""

    def __init__(self, model: CausalVAE, batch_size: int):
        super().__init__(model, batch_size)
        self.cache: dict = {}
        self.frames: torch.Tensor | None = None  # (B, <= 1 + 4(W-1), C, H, W) with a context window

    def reset(self):
        super().reset()
        self.cache, self.frames = {}, None

    def _step(self, frames):
        m = self.tokenizer
        W = m.cfg.context_window
        if W is not None:
            keep = 1 + m.temporal_patch * (W - 1)
            self.frames = frames if self.frames is None else torch.cat([self.frames, frames], dim=1)[:, -keep:]
            return m.normalize(m.encode_dist(self.frames).mean[:, -1])  # (B, L, d_v)
        h = m.encoder(rearrange(frames, "b t c h w -> b c t h w"), self.cache)  # (B, 2 d_v, 1, h, w)
        mean = m._to_tokens(h)[:, 0].chunk(2, dim=-1)[0]
        return m.normalize(mean)  # (B, L, d_v)
