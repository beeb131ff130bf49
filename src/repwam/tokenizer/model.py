"""RepViTok: the ViT video autoencoder of RepWAM stage [1] (visual half).

A clip has T = 1 + 4k frames in [-1, 1]. The first frame is cut into p x p patches (Conv2d),
later frames into 4 x p x p tubelets (Conv3d), giving T' = 1 + (T-1)/4 latent frames of
L = (H/p)(W/p) tokens. A single image is the T = 1 case.

    frames (B, T, 3, H, W)
      -> PatchEmbed               (B, T', L, width)   + spatial position embedding
      -> encoder ViT blocks       full attention within a latent frame, causal across latent frames
      -> LatentProjection         attention layer whose output projection goes width -> d_v
      -> LayerNorm (no affine)    z (B, T', L, d_v)
    z -> Linear d_v -> width -> decoder ViT blocks (same mask) -> Unpatchify (ConvTranspose2d / 3d)
      -> frames (B, T, 3, H, W)

Positions. Space: an absolute embedding over the L tokens of a latent frame (learned by default,
or fixed 2-D sin-cos), added once at the input of the encoder and of the decoder. Time: rotary
embeddings (RoPE, Su et al. 2021) on the latent-frame index, applied to queries and keys in every
attention layer. Tokens of the same latent frame share a temporal position, so RoPE leaves the
spatial attention untouched and makes the cross-frame attention depend only on the *offset*
between latent frames, never on the absolute index. With `attn_window = w` every latent frame
attends to itself and the w-1 frames before it, so the encoder sees exactly the same relative
geometry at latent frame 100 as at latent frame 5: it can encode videos longer than it was trained
on (the receptive field still grows with depth: (w-1)·(depth+1) frames back through the stack).
Without a window, clips longer than `max_latent_frames` are refused (RepwamError). The
alternative `temporal_pos="sincos"` (an absolute sin-cos embedding over the latent-frame index)
is kept for comparison; it formally extrapolates but feeds unseen absolute positions.

The encoder output z is LayerNorm'ed without affine parameters: every latent token has zero mean
and unit variance over its d_v channels, a fixed scale for the downstream LAT and WAM.

Streaming (online encoding for the policy). `stream = model.stream_encoder(B)`, then
`stream.push(first_frame)` and `stream.push(tubelet)` for each `temporal_patch` frames as they arrive;
every push returns that latent frame's z (B, L, d_v), equal to the matching slice of `encode` on the
whole clip. Each attention layer (encoder blocks and the latent projection) keeps a `KVCache` of the
keys and values of earlier latent frames; with `attn_window = w` it keeps only the w - 1 frames a later
frame may still see, so memory and cost per push are constant. Keys are cached *before* RoPE and rotated
at each push with positions counted from the oldest cached frame (0 .. n): RoPE scores depend only on
the offset between query and key frames, so this shift is exact and the rotation angles stay bounded
(< w) however long the stream runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from repwam.checkpoint import Pretrained
from repwam.config import ModelConfig
from repwam.errors import RepwamError
from repwam.layers import MLP, apply_rope, rope_cos_sin, sincos_1d, sincos_2d  # noqa: F401  (re-exported)


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------


@dataclass
class TokenizerConfig(ModelConfig):
    image_size: int = 64  # square frames, H = W = image_size
    patch_size: int = 8  # p: spatial patch side
    temporal_patch: int = 4  # raw frames per tubelet (latent frames > 0)
    in_channels: int = 3
    width: int = 128  # ViT width of encoder and decoder
    depth: int = 4  # blocks in the encoder and (symmetrically) in the decoder
    heads: int = 4
    latent_dim: int = 32  # d_v
    mlp_ratio: float = 4.0
    max_latent_frames: int = 8  # longest clip (latent frames) accepted when attn_window is None
    attn_window: int | None = None  # attend to the last `attn_window` latent frames (incl. own)
    spatial_pos: str = "learned"  # "learned" | "sincos"
    temporal_pos: str = "rope"  # "rope" (relative) | "sincos" (absolute)
    qk_norm: bool = True  # LayerNorm on queries and keys per head (stable training)
    # stride-2 3x3 convolutions on every frame before the patch projection (0: the plain linear patchify), widths
    # 32, 64, ...; the projection then takes patch_size / 2^conv_stem patches of their features. Early convolutions
    # (Xiao et al. 2021) let a ViT see details smaller than a patch (a 2-cm puck is 1-2 pixels at 64 px)
    conv_stem: int = 0
    grad_checkpoint: bool = False  # the model's initial `grad_checkpoint` (activation checkpointing of the blocks)

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise RepwamError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )
        if self.width % self.heads:
            raise RepwamError(f"width={self.width} is not divisible by heads={self.heads}")
        if (self.width // self.heads) % 2:
            raise RepwamError(f"head dim {self.width // self.heads} must be even (rotary embedding)")
        if self.temporal_patch < 1:
            raise RepwamError(f"temporal_patch must be >= 1, got {self.temporal_patch}")
        if self.attn_window is not None and self.attn_window < 1:
            raise RepwamError(f"attn_window must be None or >= 1, got {self.attn_window}")
        if self.spatial_pos not in ("learned", "sincos"):
            raise RepwamError(f"spatial_pos must be 'learned' or 'sincos', got {self.spatial_pos!r}")
        if self.temporal_pos not in ("rope", "sincos"):
            raise RepwamError(f"temporal_pos must be 'rope' or 'sincos', got {self.temporal_pos!r}")
        if self.conv_stem < 0 or self.patch_size % 2**self.conv_stem:
            raise RepwamError(f"conv_stem={self.conv_stem} needs patch_size={self.patch_size} divisible by "
                              f"2^{self.conv_stem} (each stem layer halves the resolution)")

    @property
    def grid(self) -> tuple[int, int]:
        n = self.image_size // self.patch_size
        return (n, n)

    @property
    def tokens_per_frame(self) -> int:
        h, w = self.grid
        return h * w

    @classmethod
    def presets(cls) -> dict:
        return PRESETS


# trains on a 2-core CPU: 64x64 frames, 8x8 = 64 tokens per latent frame (~1.7M params)
_TINY = TokenizerConfig(image_size=64, patch_size=8, width=128, depth=4, heads=4, latent_dim=32)
PRESETS: dict[str, TokenizerConfig] = {
    "tiny": _TINY,
    # tiny at 128x128: 16x16 patches, the same 8x8 grid and compute past the patch embedding (4x the pixels each)
    "tiny128": replace(_TINY, image_size=128, patch_size=16),
    # one GPU: 128x128 frames, 16x16 = 256 tokens per latent frame (~29M params)
    "small": TokenizerConfig(image_size=128, patch_size=8, width=384, depth=8, heads=6, latent_dim=64),
    # paper: 256x256, p=16, 12 layers x 768 for encoder and decoder, d_v = 96 (~176M params)
    "base": TokenizerConfig(
        image_size=256, patch_size=16, width=768, depth=12, heads=12, latent_dim=96, max_latent_frames=16
    ),
}


# --------------------------------------------------------------------------------------------
# masks (positions: repwam.layers)
# --------------------------------------------------------------------------------------------


def block_causal_mask(
    num_frames: int, tokens_per_frame: int, window: int | None = None, device=None
) -> torch.Tensor:
    """Boolean attention mask (N, N), N = num_frames * tokens_per_frame; True = may attend.

    Query token in latent frame i attends to key token in latent frame j iff j <= i (causal
    across frames, full within a frame) and, with a window, i - j < window (the last `window`
    latent frames, its own included).
    """
    frame = torch.arange(num_frames, device=device).repeat_interleave(tokens_per_frame)  # (N,)
    q, k = frame[:, None], frame[None, :]
    mask = k <= q
    if window is not None:
        mask = mask & (q - k < window)
    return mask


# --------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------


class KVCache:
    """Keys (after qk-norm, before RoPE) and values of the earlier latent frames one attention layer still sees.

    Used by the streaming encoder: each push appends one latent frame of L tokens. `max_frames` is the number
    of earlier frames a later query may attend to (attn_window - 1; None = all), so the cache never holds more.
    """

    def __init__(self, tokens_per_frame: int, max_frames: int | None):
        self.tokens_per_frame, self.max_frames = tokens_per_frame, max_frames
        self.k: torch.Tensor | None = None  # (B, heads, n * L, head_dim)
        self.v: torch.Tensor | None = None

    @property
    def num_frames(self) -> int:
        return 0 if self.k is None else self.k.shape[2] // self.tokens_per_frame

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this push's k, v (B, heads, L, d); return cached + new (what the queries attend to)."""
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        n = k.shape[2]
        keep = n if self.max_frames is None else min(n, self.max_frames * self.tokens_per_frame)
        self.k, self.v = (k[:, :, n - keep :], v[:, :, n - keep :]) if keep else (None, None)
        return k, v


