"""Latent action tokenizer (LAT): stage [2] of RepWAM.

Trained on the frozen visual tokenizer's latents z (B, T', L, d_v). For every pair of consecutive
latent frames (z_t, z_{t+1}):

    IDM   ℓ_t = q(z_t, z_{t+1})                 ℓ_t ∈ R^action_dim (4), continuous
    FDM   (K_t, δ_t) = f(z_t, ℓ_t)              K_t ∈ R^{L×L} rows sum to 1, δ_t ∈ R^{L×d_v}
          ẑ_{t+1} = K_t z_t + δ_t
    loss  L_fwd  = ‖ẑ_{t+1} − z_{t+1}‖²          (mean over elements)
          L_cons = ‖f(z_{t+1}, q(z_{t+1}, z_t)) − z_t‖²   (the same prediction on the reversed pair)

A LAPA-style quantized baseline (FSQ by default, VQ optional, from `vector_quantize_pytorch`)
quantizes ℓ_t behind the same API (`LATConfig(quantizer="fsq")`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from repwam.checkpoint import Pretrained
from repwam.errors import RepwamError

POOLS = ("attn", "mean", "flatten")
QUANTIZERS = (None, "fsq", "vq")
FDM_CONDS = ("film", "concat")
FSQ_RANGE = 1.5  # FSQ bounds its input with tanh; past ~1.5 the gradient dies and ℓ collapses to one code


# ----------------------------------------------------------------------------- config


@dataclass
class LATConfig:
    latent_dim: int  # d_v, width of one visual latent token
    num_tokens: int  # L, spatial tokens per latent frame
    grid: tuple[int, int] | None = None  # (h, w) token grid, h*w = L; None: square if L is, else 1-D
    action_dim: int = 4  # width of ℓ (the bottleneck)
    hidden: int = 256  # width of the per-token MLPs
    depth: int = 4  # residual MLP blocks in the IDM and in the FDM
    pos_dim: int = 32  # fixed 2-D sin-cos position features
    match_dim: int = 64  # query/key width for the IDM correspondence and the FDM transport map
    # IDM
    pool: str = "attn"  # how the token grid becomes one vector: "attn" | "mean" | "flatten"
    pool_heads: int = 4  # heads of the learned-query attention pooling
    flatten_dim: int = 4  # per-token width before flattening (pool="flatten")
    idm_flow: bool = True  # give the IDM soft-correspondence displacement features
    # FDM
    fdm_transport: bool = True  # False: K = I (pure residual FDM, an ablation)
    fdm_cond: str = "film"  # how ℓ enters the FDM's per-token MLP: "film" (adaLN-Zero) | "concat"
    # quantized baseline
    quantizer: str | None = None  # None (continuous, the method) | "fsq" | "vq"
    fsq_levels: tuple[int, ...] = (8, 5, 5, 5)
    vq_codebook_size: int = 256
    vq_commitment: float = 0.25
    quant_in_gain: float = 10.0  # initial gain of the learned affine in front of the quantizer (see quantize)
    fsq_range_weight: float = 1.0  # penalty keeping FSQ inputs in |x| <= FSQ_RANGE (see quantize)
    # loss
    cons_weight: float = 1.0
    action_reg: float = 0.0  # continuous ℓ only: weight of mean ℓ² (see loss). Off by default: measured on mt10
    # (README), ℓ stays bounded without it (std ~0.5) and 1e-2 shrinks it to std ~0.07 at the same forward error and
    # action probe; the WAM normalises ℓ by the LAT's stored mean/std either way.

    def __post_init__(self):
        if self.grid is not None:
            self.grid = tuple(int(g) for g in self.grid)
        self.fsq_levels = tuple(int(v) for v in self.fsq_levels)
        for name in ("latent_dim", "num_tokens", "action_dim", "hidden", "depth", "pos_dim", "match_dim"):
            if int(getattr(self, name)) < 1:
                raise RepwamError(f"LATConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.pool not in POOLS:
            raise RepwamError(f"LATConfig.pool must be one of {POOLS}, got {self.pool!r}")
        if self.fdm_cond not in FDM_CONDS:
            raise RepwamError(f"LATConfig.fdm_cond must be one of {FDM_CONDS}, got {self.fdm_cond!r}")
        if self.quantizer not in QUANTIZERS:
            raise RepwamError(f"LATConfig.quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if self.pool == "attn" and self.hidden % self.pool_heads:
            raise RepwamError(f"LATConfig.hidden={self.hidden} is not divisible by pool_heads={self.pool_heads}")
        if self.pos_dim % 4:
            raise RepwamError(f"LATConfig.pos_dim must be a multiple of 4 (2-D sin-cos), got {self.pos_dim}")
        if self.grid is not None and (len(self.grid) != 2 or self.grid[0] * self.grid[1] != self.num_tokens):
            raise RepwamError(f"LATConfig.grid={self.grid} does not hold num_tokens={self.num_tokens} tokens")

    @property
    def grid_hw(self) -> tuple[int, int]:
        if self.grid is not None:
            return self.grid
        side = math.isqrt(self.num_tokens)
        return (side, side) if side * side == self.num_tokens else (1, self.num_tokens)

    @classmethod
    def preset(cls, name: str, *, latent_dim: int, num_tokens: int, **overrides) -> LATConfig:
        """`tiny` (CPU tests, small runs) or `paper` (4-block MLPs, hidden 256, ℓ ∈ R^4)."""
        presets = {
            "tiny": dict(hidden=64, depth=2, pos_dim=16, match_dim=32, pool_heads=4),
            "paper": dict(hidden=256, depth=4, pos_dim=32, match_dim=64, pool_heads=4),
        }
        if name not in presets:
            raise RepwamError(f"unknown LAT preset {name!r}; choose one of {sorted(presets)}")
        return cls(latent_dim=latent_dim, num_tokens=num_tokens, **{**presets[name], **overrides})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid"] = list(self.grid) if self.grid is not None else None
        d["fsq_levels"] = list(self.fsq_levels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LATConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise RepwamError(f"unknown LAT config keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)


# ----------------------------------------------------------------------------- building blocks


def sincos_pos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position features, (h*w, dim), row-major like the tokenizer's patch order."""
    # frequencies spaced geometrically from one half-period over the grid (π/G) to the Nyquist-safe π/2,
    # so every channel resolves one-token offsets (ViT's 1/10000^k wastes most channels on small grids)
    quarter, G = dim // 4, max(h, w, 2)
    omega = (math.pi / G) * (G / 2) ** (torch.arange(quarter, dtype=torch.float64) / max(quarter - 1, 1))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    out = []
    for coord in (ys.flatten(), xs.flatten()):
        ang = coord[:, None] * omega[None, :]  # (L, dim/4)
        out += [ang.sin(), ang.cos()]
    return torch.cat(out, dim=1).float()  # (L, dim)