class Attention(nn.Module):
    """Multi-head self-attention with masked SDPA and temporal RoPE; out_dim may differ from dim.

    Full pass: x holds every token, `mask` is the block-causal mask. Streaming: x holds the new latent
    frame only, `cache` supplies the earlier frames' keys and values (and takes this frame's), no mask.
    """

    def __init__(self, dim: int, heads: int, out_dim: int | None = None, qk_norm: bool = True):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, out_dim or dim)

    def forward(self, x, mask=None, rope=None, cache: KVCache | None = None):
        # x (B, N, dim); keys are the cached M tokens (if any) followed by these N; mask (N, M + N) bool or None;
        # rope (cos, sin) each (M + N, head_dim/2) for the key positions; the queries take the last N rows
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if cache is not None:
            k, v = cache.extend(k, v)
        if rope is not None:
            cos, sin = rope
            n = q.shape[2]
            q, k = apply_rope(q, cos[-n:], sin[-n:]), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, N, d)
        return self.proj(rearrange(y, "b h n d -> b n (h d)"))


class Block(nn.Module):
    """Pre-norm ViT block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, qk_norm=qk_norm)
        self.norm2, self.mlp = nn.LayerNorm(dim), MLP(dim, int(dim * mlp_ratio))

    def forward(self, x, mask=None, rope=None, cache: KVCache | None = None):
        x = x + self.attn(self.norm1(x), mask, rope, cache)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Frame 0 -> p x p patches (Conv2d); frames 1.. -> tp x p x p tubelets (Conv3d). With conv_stem = k, each
    frame first goes through k stride-2 3x3 convolutions (GELU after each), and the patches are p / 2^k of their
    features."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        tp, c = cfg.temporal_patch, cfg.in_channels
        layers = []
        for i in range(cfg.conv_stem):
            layers += [nn.Conv2d(c, 32 * 2**i, kernel_size=3, stride=2, padding=1), nn.GELU()]
            c = 32 * 2**i
        self.stem = nn.Sequential(*layers) if layers else None
        p = cfg.patch_size // 2**cfg.conv_stem
        self.image_proj = nn.Conv2d(c, cfg.width, kernel_size=p, stride=p)
        self.tubelet_proj = nn.Conv3d(c, cfg.width, kernel_size=(tp, p, p), stride=(tp, p, p))

    def forward(self, frames, starts_clip: bool = True):
        # frames (B, T, C, H, W) -> tokens (B, T', L, width). starts_clip=False: frames are whole tubelets only
        # (a streaming push after the first frame)
        if self.stem is not None:  # per frame: (B, T, C, H, W) -> (B, T, C_s, H / 2^k, W / 2^k)
            x = self.stem(rearrange(frames, "b t c h w -> (b t) c h w"))
            frames = rearrange(x, "(b t) c h w -> b t c h w", b=frames.shape[0])
        tokens = []
        if starts_clip:
            x0 = self.image_proj(frames[:, 0])  # (B, width, h, w)
            tokens.append(rearrange(x0, "b c h w -> b 1 (h w) c"))
            frames = frames[:, 1:]
        if frames.shape[1] > 0:
            xt = self.tubelet_proj(rearrange(frames, "b t c h w -> b c t h w"))  # (B, width, k, h, w)
            tokens.append(rearrange(xt, "b c t h w -> b t (h w) c"))
        return torch.cat(tokens, dim=1)


class Unpatchify(nn.Module):
    """Tokens -> pixels with transposed convolutions: latent frame 0 -> one frame, others -> tp frames."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        p, tp = cfg.patch_size, cfg.temporal_patch
        self.grid = cfg.grid
        self.image_head = nn.ConvTranspose2d(cfg.width, cfg.in_channels, kernel_size=p, stride=p)
        self.tubelet_head = nn.ConvTranspose3d(
            cfg.width, cfg.in_channels, kernel_size=(tp, p, p), stride=(tp, p, p)
        )

    def forward(self, x):
        # x (B, T', L, width) -> frames (B, T, C, H, W), T = 1 + tp (T' - 1)
        h, w = self.grid
        f0 = self.image_head(rearrange(x[:, 0], "b (h w) c -> b c h w", h=h, w=w))  # (B, C, H, W)
        out = [f0[:, None]]
        if x.shape[1] > 1:
            ft = self.tubelet_head(rearrange(x[:, 1:], "b t (h w) c -> b c t h w", h=h, w=w))
            out.append(rearrange(ft, "b c t h w -> b t c h w"))
        return torch.cat(out, dim=1)


# --------------------------------------------------------------------------------------------
# the tokenizer
# --------------------------------------------------------------------------------------------


class VisualTokenizer:
    """The interface later stages see a tokenizer through (RAE-style: swap the tokenizer, keep the world model):
    encode / decode / stream_encoder, and these shapes. `self.cfg` has grid, tokens_per_frame, latent_dim,
    temporal_patch and image_size."""

    @property
    def latent_grid(self) -> tuple[int, int]:
        return self.cfg.grid

    @property
    def tokens_per_frame(self) -> int:
        return self.cfg.tokens_per_frame

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    @property
    def temporal_patch(self) -> int:
        return self.cfg.temporal_patch

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    def num_latent_frames(self, num_frames: int) -> int:
        tp = self.temporal_patch
        if num_frames < 1 or (num_frames - 1) % tp:
            accepted = ", ".join(str(1 + tp * k) for k in range(4))
            raise RepwamError(
                f"got T={num_frames} frames; {type(self).__name__} accepts T = 1 + {tp}k frames ({accepted}, ...)"
            )
        return 1 + (num_frames - 1) // tp

    def num_frames(self, num_latent_frames: int) -> int:
        return 1 + self.temporal_patch * (num_latent_frames - 1)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class RepViTok(VisualTokenizer, Pretrained, nn.Module):
    """Causal ViT video autoencoder: frames (B, T, 3, H, W) in [-1, 1] <-> z (B, T', L, d_v).

    The tokenizer interface every stage-[1] model offers (RepViTok, CausalVAE): `encode`, `decode`,
    `stream_encoder`, `latent_grid`, `tokens_per_frame`, `latent_dim`, `temporal_patch`, `image_size`,
    `num_latent_frames(T)`, `num_frames(T')`, and `save_pretrained` / `from_pretrained`.
    """

    checkpoint_type = "repwam.tokenizer"
    config_class = TokenizerConfig
    config_key = "tokenizer"

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        L, D = cfg.tokens_per_frame, cfg.width
        self.patch_embed = PatchEmbed(cfg)
        if cfg.spatial_pos == "learned":
            self.enc_pos = nn.Parameter(torch.zeros(L, D))
            self.dec_pos = nn.Parameter(torch.zeros(L, D))
        else:
            self.register_buffer("enc_pos", sincos_2d(*cfg.grid, D), persistent=False)
            self.register_buffer("dec_pos", sincos_2d(*cfg.grid, D), persistent=False)
        mk = lambda: Block(D, cfg.heads, cfg.mlp_ratio, cfg.qk_norm)  # noqa: E731
        self.encoder = nn.ModuleList([mk() for _ in range(cfg.depth)])
        self.enc_norm = nn.LayerNorm(D)
        # attention-based projection to the latent width, then a parameter-free LayerNorm
        self.latent_proj = Attention(D, cfg.heads, out_dim=cfg.latent_dim, qk_norm=cfg.qk_norm)
        self.latent_norm = nn.LayerNorm(cfg.latent_dim, elementwise_affine=False)

        self.dec_in = nn.Linear(cfg.latent_dim, D)
        self.decoder = nn.ModuleList([mk() for _ in range(cfg.depth)])
        self.dec_norm = nn.LayerNorm(D)
        self.unpatchify = Unpatchify(cfg)
        # recompute each block's activations in backward instead of keeping them (training only); a setting of how
        # to train, not of the model: the trainer sets it (optim.activation_checkpointing) without touching cfg
        self.grad_checkpoint = cfg.grad_checkpoint
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.cfg.spatial_pos == "learned":
            nn.init.normal_(self.enc_pos, std=0.02)
            nn.init.normal_(self.dec_pos, std=0.02)

    # ---- shapes and validation ----

    def _check_frames(self, frames: torch.Tensor) -> torch.Tensor:
        c, s = self.cfg.in_channels, self.cfg.image_size
        if frames.ndim == 4:  # (B, C, H, W): a batch of single images, T = 1
            frames = frames[:, None]
        if frames.ndim != 5 or tuple(frames.shape[2:]) != (c, s, s):
            raise RepwamError(
                f"got frames of shape {tuple(frames.shape)}; the tokenizer accepts (B, T, {c}, {s}, {s}) "
                f"(image_size={s}) or (B, {c}, {s}, {s}) for single images"
            )
        self._check_length(self.num_latent_frames(frames.shape[1]))
        return frames

    def _check_length(self, t_lat: int, what: str = "clip"):
        if self.cfg.attn_window is None and t_lat > self.cfg.max_latent_frames:
            raise RepwamError(
                f"{what} has {t_lat} latent frames but max_latent_frames={self.cfg.max_latent_frames} and "
                "no attn_window is set; set attn_window to encode longer videos, or encode shorter clips"
            )

    # ---- attention context ----

    def _context(self, t_lat: int, device):
        """Mask and temporal rotary tables for a sequence of t_lat latent frames."""
        L = self.cfg.tokens_per_frame
        mask = None if t_lat == 1 else block_causal_mask(t_lat, L, self.cfg.attn_window, device=device)
        rope = None
        if self.cfg.temporal_pos == "rope":
            pos = torch.arange(t_lat, device=device).repeat_interleave(L)  # (N,) latent-frame index
            rope = rope_cos_sin(pos, self.cfg.width // self.cfg.heads)
        return mask, rope

    def _add_pos(self, x, pos, first_frame: int = 0):
        # x (B, T', L, D) holding latent frames first_frame, first_frame + 1, ...; pos (L, D) spatial
        # [+ absolute temporal sin-cos]
        x = x + pos.to(x.dtype)
        if self.cfg.temporal_pos == "sincos":
            t = sincos_1d(torch.arange(first_frame, first_frame + x.shape[1], device=x.device), x.shape[-1])
            x = x + t[:, None].to(x.dtype)
        return rearrange(x, "b t l d -> b (t l) d")

    def _run(self, blocks, x, mask, rope, caches=None):
        for i, blk in enumerate(blocks):
            cache = None if caches is None else caches[i]
            if self.grad_checkpoint and self.training and torch.is_grad_enabled() and cache is None:
                x = checkpoint(blk, x, mask, rope, use_reentrant=False)
            else:
                x = blk(x, mask, rope, cache)
        return x

    def _encode_tokens(self, x, mask, rope, caches=None):
        """Encoder blocks + latent projection: tokens (B, N, D) -> z (B, N, d_v). Shared by `encode` and the
        stream; `caches` holds one KVCache per attention layer (the blocks, then the latent projection)."""
        x = self._run(self.encoder, x, mask, rope, None if caches is None else caches[:-1])
        x = self.latent_proj(self.enc_norm(x), mask, rope, None if caches is None else caches[-1])
        return self.latent_norm(x)

    # ---- API ----

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, T, 3, H, W) in [-1, 1], T = 1 + 4k -> z (B, T', L, d_v)."""
        frames = self._check_frames(frames)
        x = self.patch_embed(frames)  # (B, T', L, D)
        t_lat = x.shape[1]
        mask, rope = self._context(t_lat, x.device)
        z = self._encode_tokens(self._add_pos(x, self.enc_pos), mask, rope)  # (B, T'L, d_v)
        return rearrange(z, "b (t l) c -> b t l c", t=t_lat)

    def stream_encoder(self, batch_size: int) -> "ViTEncoderStream":
        """An online encoder: push the first frame, then each tubelet of `temporal_patch` frames."""
        return ViTEncoderStream(self, batch_size)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, T', L, d_v) -> frames (B, 1 + 4(T'-1), 3, H, W)."""
        L, dv = self.cfg.tokens_per_frame, self.cfg.latent_dim
        if z.ndim != 4 or tuple(z.shape[2:]) != (L, dv):
            raise RepwamError(f"got latents of shape {tuple(z.shape)}; the decoder accepts (B, T', {L}, {dv})")
        t_lat = z.shape[1]
        self._check_length(t_lat)
        mask, rope = self._context(t_lat, z.device)
        x = self._run(self.decoder, self._add_pos(self.dec_in(z), self.dec_pos), mask, rope)
        x = rearrange(self.dec_norm(x), "b (t l) d -> b t l d", t=t_lat)
        return self.unpatchify(x)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, T, 3, H, W) -> (recon (B, T, 3, H, W), z (B, T', L, d_v))."""
        z = self.encode(frames)
        return self.decode(z), z