class MLPBlock(nn.Module):
    """Pre-norm residual MLP applied to each token; with `cond_dim`, FiLM-modulated (DiT's adaLN-Zero)."""

    def __init__(self, dim: int, cond_dim: int | None = None):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=cond_dim is None)
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.ada = None
        if cond_dim is not None:
            self.ada = nn.Linear(cond_dim, 3 * dim)  # shift, scale, gate
            nn.init.zeros_(self.ada.weight)
            nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        # x (B, L, H), c (B, C)
        h = self.norm(x)
        if self.ada is None:
            return x + self.fc2(F.gelu(self.fc1(h)))
        shift, scale, gate = self.ada(c).unsqueeze(1).chunk(3, dim=-1)  # each (B, 1, H)
        h = h * (1 + scale) + shift
        return x + gate * self.fc2(F.gelu(self.fc1(h)))


class AttentionPool(nn.Module):
    """Learned-query multi-head attention over tokens: (B, L, H) -> (B, H). Permutation invariant."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.randn(1, heads, 1, dim // heads) * 0.02)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        k, v = rearrange(self.to_kv(h), "b l (two n e) -> two b n l e", two=2, n=self.heads)  # (B, n, L, e)
        q = self.query.expand(h.shape[0], -1, -1, -1)  # (B, n, 1, e)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, n, 1, e)
        return self.proj(rearrange(out, "b n 1 e -> b (n e)"))


class MeanPool(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mean(dim=1)  # (B, L, H) -> (B, H)


class FlattenPool(nn.Module):
    """Per-token projection to a few channels, then flatten the grid: position-specific weights."""

    def __init__(self, dim: int, num_tokens: int, flat_dim: int):
        super().__init__()
        self.down = nn.Linear(dim, flat_dim)
        self.fc = nn.Linear(num_tokens * flat_dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.fc(rearrange(self.down(h), "b l c -> b (l c)")))  # (B, H)


# ----------------------------------------------------------------------------- IDM / FDM


class InverseDynamics(nn.Module):
    """IDM q(z_t, z_{t+1}) -> ℓ_t ∈ R^A, from the token grids of two consecutive latent frames.

    Design (the paper does not say how L tokens become 4 numbers):

    1. Motion features per token. Motion is *where content went*, which a per-token view of
       (z_t[i], z_{t+1}[i]) cannot see when content moves between tokens. So (idm_flow) each
       token i of z_{t+1} soft-matches the tokens of z_t on content alone,
       C = softmax_j(s·cos(q(z_{t+1}[i]), k(z_t[j]))) (q, k start equal, so matching starts as
       content similarity; s is a learned temperature starting at 10), and gets the displacement
       C_i·P − P_i of the fixed 2-D position features P: "where did my content come from". It is
       appearance-free by construction (a difference of position codes) and costs one L×L map
       (fine at L = 256). Without it the IDM cannot infer a shift of content it has not seen
       (measured: on randomly shifted random grids, held-out prediction stays at the
       no-motion level; with it, it reaches ~0).
    2. A per-token residual MLP (`depth` blocks, width `hidden`) reads
       [z_t, z_{t+1}, z_{t+1} − z_t, P_i, displacement_i]: the difference carries in-place
       changes (gripper closing, lighting), P_i where a change happens.
    3. Pooling over tokens (`pool`): "attn" (default) is learned-query attention pooling — it can
       focus on the few tokens that move (the arm, the object) and ignore the static background,
       is permutation invariant, and has no per-position weights, so it scales to any L and
       cannot read out a spatial layout token by token; "mean" is the plain average (dilutes a
       small moving region by 1/L); "flatten" projects each token to `flatten_dim` channels and
       flattens the grid (position-specific weights: most expressive, most prone to leaking
       appearance/layout, and its size grows with L).
    4. A linear head to ℓ ∈ R^A. The A = 4 continuous numbers are the bottleneck: no codebook.
    """

    def __init__(self, cfg: LATConfig):
        super().__init__()
        self.cfg = cfg
        d, H = cfg.latent_dim, cfg.hidden
        self.register_buffer("pos", sincos_pos_2d(*cfg.grid_hw, cfg.pos_dim), persistent=False)  # (L, P)
        if cfg.idm_flow:
            self.match_q = nn.Linear(d, cfg.match_dim, bias=False)
            self.match_k = nn.Linear(d, cfg.match_dim, bias=False)
            with torch.no_grad():  # start as similarity in a random projection: matching content scores high
                self.match_k.weight.copy_(self.match_q.weight)
            self.match_logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # cosine-similarity temperature
        in_dim = 3 * d + cfg.pos_dim * (2 if cfg.idm_flow else 1)
        self.embed = nn.Linear(in_dim, H)
        self.blocks = nn.ModuleList(MLPBlock(H) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(H)
        if cfg.pool == "attn":
            self.pool = AttentionPool(H, cfg.pool_heads)
        elif cfg.pool == "mean":
            self.pool = MeanPool()
        else:
            self.pool = FlattenPool(H, cfg.num_tokens, cfg.flatten_dim)
        self.head = nn.Linear(H, cfg.action_dim)

    def correspondence(self, z_t: torch.Tensor, z_next: torch.Tensor) -> torch.Tensor:
        """C (B, L, L): row i = soft match of z_{t+1}[i] over the tokens j of z_t (rows sum to 1)."""
        q = F.normalize(self.match_q(z_next), dim=-1)  # (B, L, m)
        k = F.normalize(self.match_k(z_t), dim=-1)  # (B, L, m)
        return torch.softmax(self.match_logit_scale.exp() * q @ k.transpose(1, 2), dim=-1)

    def forward(self, z_t: torch.Tensor, z_next: torch.Tensor) -> torch.Tensor:
        # z_t, z_next (B, L, d) -> ℓ (B, A)
        pos = self.pos.to(z_t.dtype).expand(z_t.shape[0], -1, -1)  # (B, L, P)
        feats = [z_t, z_next, z_next - z_t, pos]
        if self.cfg.idm_flow:
            feats.append(self.correspondence(z_t, z_next) @ pos - pos)  # (B, L, P) displacement
        h = self.embed(torch.cat(feats, dim=-1))  # (B, L, H)
        for block in self.blocks:
            h = block(h)
        return self.head(self.pool(self.norm(h)))  # (B, A)


class ForwardDynamics(nn.Module):
    """FDM f(z_t, ℓ_t) -> (K_t, δ_t), ẑ_{t+1} = K_t z_t + δ_t.

    A per-token residual MLP reads [z_t[i], P_i] and is conditioned on ℓ by FiLM (adaLN-Zero, as in
    DiT) or by concatenation. From its output h and the ℓ embedding c, the transport map is

        K[i, j] = softmax_j( q(h_i)·k(h_j)/√m  +  b_ℓ[offset(i, j)] )

    Target token i takes its content from source tokens j (rows sum to 1, entries ≥ 0), so moving
    content is a re-indexing of z_t rather than something the MLP must redraw. The content term
    says which tokens move (the arm, the object); b_ℓ = linear(c) is a Swin-style table with one
    logit per 2-D grid offset (dy, dx), predicted from ℓ: it says by how much. Its zero offset
    starts at log L (about half of each row stays in place, near copy-last), and its weights are
    not zero-initialised, so ℓ reaches K from the first step (with adaLN-Zero alone the IDM gets
    no gradient at first and joint training sat on a plateau for ~800 steps in our test).
    δ = linear(h) (zero-initialised) adds what transport cannot: new or changed content.
    With fdm_transport=False, K = I (pure residual ablation).
    """

    def __init__(self, cfg: LATConfig):
        super().__init__()
        self.cfg = cfg
        d, H = cfg.latent_dim, cfg.hidden
        self.register_buffer("pos", sincos_pos_2d(*cfg.grid_hw, cfg.pos_dim), persistent=False)  # (L, P)
        film = cfg.fdm_cond == "film"
        self.cond = nn.Sequential(nn.Linear(cfg.action_dim, H), nn.GELU(), nn.Linear(H, H))  # ℓ embedding
        self.embed = nn.Linear(d + cfg.pos_dim + (0 if film else H), H)
        self.blocks = nn.ModuleList(MLPBlock(H, cond_dim=H if film else None) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(H)
        if cfg.fdm_transport:
            self.to_q = nn.Linear(H, cfg.match_dim)
            self.to_k = nn.Linear(H, cfg.match_dim)
            # ℓ-conditioned relative-offset bias: one logit per grid offset (dy, dx), Swin-style table
            gh, gw = cfg.grid_hw
            self.rel_bias = nn.Linear(H, (2 * gh - 1) * (2 * gw - 1))
            with torch.no_grad():  # start close to copy-last: about half of each row's mass stays in place
                self.rel_bias.bias.zero_()
                self.rel_bias.bias[(gh - 1) * (2 * gw - 1) + (gw - 1)] = math.log(cfg.num_tokens)
            ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            ys, xs = ys.flatten(), xs.flatten()
            rel = (ys[:, None] - ys[None, :] + gh - 1) * (2 * gw - 1) + (xs[:, None] - xs[None, :] + gw - 1)
            self.register_buffer("rel_index", rel, persistent=False)  # (L_tgt, L_src) -> offset id
        self.to_delta = nn.Linear(H, d)
        nn.init.zeros_(self.to_delta.weight)
        nn.init.zeros_(self.to_delta.bias)

    def forward(self, z_t: torch.Tensor, ell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # z_t (B, L, d), ell (B, A) -> z_pred (B, L, d), K (B, L, L), delta (B, L, d)
        B, L, _ = z_t.shape
        c = self.cond(ell)  # (B, H)
        x = [z_t, self.pos.to(z_t.dtype).expand(B, -1, -1)]
        if self.cfg.fdm_cond == "concat":
            x.append(c.unsqueeze(1).expand(-1, L, -1))
        h = self.embed(torch.cat(x, dim=-1))  # (B, L, H)
        for block in self.blocks:
            h = block(h, c)
        h = self.norm(h)
        if self.cfg.fdm_transport:
            q, k = self.to_q(h), self.to_k(h)  # (B, L, m)
            logits = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # (B, L_tgt, L_src) content term
            logits = logits + self.rel_bias(c)[:, self.rel_index]  # + offset term from ℓ
            K = torch.softmax(logits, dim=-1)  # rows sum to 1
        else:
            K = torch.eye(L, dtype=z_t.dtype, device=z_t.device).expand(B, L, L)
        delta = self.to_delta(h)  # (B, L, d)
        return K @ z_t + delta, K, delta


# ----------------------------------------------------------------------------- the tokenizer


def build_quantizer(cfg: LATConfig) -> nn.Module | None:
    if cfg.quantizer is None:
        return None
    try:
        from vector_quantize_pytorch import FSQ, VectorQuantize
    except ImportError as e:  # optional extra
        raise RepwamError(
            f"LATConfig.quantizer={cfg.quantizer!r} needs vector-quantize-pytorch: pip install 'repwam[lat]'"
        ) from e
    if cfg.quantizer == "fsq":
        return FSQ(levels=list(cfg.fsq_levels), dim=cfg.action_dim)
    return VectorQuantize(
        dim=cfg.action_dim,
        codebook_size=cfg.vq_codebook_size,
        commitment_weight=cfg.vq_commitment,
        kmeans_init=True,  # codebook from the first batch of ℓ, at the data's scale
        threshold_ema_dead_code=2,  # re-seed unused codes from the batch
    )


def copy_last_error(z: torch.Tensor) -> torch.Tensor:
    """Error of predicting z_{t+1} = z_t over a clip (B, T', L, d): mean ‖z_{t+1} − z_t‖² per element."""
    return F.mse_loss(z[:, :-1], z[:, 1:])


class LatentActionTokenizer(Pretrained, nn.Module):
    """IDM + FDM (+ optional quantizer) over consecutive latent frames of a clip."""

    checkpoint_type, config_key = "repwam.lat", "lat"
    config_class = LATConfig

    def __init__(self, cfg: LATConfig):
        super().__init__()
        self.cfg = cfg
        self.idm_net = InverseDynamics(cfg)
        self.fdm_net = ForwardDynamics(cfg)
        self.quantizer = build_quantizer(cfg)
        if self.quantizer is not None:
            # At initialisation the IDM's ℓ varies little between transitions (std ~0.03): fed straight
            # into FSQ every transition rounds to one code and the FDM never learns to read ℓ.
            self.pre_quant = nn.Linear(cfg.action_dim, cfg.action_dim)
            with torch.no_grad():
                self.pre_quant.weight.copy_(torch.eye(cfg.action_dim) * cfg.quant_in_gain)
                self.pre_quant.bias.zero_()

    # -- input checks

    def _check_tokens(self, z: torch.Tensor, what: str) -> None:
        L, d = z.shape[-2:]
        if (L, d) != (self.cfg.num_tokens, self.cfg.latent_dim):
            raise RepwamError(
                f"{what} have L={L} tokens of dim {d}, but this LAT was built for "
                f"L={self.cfg.num_tokens}, d_v={self.cfg.latent_dim}"
            )

    def _check_clip(self, z: torch.Tensor) -> None:
        if z.ndim != 4:
            raise RepwamError(f"expected latents of shape (B, T', L, d_v), got shape {tuple(z.shape)}")
        self._check_tokens(z, "latents")
        if z.shape[1] < 2:
            raise RepwamError(f"a transition needs at least 2 latent frames, got T'={z.shape[1]}")

    def _check_frames(self, *zs: torch.Tensor) -> None:
        for z in zs:
            if z.ndim != 3:
                raise RepwamError(f"expected latent frames of shape (B, L, d_v), got shape {tuple(z.shape)}")
            self._check_tokens(z, "latent frames")
        if len({tuple(z.shape) for z in zs}) > 1:
            raise RepwamError(f"latent frames differ in shape: {[tuple(z.shape) for z in zs]}")

    # -- the model

    def quantize(self, ell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """ℓ (B, A) -> (ℓ quantized or as is, aux loss (scalar), codes (B,) or None).

        Quantized baseline only: a learned affine (gain cfg.quant_in_gain at first) spreads the
        IDM's output, which varies little between transitions at initialisation, over several codes;
        FSQ additionally gets a penalty on inputs beyond ±FSQ_RANGE, where its tanh bound saturates
        (without it, every transition drifted to one code in our tests and training stalled).
        VQ adds its commitment loss; its codebook is k-means initialised and dead codes re-seeded.
        """
        if self.quantizer is None:
            return ell, ell.new_zeros(()), None
        ell = self.pre_quant(ell)  # learned affine, starts as a gain of cfg.quant_in_gain
        if self.cfg.quantizer == "fsq":
            q, codes = self.quantizer(ell.unsqueeze(1))  # (B, 1, A), (B, 1)
            aux = self.cfg.fsq_range_weight * (ell.abs() - FSQ_RANGE).clamp(min=0).pow(2).mean()
        else:
            q, codes, aux = self.quantizer(ell.unsqueeze(1))
            aux = aux.sum()
        return q.squeeze(1), aux, codes.squeeze(1)

    def _encode(self, z_t: torch.Tensor, z_next: torch.Tensor):
        """(ℓ, aux, codes) for transitions z_t -> z_next, each (B, L, d_v); no input checks."""
        return self.quantize(self.idm_net(z_t, z_next))

    def idm(self, z_t: torch.Tensor, z_next: torch.Tensor) -> torch.Tensor:
        """Latent action ℓ_t (B, A) for the transition z_t -> z_next, each (B, L, d_v)."""
        self._check_frames(z_t, z_next)
        return self._encode(z_t, z_next)[0]

    def fdm(self, z_t: torch.Tensor, ell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ẑ_{t+1} (B, L, d_v), K (B, L, L), δ (B, L, d_v)) from z_t (B, L, d_v) and ℓ (B, A)."""
        self._check_frames(z_t)
        if ell.shape != (z_t.shape[0], self.cfg.action_dim):
            raise RepwamError(
                f"expected latent actions of shape (B={z_t.shape[0]}, A={self.cfg.action_dim}), got {tuple(ell.shape)}"
            )
        return self.fdm_net(z_t, ell)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Per-transition latent actions of a clip: z (B, T', L, d_v) -> ℓ (B, T'−1, A)."""
        self._check_clip(z)
        B = z.shape[0]
        z_t = rearrange(z[:, :-1], "b t l d -> (b t) l d")
        z_next = rearrange(z[:, 1:], "b t l d -> (b t) l d")
        ell = self._encode(z_t, z_next)[0]
        return rearrange(ell, "(b t) a -> b t a", b=B)

    def loss(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training loss over a clip z (B, T', L, d_v).

        Returns loss = fwd + cons_weight·cons + aux + reg, and (detached) copy_last, the error of
        ẑ_{t+1} = z_t. Errors are means over elements (batch, transitions, tokens, channels).
        aux is the quantizer's loss (VQ commitment, FSQ range penalty). reg = action_reg · mean ℓ²
        for continuous ℓ bounds ℓ's scale (growing ℓ is a cheap way for the FDM to sharpen K; |ℓ| ~ 30
        after 400 steps was once seen in a test). On mt10 this LAT keeps std ~0.5 without it, and 1e-2
        shrinks that to ~0.07 at the same forward error (README, LAT section).
        """
        self._check_clip(z)
        z_t = rearrange(z[:, :-1], "b t l d -> (b t) l d")
        z_next = rearrange(z[:, 1:], "b t l d -> (b t) l d")
        # forward: ℓ = q(z_t, z_{t+1}), ẑ_{t+1} = f(z_t, ℓ)
        ell, aux_f, _ = self._encode(z_t, z_next)
        z_pred = self.fdm_net(z_t, ell)[0]
        fwd = F.mse_loss(z_pred, z_next)
        # consistency: the reversed pair, ℓ' = q(z_{t+1}, z_t), ẑ_t = f(z_{t+1}, ℓ')
        ell_rev, aux_b, _ = self._encode(z_next, z_t)
        z_back = self.fdm_net(z_next, ell_rev)[0]
        cons = F.mse_loss(z_back, z_t)
        aux = aux_f + aux_b
        reg = fwd.new_zeros(())
        if self.quantizer is None and self.cfg.action_reg:
            reg = self.cfg.action_reg * (ell.pow(2).mean() + ell_rev.pow(2).mean()) / 2
        return dict(
            loss=fwd + self.cfg.cons_weight * cons + aux + reg,
            fwd=fwd,
            cons=cons,
            aux=aux,
            reg=reg,
            copy_last=copy_last_error(z).detach(),
        )

    def copy_last_baseline(self, z: torch.Tensor) -> torch.Tensor:
        """Evaluation reference: mean ‖z_t − z_{t+1}‖² per element over a clip (B, T', L, d_v)."""
        self._check_clip(z)
        return copy_last_error(z)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