# --------------------------------------------------------------------------------------------
# streaming encoder
# --------------------------------------------------------------------------------------------


class EncoderStream:
    """Online encoding of one batch of videos, one latent frame per `push` (shared by every tokenizer).

    push 0 takes the first frame, (B, 1, C, H, W) or (B, C, H, W); push i > 0 takes the next
    `temporal_patch` frames (B, temporal_patch, C, H, W). Each returns that latent frame's z (B, L, d_v),
    equal (up to float rounding) to `encode(all frames so far)[:, -1]`. Runs without gradients.
    Subclasses implement `_step(frames (B, n, C, H, W)) -> z (B, L, d_v)` and `reset`.
    """

    def __init__(self, tokenizer, batch_size: int):
        if batch_size < 1:
            raise RepwamError(f"batch_size must be >= 1, got {batch_size}")
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.num_pushed = 0  # latent frames encoded so far

    def expected_frames(self) -> int:
        return 1 if self.num_pushed == 0 else self.tokenizer.temporal_patch

    def _check(self, frames: torch.Tensor) -> torch.Tensor:
        n, B = self.expected_frames(), self.batch_size
        c, s = self.tokenizer.cfg.in_channels, self.tokenizer.image_size
        if frames.ndim == 4 and n == 1:
            frames = frames[:, None]
        if frames.ndim != 5 or tuple(frames.shape) != (B, n, c, s, s):
            which = "the first push takes the first frame" if self.num_pushed == 0 else (
                f"push {self.num_pushed} takes the next tubelet of temporal_patch={n} frames")
            raise RepwamError(
                f"stream push got frames of shape {tuple(frames.shape)}; {which}: ({B}, {n}, {c}, {s}, {s})"
                + (f" or ({B}, {c}, {s}, {s})" if n == 1 else "")
            )
        return frames

    def push(self, frames: torch.Tensor) -> torch.Tensor:
        frames = self._check(frames)
        with torch.no_grad():
            z = self._step(frames)
        self.num_pushed += 1
        return z

    def _step(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reset(self):
        """Start a new video (an episode boundary)."""
        self.num_pushed = 0


class ViTEncoderStream(EncoderStream):
    """RepViTok's stream: one KVCache per encoder attention layer, each holding at most attn_window - 1
    earlier latent frames (all of them without a window, up to max_latent_frames)."""

    def __init__(self, model: RepViTok, batch_size: int):
        super().__init__(model, batch_size)
        self.reset()

    def reset(self):
        super().reset()
        cfg = self.tokenizer.cfg
        keep = None if cfg.attn_window is None else cfg.attn_window - 1
        self.caches = [KVCache(cfg.tokens_per_frame, keep) for _ in range(cfg.depth + 1)]

    @property
    def cache_frames(self) -> int:
        """Earlier latent frames currently held by each attention layer's cache."""
        return self.caches[0].num_frames

    def _step(self, frames):
        m, cfg = self.tokenizer, self.tokenizer.cfg
        m._check_length(self.num_pushed + 1, what="stream")
        x = m.patch_embed(frames, starts_clip=self.num_pushed == 0)  # (B, 1, L, D)
        x = m._add_pos(x, m.enc_pos, first_frame=self.num_pushed)  # (B, L, D)
        rope = None
        if cfg.temporal_pos == "rope":
            # keys: the cached frames then this one, at positions 0..n counted from the oldest cached frame
            n = self.cache_frames
            pos = torch.arange(n + 1, device=x.device).repeat_interleave(cfg.tokens_per_frame)
            rope = rope_cos_sin(pos, cfg.width // cfg.heads)
        return m._encode_tokens(x, None, rope, self.caches)  # (B, L, d_v)
