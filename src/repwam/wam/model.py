"""World action model (WAM): stages [3] and [4] of RepWAM, a chunked block-causal flow-matching transformer.

Inputs per clip: visual latents z (B, T', L, d_v) from the frozen tokenizer, latent actions
ell (B, T'-1, A) from the LAT (ell_t leads from z_t to z_{t+1}), a validity mask (B, T') for padded
latent frames, and frozen text-encoder token embeddings (B, N_text, D_text) with their mask. For
adaptation (stage [4]) also robot actions (B, T'-1, per, A_r), the `per` raw actions executed between
latent frames t and t+1, and proprioceptive states (B, T', D_s), each at the last raw frame its latent
frame covers (both normalised).

Tokens. Up to three streams (a mixture of transformers), each with its own width, norms, adaLN, FFN,
input embedding and output head; attention weights are shared at the video width D:

    video   z (B, T', L, d_v) -> patchify p x p (DiT)   (B, T'·P, p²·d_v),  P = L / p²
            -> Linear -> width D_v, + spatial position (learned or 2-D sin-cos) within the frame;
            with last_frame_cond a noisy token also adds Linear_anchor(its patch of the last clean
            frame before its chunk): channel concatenation, the way video diffusion models condition
            on a frame, so carrying the observed frame forward is one linear map away (zero-initialised).
            video_target="residual" (needs last_frame_cond) makes the video head predict the clean
            latents as a residual over that frame, x̂ = anchor + head (x-prediction, as JiT), and the
            velocity the objective and the sampler use is v = (x̂ - x_α) / max(1 - α, 0.05): a fresh
            model (zero head) predicts copy-last exactly, and training can only move away from it
            where the data says so. With "velocity" the head outputs the velocity itself (DiT, Wan).
    action  (ℓ; absent with use_latent_actions=False) ell_t is the token of latent frame t+1 (the
            action leading into it): frame 0 has none.  ell (B, T'-1, A) -> Linear -> width D_a
    robot   (the action expert; robot_action_dim = A_r > 0) like ℓ, one token per latent-frame step:
            the token of frame t+1 carries the chunk a_t, flattened (B, T'-1, per·A_r) -> Linear -> D_r;
            with robot_token_per_action, per tokens of one action each instead ((B, (T'-1)·per, A_r), a learned
            position within the frame, the frame's RoPE position and mask rule for all of them); with
            robot_history=False no clean robot tokens: only the noisy ones of the chunk being denoised (past
            actions reach the model only through the frames, ℓ and states they produced); robot_history_drop
            hides them (their keys) from a random share of the training clips, so one model acts with or without;
            with last_state_cond a noisy token also adds Linear_anchor(the state at the last clean frame
            before its chunk), as last_frame_cond does for video (zero-initialised): the current state
            reaches every noisy action directly, not only as one key among the window's
    state   (state_dim = D_s > 0) a second token type of the robot stream: its own input Linear, the
            robot stream's layers, no head, never a loss. One clean token per latent frame (B, T', D_s)
    text    (B, N_text, D_text) -> Linear -> (B, N_text, D), keys/values of every cross-attention;
            a learned null embedding replaces it for classifier-free guidance (`text_dropout`)
    first   (first_frame_context) the episode's first latent frame (B, L, d_v) -> patchify -> Linear -> D,
            + learned position: P more keys/values of the cross-attention, after the text (never dropped).
            A memory of the layout as first seen (the goal, the objects) that no window evicts: the
            self-attention only reaches attn_window latent frames back, and a goal the arm then hides is
            gone from it

Sequence and mask. Chunk 0 is z_1 (and its state s_1); chunk i >= 1 holds k latent frames,
u_i = [z_{t+1..t+k}, ell_{t..t+k-1}, a_{t..t+k-1}] and, in its clean copy only, the states
s_{t+1..t+k}: future states are unknown, so a noisy chunk sees the states of the history, the last of
them the current one. Attention is block-causal: a token sees its own chunk and earlier chunks, never
later ones, and (with `attn_window = w`) only keys less than w latent frames before its own frame.
Time enters attention only through RoPE on the latent-frame index (queries and keys of the shared
attention), so a window makes the model shift-invariant in time. Teacher forcing runs a whole clip in
one pass with both copies of every chunk:

    [clean z_1, clean u_1 .. u_{N-1}, noisy u_1 .. u_N]     (the clean u_N is context for nothing: dropped)
    clean chunk i  -> clean chunks <= i
    noisy chunk i  -> clean chunks <  i, and itself

`wam_attention_mask` builds this from per-token (chunk id, clean/noisy, latent frame); streams are
kept as separate tensors and concatenated only inside attention, so the order inside the sequence
is [video, ℓ, robot, state tokens] and the mask, not the order, carries the structure. Keys of padded
frames are masked out (a padded token still sees itself, so no row is empty). `attn_backend` picks how
self-attention runs: "sdpa" (SDPA with the dense boolean mask; training on the CPU, where flex attention
has no backward in torch 2.13), "flex" (flex attention with a BlockMask whose mask_mod, `layout_mask_mod`,
applies `allowed` to the per-token layouts, so blocks no query may see are skipped; compiled on CUDA,
eager and forward-only on the CPU) or "auto" (flex on CUDA, SDPA elsewhere). Both compute the same function.

Gated access to the robot stream. Video and ℓ queries attend to video and ℓ keys in one softmax and
to robot and state keys in a second one, added through a per-block, per-head gate (zero-initialised):

    y_world = attn(q, world keys) + robot_gate · attn(q, robot-stream keys)     (same mask rule for both)
    y_robot = attn(q, all keys)                                                 (one softmax)

so adding the robot stream to a trained WAM leaves its video and ℓ outputs unchanged until the gate
moves (`from_pretrained(..., allow_new_streams=True)` starts adaptation at the pretrained function),
while the world tokens can learn to read the executed robot actions and states.

Block (per stream s, x_s (B, N_s, W_s); m = shared time MLP (per token) + this block's offset):

    h   = modulate(LN(x_s), shift1, scale1) -> W_s->D (Identity when W_s = D)
    x_s += gate1 · (D->W_s)(SelfAttention_shared(concat over streams, mask, RoPE))
    x_s += (D->W_s) CrossAttention_shared((W_s->D) LN_affine(x_s), text)   (out-proj zero-init)
    x_s += gate2 · FFN_s(modulate(LN(x_s), shift2, scale2))

Flow time is per token: clean context tokens (and every state token) get alpha = 1; the video, ℓ and
robot tokens of a noisy chunk get independent alphas. One time MLP per stream gives (B, N, 6, W_s);
every block adds its own learned (6, W_s) offset (Wan2.x), both zero-initialised so every block
starts as the identity (adaLN-Zero, DiT). Heads: adaLN (shift, scale) + Linear, zero-initialised.

Objective (`loss`): rectified flow, x_a = (1-a)·eps + a·u, velocity target u - eps, on the noisy
chunks given clean history: video_loss_weight · video + ell_loss_weight · ℓ + robot_loss_weight ·
robot, padded frames masked out, fp32. Chunk size k is drawn from `chunk_sizes` per batch; with
probability `video_drop` the noisy video tokens are left out (actions-only mode) and, when the robot
stream exists, independently with probability `ell_drop` the noisy ℓ tokens (both: robot-only mode); with
`future_frames_given` a clip's noisy frames are its clean future instead (flow time 1, no video loss), so the
action expert learns to act from the frames phase 1 of the sampler imagines (inverse dynamics).

Inference (`new_cache` / `append` / `sample_chunk`): the clean history's self-attention keys and
values of every block live in a KV cache; an observed or generated chunk is appended once. A chunk
is sampled in two phases of Euler steps on a uniform alpha grid from 0 (noise) to 1 (data):

    phase 1  video_steps steps: video alpha 0 -> 1, ℓ and robot tokens held at pure noise (alpha 0);
             optional CFG on the video velocity (cfg_scale != 1 keeps a second cache with null text)
    phase 2  action_steps steps: ℓ and robot alphas 0 -> 1 together (one pass per step, both heads),
             video tokens held at the phase-1 result (alpha 1); they still run every step, as the
             actions attend to them

Both phases see the states training covers (alphas are drawn independently per stream).
Actions-only mode skips phase 1 and leaves the chunk's video tokens out of the sequence, so the
video stream's layers never run for the current chunk; robot-only mode also leaves the chunk's ℓ
tokens out: only the robot tokens run (the fastest control mode). What every Euler step of a chunk shares is
built once per chunk (`ChunkPlan`: masks, RoPE, the cached K/V with slots the steps overwrite, the steps'
time embeddings; streams of one shape, ℓ and robot in actions-only mode, run stacked through batched matmuls).

Closed loop: append the first observation (z, state), then per step `sample_chunk`, execute its
"robot" actions (de-normalised), and `append(cache, z_observed, state=observed states)`: robot and
ℓ default to what sample_chunk just returned (pass `robot` when other actions were executed; after a
robot-only chunk no ℓ was sampled, so pass the LAT's ℓ of the observed frames). With a window the
cache evicts keys that fall out of it; without one, histories (and training clips) longer than
`max_latent_frames` are refused (RepwamError), as RoPE would meet offsets never seen in training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from torch.utils.checkpoint import checkpoint

from repwam.checkpoint import Pretrained
from repwam.errors import RepwamError
from repwam.layers import MLP, apply_rope, rope_cos_sin, sincos_1d, sincos_2d

VIDEO, ACTION, ROBOT = "video", "action", "robot"  # the streams, in sequence order
STATE = "state"  # the state tokens: a second token type of the robot stream
STREAMS = (VIDEO, ACTION, ROBOT)
TOKEN_GROUPS = (*STREAMS, STATE)
TIME_SCALE = 1000.0  # alpha in [0, 1] is embedded as a DiT-style timestep alpha * 1000
ALPHA_SAMPLERS = ("uniform", "logit_normal")
ATTN_BACKENDS = ("sdpa", "flex", "auto")  # "auto": flex attention on CUDA, SDPA elsewhere
VIDEO_TARGETS = ("velocity", "residual")
RESIDUAL_MIN_GAP = 0.05  # residual target: 1 - alpha is clamped here when x̂ becomes a velocity (as JiT)


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamConfig:
    """One stream of the mixture of transformers: its own width, FFN, norms, adaLN, embed and head.

    The name is "video", "action" (ℓ) or "robot" (the action expert). `token_dim` and
    `tokens_per_frame` follow from the inputs (video: p²·d_v and L/p²; action: action_dim and 1;
    robot: robot_per_frame·robot_action_dim and 1, or robot_action_dim and robot_per_frame with
    robot_token_per_action); when given they must agree.
    """

    name: str
    width: int
    ffn_hidden: int
    token_dim: int | None = None
    tokens_per_frame: int | None = None


@dataclass
class WAMConfig:
    # inputs (must match the tokenizer, the LAT, the robot data and the text encoder)
    latent_grid: tuple[int, int] = (8, 8)  # tokenizer grid (h, w), L = h*w
    latent_dim: int = 32  # d_v
    patch_size: int = 2  # DiT patchify of the latent grid
    action_dim: int = 4  # A, width of ell
    robot_action_dim: int = 0  # A_r; > 0 adds the robot stream (the action expert)
    robot_per_frame: int = 4  # per: raw robot actions per latent-frame step (one robot token carries per·A_r)
    robot_token_per_action: bool = False  # one robot token per raw action (per tokens of A_r per latent frame)
    # clean robot-action tokens of the past in the sequence; False leaves them out: the model sees past actions only
    # through what they did (frames, ℓ, states), never the executed commands themselves (the copycat shortcut)
    robot_history: bool = True
    # training only: probability per clip of hiding that history (its keys masked), so the expert also learns to act
    # without it and inference may run either way (`new_cache(robot_history=...)`); needs robot_history
    robot_history_drop: float = 0.0
    state_dim: int = 0  # D_s; > 0 adds one clean state token per latent frame to the robot stream
    # training only: each state token's final hidden state -> MLP -> an aux_dim-d privileged target of its frame
    # (train/wam's aux_key: the simulator's object and goal poses), so the action expert has to find them in the
    # video tokens it attends to; sampling never computes it (0: none; needs state_dim > 0)
    aux_dim: int = 0
    text_dim: int = 384  # D_text (all-MiniLM-L6-v2)
    first_frame_context: bool = False  # the episode's first latent frame joins the text in the cross-attention
    # backbone
    width: int = 128  # D: width of the shared attention (= the video stream's width in every preset)
    depth: int = 4
    heads: int = 4
    # width/FFN per stream; with robot_action_dim > 0 and no "robot" entry the robot stream copies the ℓ one
    streams: tuple[StreamConfig, ...] = (StreamConfig(VIDEO, 128, 512), StreamConfig(ACTION, 64, 256))
    use_latent_actions: bool = True  # False: no ℓ stream at all (the "no latent actions" variant)
    qk_norm: bool = True  # RMSNorm on queries and keys per head
    spatial_pos: str = "learned"  # "learned" | "sincos"
    time_freq_dim: int = 256  # sinusoidal features of the flow time fed to the time MLPs
    max_latent_frames: int = 16  # longest clip / history accepted when attn_window is None
    attn_window: int | None = None  # attend to keys less than this many latent frames back
    grad_checkpoint: bool = False  # the model's initial `grad_checkpoint` (activation checkpointing of the blocks)
    last_frame_cond: bool = False  # noisy video tokens also embed the last clean frame before their chunk
    last_state_cond: bool = False  # noisy robot tokens also embed the state at that frame (needs state_dim > 0)
    video_target: str = "velocity"  # "velocity" | "residual": x̂ = last clean frame + head (needs last_frame_cond)
    attn_backend: str = "sdpa"  # self-attention: "sdpa" (dense bool mask) | "flex" (BlockMask) | "auto" (flex on CUDA)
    # training objective
    chunk_sizes: tuple[int, ...] = (1, 2, 3, 4)  # k drawn uniformly per batch
    alpha_sampler: str = "uniform"  # "uniform" (paper) | "logit_normal"
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    video_loss_weight: float = 1.0
    ell_loss_weight: float = 1.0  # lambda_a
    robot_loss_weight: float = 1.0
    aux_loss_weight: float = 1.0  # the state tokens' read-out (aux_dim)
    # probability per batch of leaving the noisy video tokens out; 1.0 with the robot stream: a policy on the latents
    # that never learns to forecast (its video stream encodes the clean past only)
    video_drop: float = 0.25
    ell_drop: float = 0.25  # with the robot stream: probability per batch of leaving the noisy ℓ tokens out
    # with the robot stream: probability per clip that the chunk's frames are given clean (flow time 1, no video loss),
    # so the action expert learns to act from the future the sampler's first phase imagines (inverse dynamics); the
    # policy then samples with actions_only=false
    future_frames_given: float = 0.0
    text_dropout: float = 0.1  # probability per sample of the null text (classifier-free guidance)
    # inference defaults
    chunk_size: int = 2
    video_steps: int = 5
    action_steps: int = 10  # Euler steps of ℓ and robot actions
    cfg_scale: float = 1.0  # video guidance; 1.0 = no unconditional pass

    def __post_init__(self):
        self.latent_grid = tuple(int(g) for g in self.latent_grid)
        self.chunk_sizes = tuple(int(k) for k in self.chunk_sizes)
        self.streams = tuple(s if isinstance(s, StreamConfig) else StreamConfig(**s) for s in self.streams)
        names = [s.name for s in self.streams]
        needed = {VIDEO, ACTION} if self.use_latent_actions else {VIDEO}
        if len(set(names)) != len(names) or not needed <= set(names) <= set(STREAMS):
            raise RepwamError(
                f"WAMConfig.streams must name 'video' and 'action' once each ('action' may go with "
                f"use_latent_actions=False) and may add 'robot'; got {names}"
            )
        if self.robot_action_dim < 0 or self.state_dim < 0 or self.robot_per_frame < 1:
            raise RepwamError(f"robot_action_dim={self.robot_action_dim} and state_dim={self.state_dim} must be >= 0 "
                              f"and robot_per_frame={self.robot_per_frame} >= 1")
        if self.state_dim and not self.robot_action_dim:
            raise RepwamError("state tokens live in the robot stream: state_dim > 0 needs robot_action_dim > 0")
        if self.last_state_cond and not self.state_dim:
            raise RepwamError("last_state_cond adds the last clean state to the noisy robot tokens: it needs "
                              "state_dim > 0")
        if self.aux_dim < 0 or (self.aux_dim and not self.state_dim):
            raise RepwamError(f"aux_dim={self.aux_dim}: the read-out comes from the state tokens, so aux_dim > 0 "
                              "needs state_dim > 0 (and aux_dim must be >= 0)")
        if self.robot_action_dim and ROBOT not in names:
            if ACTION not in names:
                raise RepwamError("name the robot stream's width: "
                                  "streams=(..., StreamConfig('robot', width, ffn_hidden))")
            a = self.stream(ACTION)
            self.streams = (*self.streams, StreamConfig(ROBOT, a.width, a.ffn_hidden))
        for s in self.active_streams:
            implied = {"token_dim": self.token_dim(s.name), "tokens_per_frame": self.group_tokens_per_frame(s.name)}
            for what, given in (("token_dim", s.token_dim), ("tokens_per_frame", s.tokens_per_frame)):
                if given is not None and given != implied[what]:
                    raise RepwamError(f"stream {s.name!r} has {what}={given} but its inputs give {implied[what]}: "
                                      "leave it out")
        h, w = self.latent_grid
        if h % self.patch_size or w % self.patch_size:
            raise RepwamError(f"latent_grid={self.latent_grid} is not a multiple of patch_size={self.patch_size}")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise RepwamError(f"width={self.width} must split into heads={self.heads} of even size (RoPE)")
        if self.attn_window is not None and self.attn_window < 1:
            raise RepwamError(f"attn_window must be None or >= 1, got {self.attn_window}")
        if self.spatial_pos not in ("learned", "sincos"):
            raise RepwamError(f"spatial_pos must be 'learned' or 'sincos', got {self.spatial_pos!r}")
        if self.video_target not in VIDEO_TARGETS:
            raise RepwamError(f"video_target must be one of {VIDEO_TARGETS}, got {self.video_target!r}")
        if self.video_target == "residual" and not self.last_frame_cond:
            raise RepwamError("video_target='residual' predicts a residual over the last clean frame: it needs "
                              "last_frame_cond=True")
        if self.attn_backend not in ATTN_BACKENDS:
            raise RepwamError(f"attn_backend must be one of {ATTN_BACKENDS}, got {self.attn_backend!r}")
        if self.alpha_sampler not in ALPHA_SAMPLERS:
            raise RepwamError(f"alpha_sampler must be one of {ALPHA_SAMPLERS}, got {self.alpha_sampler!r}")
        if not self.chunk_sizes or min(self.chunk_sizes) < 1:
            raise RepwamError(f"chunk_sizes must be positive integers, got {self.chunk_sizes}")
        if not (0 <= self.video_drop <= 1 and 0 <= self.ell_drop <= 1):
            raise RepwamError(f"video_drop={self.video_drop} and ell_drop={self.ell_drop} must lie in [0, 1]")
        if not 0 <= self.future_frames_given <= 1:
            raise RepwamError(f"future_frames_given must lie in [0, 1], got {self.future_frames_given}")
        if self.future_frames_given and self.video_drop == 1:
            raise RepwamError("future_frames_given gives the chunk's future frames clean, but video_drop=1 leaves them "
                              "out of every batch")
        if self.future_frames_given and not self.robot_action_dim:
            raise RepwamError("future_frames_given teaches the action expert to read the future frames: it needs the "
                              "robot stream (robot_action_dim > 0)")
        if not 0 <= self.robot_history_drop <= 1:
            raise RepwamError(f"robot_history_drop must lie in [0, 1], got {self.robot_history_drop}")
        if self.robot_history_drop and not (self.robot_action_dim and self.robot_history):
            raise RepwamError("robot_history_drop hides the executed robot actions of the past at random: it needs "
                              "the robot stream with robot_history=True")

    @property
    def tokens_per_frame(self) -> int:
        """L, the tokenizer's tokens per latent frame."""
        return self.latent_grid[0] * self.latent_grid[1]

    @property
    def patch_grid(self) -> tuple[int, int]:
        return (self.latent_grid[0] // self.patch_size, self.latent_grid[1] // self.patch_size)

    @property
    def active_streams(self) -> tuple[StreamConfig, ...]:
        """The streams the model has, in sequence order: video, ℓ (use_latent_actions), robot (robot_action_dim)."""
        on = {VIDEO: True, ACTION: self.use_latent_actions, ROBOT: self.robot_action_dim > 0}
        return tuple(self.stream(n) for n in STREAMS if on[n] and any(s.name == n for s in self.streams))

    @property
    def token_groups(self) -> tuple[str, ...]:
        """The kinds of token in the sequence, in order: the active streams, then the state tokens."""
        return (*(s.name for s in self.active_streams), *((STATE,) if self.state_dim else ()))

    def has(self, group: str) -> bool:
        return group in self.token_groups

    def stream(self, name: str) -> StreamConfig:
        return next(s for s in self.streams if s.name == name)

    def token_dim(self, group: str) -> int:
        """Features per input token of a token group."""
        return {VIDEO: self.patch_size**2 * self.latent_dim, ACTION: self.action_dim,
                ROBOT: self.robot_action_dim * (1 if self.robot_token_per_action else self.robot_per_frame),
                STATE: self.state_dim}[group]

    def group_tokens_per_frame(self, group: str) -> int:
        h, w = self.patch_grid
        if group == ROBOT and self.robot_token_per_action:
            return self.robot_per_frame
        return h * w if group == VIDEO else 1

    def group_first_frame(self, group: str) -> int:
        """Latent frame of a group's first token: actions lead into a frame, so frame 0 has none."""
        return 1 if group in (ACTION, ROBOT) else 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["latent_grid"], d["chunk_sizes"] = list(self.latent_grid), list(self.chunk_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "WAMConfig":
        d = dict(d)
        if "action_loss_weight" in d:  # ell_loss_weight under its former name
            d["ell_loss_weight"] = d.pop("action_loss_weight")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise RepwamError(f"unknown WAM config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides) -> "WAMConfig":
        if name not in PRESETS:
            raise RepwamError(f"unknown WAM preset {name!r}; available: {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


def _streams(video_width, video_ffn, action_width, action_ffn):
    return (StreamConfig(VIDEO, video_width, video_ffn), StreamConfig(ACTION, action_width, action_ffn))


# CPU: the tiny tokenizer's 8x8 x 32 latents, patch 2 -> 16 video tokens per latent frame
_TINY = WAMConfig(width=128, depth=4, heads=4, streams=_streams(128, 512, 64, 256), attn_window=8,
                  last_frame_cond=True, video_target="residual")
PRESETS: dict[str, WAMConfig] = {
    "tiny": _TINY,
    "tiny128": _TINY,  # the tiny128 tokenizer's latents have the tiny grid: the same model (preset() copies)
    # one GPU: the small tokenizer's 16x16 x 64 latents, patch 2 -> 64 tokens per latent frame
    "small": WAMConfig(
        latent_grid=(16, 16), latent_dim=64, width=512, depth=12, heads=8,
        streams=_streams(512, 2048, 256, 1024), attn_window=16, last_frame_cond=True,
        video_target="residual",
    ),
    # Wan2.1-1.3B backbone (30 x 1536, 12 heads, FFN 8960) + action stream 768; base tokenizer 16x16 x 96,
    # patch 1 (the tokenizer already compresses 16x, as Wan2.1's VAE 8x + patch 2)
    "1.3b": WAMConfig(
        latent_grid=(16, 16), latent_dim=96, patch_size=1, width=1536, depth=30, heads=12,
        streams=_streams(1536, 8960, 768, 3072), attn_window=32, max_latent_frames=32, last_frame_cond=True,
        video_target="residual",
    ),
    # Wan2.2-5B backbone (30 x 3072, 24 heads, FFN 14336) + action stream 768
    "5b": WAMConfig(
        latent_grid=(16, 16), latent_dim=96, patch_size=1, width=3072, depth=30, heads=24,
        streams=_streams(3072, 14336, 768, 3072), attn_window=32, max_latent_frames=32, last_frame_cond=True,
        video_target="residual",
    ),
}


# --------------------------------------------------------------------------------------------
# token layout and the attention mask
# --------------------------------------------------------------------------------------------


@dataclass
class TokenMeta:
    """Per-token layout of a stretch of the sequence: each field (N,)."""

    chunk: torch.Tensor  # chunk id (0 = z_1)
    noisy: torch.Tensor  # bool: the noisy copy of the chunk (False = clean context)
    frame: torch.Tensor  # latent-frame index (RoPE position, window)
    expert: torch.Tensor | None = None  # bool: a robot-stream token (robot action or state); None = all False

    def __post_init__(self):
        if self.expert is None:
            self.expert = torch.zeros_like(self.noisy, dtype=torch.bool)

    def __len__(self) -> int:
        return self.chunk.numel()

    @staticmethod
    def cat(metas: list["TokenMeta"]) -> "TokenMeta":
        return TokenMeta(*(torch.cat([getattr(m, f.name) for m in metas]) for f in fields(TokenMeta)))

    def select(self, index: torch.Tensor) -> "TokenMeta":
        return TokenMeta(*(getattr(self, f.name)[index] for f in fields(TokenMeta)))

    @staticmethod
    def frames(frames: torch.Tensor, chunk: torch.Tensor, noisy: bool, per_frame: int,
               expert: bool = False) -> "TokenMeta":
        """Tokens of `per_frame` consecutive tokens per latent frame: frames, chunk (F,) -> (F·per_frame,)."""
        n = frames.numel() * per_frame
        flag = lambda v: torch.full((n,), v, dtype=torch.bool, device=frames.device)  # noqa: E731
        return TokenMeta(chunk.repeat_interleave(per_frame), flag(noisy), frames.repeat_interleave(per_frame),
                         flag(expert))


def group_meta(cfg: WAMConfig, group: str, frames: torch.Tensor, chunk: torch.Tensor, noisy: bool) -> TokenMeta:
    """Layout of a token group's tokens for latent frames `frames` (F,) of chunks `chunk` (F,)."""
    return TokenMeta.frames(frames, chunk, noisy, cfg.group_tokens_per_frame(group), expert=group in (ROBOT, STATE))


def allowed(q_chunk, q_noisy, q_frame, k_chunk, k_noisy, k_frame, window: int | None = None):
    """May query attend to key? Elementwise on broadcastable tensors (a flex-attention mask_mod body).

    clean query, chunk i: clean keys of chunks <= i;  noisy query, chunk i: clean keys of chunks < i
    and noisy keys of chunk i. Window: the key's latent frame is less than `window` frames before the
    query's (keys later in the same chunk are always in).
    """
    clean_key = ~k_noisy & ((k_chunk < q_chunk) | ((k_chunk == q_chunk) & ~q_noisy))
    own_noisy = k_noisy & q_noisy & (k_chunk == q_chunk)
    ok = clean_key | own_noisy
    if window is not None:
        ok = ok & (q_frame - k_frame < window)
    return ok


def wam_attention_mask(q: TokenMeta, k: TokenMeta, window: int | None = None) -> torch.Tensor:
    """Boolean self-attention mask (N_q, N_k) from per-token layouts; True = may attend."""
    return allowed(q.chunk[:, None], q.noisy[:, None], q.frame[:, None],
                   k.chunk[None, :], k.noisy[None, :], k.frame[None, :], window)


def frame_chunks(num_frames: int, chunk_size: int, device=None) -> torch.Tensor:
    """Chunk id of every latent frame (T',): frame 0 -> 0, frames 1..k -> 1, k+1..2k -> 2, ..."""
    f = torch.arange(num_frames, device=device)
    return torch.where(f == 0, 0, (f - 1) // chunk_size + 1)


def layout_mask_mod(q: TokenMeta, k: TokenMeta, window: int | None = None, valid_k=None, n_c: int = 0, q0: int = 0,
                    keys=None, drop_keys=None, open_rows=None):
    """The flex-attention mask_mod (b, h, q_idx, kv_idx) -> bool of `wam_attention_mask` and the padding rule.

    q, k: layouts of the queries and of every key ([cached history, queries]). valid_k (B, N_k) bool: keys of
    padded frames are closed, except a query's own key (n_c + its index). Sub-problems of the gated attention:
    q_idx counts from query q0; kv_idx indexes `keys` (N_e,) when given; drop_keys (N_k,) closes keys;
    open_rows (B, N_q) or (N_q,) opens a whole row.
    """
    def mod(b, h, q_idx, kv_idx):
        qi = q_idx + q0
        ki = kv_idx if keys is None else keys[kv_idx]
        ok = allowed(q.chunk[qi], q.noisy[qi], q.frame[qi], k.chunk[ki], k.noisy[ki], k.frame[ki], window)
        if valid_k is not None:
            ok = (ok & valid_k[b, ki]) | (ki == qi + n_c)
        if drop_keys is not None:
            ok = ok & ~drop_keys[ki]
        if open_rows is not None:
            ok = ok | (open_rows[b, qi] if open_rows.ndim == 2 else open_rows[qi])
        return ok
    return mod


def dense_mask(mod, batch: int, n_q: int, n_k: int, device) -> torch.Tensor:
    """A mask_mod evaluated on every (batch, query, key): (batch, N_q, N_k) bool."""
    b, i, j = (torch.arange(n, device=device) for n in (batch, n_q, n_k))
    return mod(b[:, None, None], 0, i[None, :, None], j[None, None, :])


def flex_masks(q: TokenMeta, k: TokenMeta, window: int | None, valid_k=None) -> tuple:
    """BlockMasks of the WAM's self-attention: (full mask, GatedMasks of BlockMasks | None), as the dense path.

    valid_k (B, N_k) bool or None. The block sparsity comes from the layout rule, so fully closed blocks
    (later chunks, keys out of the window) are skipped. The gated masks' `has` is dense but small
    (video/ℓ queries x robot-stream keys).
    """
    dev, n_q, n_k = q.chunk.device, len(q), len(k)
    B = None if valid_k is None else valid_k.shape[0]
    common = dict(window=window, valid_k=valid_k, n_c=n_k - n_q)
    block = lambda mod, lq, lk: create_block_mask(mod, B, None, lq, lk, device=dev)  # noqa: E731
    n_world = int((~q.expert).sum())
    if n_world == 0 or not bool(k.expert.any()):
        return block(layout_mask_mod(q, k, **common), n_q, n_k), None
    if bool(q.expert[:n_world].any()):
        raise RepwamError("internal: video and ℓ queries must come before the robot-stream queries")
    idx = k.expert.nonzero().squeeze(1)
    expert_mod = layout_mask_mod(q, k, keys=idx, **common)
    has = dense_mask(expert_mod, B or 1, n_world, len(idx), dev).any(-1)  # (B or 1, n_world)
    has = has if B else has[0]
    gated = GatedMasks(
        n_world, block(layout_mask_mod(q, k, drop_keys=k.expert, **common), n_world, n_k), idx,
        block(layout_mask_mod(q, k, keys=idx, open_rows=~has, **common), n_world, len(idx)),
        has[:, None, :, None] if B else has[:, None],
        block(layout_mask_mod(q, k, q0=n_world, **common), n_q - n_world, n_k) if n_world < n_q else None)
    return None, gated


_compiled_flex = None


def flex_attend(q, k, v, block_mask: BlockMask):
    """flex_attention, compiled on CUDA (the fused kernel that skips closed blocks); eager elsewhere, where it
    materialises the scores (torch 2.13 on the CPU: forward only, no backward)."""
    global _compiled_flex
    if q.device.type != "cuda":
        return flex_attention(q, k, v, block_mask=block_mask)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)  # sequence lengths vary: automatic dynamic shapes
    return _compiled_flex(q, k, v, block_mask=block_mask)


def clip_layout(cfg: WAMConfig, num_frames: int, chunk_size: int, drop_video: bool = False, device=None,
                drop_ell: bool = False):
    """Teacher-forcing layout of a clip: ({group: (clean TokenMeta, noisy TokenMeta | None)}, n_clean).

    Groups are cfg.token_groups. Clean copies cover the frames of every chunk but the last (n_clean
    frames); noisy copies cover frames 1..T'-1. State tokens have no noisy copy; with drop_video
    (drop_ell) the noisy video (ℓ) tokens are left out.
    """
    chunk = frame_chunks(num_frames, chunk_size, device)
    n_clean = int((chunk < chunk[-1]).sum())
    frames = torch.arange(num_frames, device=device)
    layout = {}
    for g in cfg.token_groups:
        f0 = cfg.group_first_frame(g)
        last = f0 if g == ROBOT and not cfg.robot_history else n_clean  # no clean robot tokens without history
        clean = group_meta(cfg, g, frames[f0:last], chunk[f0:last], False)
        left_out = g == STATE or (drop_video and g == VIDEO) or (drop_ell and g == ACTION)
        layout[g] = (clean, None if left_out else group_meta(cfg, g, frames[1:], chunk[1:], True))
    return layout, n_clean


# --------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def _norm(dim: int, on: bool) -> nn.Module:
    return nn.RMSNorm(dim, eps=1e-6) if on else nn.Identity()


class SelfAttention(nn.Module):
    """Self-attention shared by all streams at width D: qkv, per-head qk-norm, output projection."""

    def __init__(self, dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.q_norm, self.k_norm = _norm(dim // heads, qk_norm), _norm(dim // heads, qk_norm)

    def project(self, x):
        # x (B, N, D) -> q, k, v each (B, heads, N, head_dim)
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def attend(self, q, k, v, mask):
        # q (B, h, N_q, d), k, v (B, h, N_k, d), mask (N_q, N_k) or (B, 1, N_q, N_k) bool or a flex BlockMask
        # -> (B, h, N_q, d)
        if isinstance(mask, BlockMask):
            return flex_attend(q, k, v, mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def out(self, y):
        # (B, h, N, d) -> (B, N, D)
        return self.proj(y.transpose(1, 2).flatten(2))


class CrossAttention(nn.Module):
    """Cross-attention from every token to the text (shared by the streams); output projection zero-init."""

    def __init__(self, dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.q_norm, self.k_norm = _norm(dim // heads, qk_norm), _norm(dim // heads, qk_norm)

    def text_kv(self, text):
        # text (B, N_text, D) -> k, v each (B, heads, N_text, head_dim)
        B, N, _ = text.shape
        k, v = self.kv(text).view(B, N, 2, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return self.k_norm(k), v

    def forward(self, x, kv, text_mask):
        # x (B, N, D); kv from text_kv; text_mask (B, N_text) bool (or additive float) -> (B, N, D)
        B, N, _ = x.shape
        q = self.q_norm(self.q(x).view(B, N, self.heads, -1).transpose(1, 2))
        y = F.scaled_dot_product_attention(q, *kv, attn_mask=text_mask[:, None, None, :])
        return self.proj(y.transpose(1, 2).flatten(2))


class StreamLayer(nn.Module):
    """One stream's own weights in one block: norms, adaLN offset, width adapters to D, FFN."""

    def __init__(self, width: int, attn_width: int, ffn_hidden: int):
        super().__init__()
        adapter = lambda i, o: nn.Identity() if width == attn_width else nn.Linear(i, o)  # noqa: E731
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)  # before cross-attention: affine, unmodulated (Wan)
        self.norm3 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Parameter(torch.zeros(6, width))  # per-block offset on the shared time MLP
        self.attn_in, self.attn_out = adapter(width, attn_width), adapter(attn_width, width)
        self.cross_in, self.cross_out = adapter(width, attn_width), adapter(attn_width, width)
        self.ffn = MLP(width, ffn_hidden)


@dataclass
class GatedMasks:
    """Masks of the gated two-softmax attention (module docstring), for a query set with video/ℓ queries
    first and robot-stream keys present; leading dims (…) are () or (B, 1) as in the full mask."""

    n_world: int  # queries [0, n_world) are video/ℓ tokens, the rest robot-stream tokens
    world: torch.Tensor  # (…, n_world, N_k): the full mask without the robot-stream keys
    expert_keys: torch.Tensor  # (N_e,) indices of the robot-stream keys
    expert: torch.Tensor  # (…, n_world, N_e): the full mask on them, rows without any opened (see has)
    has: torch.Tensor  # (…, n_world, 1) bool: the row has a robot-stream key (the others add nothing)
    rest: torch.Tensor  # (…, N_q - n_world, N_k): robot-stream queries, one softmax over every key
    # with merge: the three attentions as one call, queries `rows` (n_world + N_q,) against every key under
    # `merged` (…, n_world + N_q, N_k) = [world rows, expert rows (closed outside the robot-stream keys), rest rows]
    rows: torch.Tensor | None = None
    merged: torch.Tensor | None = None

    @staticmethod
    def build(mask: torch.Tensor, q: TokenMeta, k: TokenMeta, merge: bool = False) -> "GatedMasks | None":
        """From the full mask (…, N_q, N_k); None when one softmax serves every query (no world query
        or no robot-stream key). merge: also the one-call form, fewer and larger SDPA calls, for small
        query sets (a sampled chunk; with many queries the gathered robot-stream keys are cheaper)."""
        n_world = int((~q.expert).sum())
        if n_world == 0 or not bool(k.expert.any()):
            return None
        if bool(q.expert[:n_world].any()):
            raise RepwamError("internal: video and ℓ queries must come before the robot-stream queries")
        idx = k.expert.nonzero().squeeze(1)
        head = mask[..., :n_world, :]
        expert = head.index_select(-1, idx)
        has = expert.any(-1, keepdim=True)
        g = GatedMasks(n_world, head & ~k.expert, idx, expert | ~has, has, mask[..., n_world:, :])
        if merge:
            g.rows = torch.cat([torch.arange(n_world), torch.arange(len(q))]).to(mask.device)
            g.merged = torch.cat([g.world, (head | ~has) & k.expert, g.rest], -2)
        return g


@dataclass
class AttnContext:
    """What every block needs besides the tokens: mask, RoPE of the queries, the text."""

    mask: "torch.Tensor | BlockMask | None"  # (N_q, N_k) or (B, 1, N_q, N_k) bool, keys = [cached history, queries]
    # (or a flex BlockMask; None with flex when `gated` serves every query)
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin each (N_q, head_dim/2)
    text_mask: torch.Tensor  # (B, N_text) bool
    gated: GatedMasks | None = None  # set when video/ℓ queries meet robot-stream keys


@dataclass
class ChunkPlan:
    """What every Euler step of a sampled chunk shares, for one cache: built once per chunk."""

    ctx: AttnContext  # masks (additive float ones for SDPA) and RoPE of the chunk's tokens after the cached history
    kv: list  # per block (k, v) (B, h, N_c + N_q, d): the cached history, then slots the steps overwrite
    stacked: list | None = None  # per block StackedStreams, when the chunk's streams share one shape


class MoTBlock(nn.Module):
    """Mixture-of-transformers block: shared self- and cross-attention at width D, per-stream rest."""

    def __init__(self, cfg: WAMConfig):
        super().__init__()
        D = cfg.width
        self.attn = SelfAttention(D, cfg.heads, cfg.qk_norm)
        self.cross = CrossAttention(D, cfg.heads, cfg.qk_norm)
        self.streams = nn.ModuleDict({s.name: StreamLayer(s.width, D, s.ffn_hidden) for s in cfg.active_streams})
        # per head: how much video/ℓ queries take from robot-stream keys; zero = the WAM without the robot stream
        self.robot_gate = nn.Parameter(torch.zeros(cfg.heads)) if cfg.has(ROBOT) else None

    def self_attention(self, q, k, v, ctx: AttnContext):
        # q (B, h, N_q, d), k, v (B, h, N_k, d) -> (B, h, N_q, d)
        g = ctx.gated
        if g is None:
            return self.attn.attend(q, k, v, ctx.mask)
        gate = self.robot_gate.to(q.dtype)[:, None, None]
        if g.merged is not None:
            y_w, y_e, y_r = self.attn.attend(q.index_select(2, g.rows), k, v, g.merged).split(
                [g.n_world, g.n_world, q.shape[2] - g.n_world], 2)
            y = y_w + gate * (y_e * g.has)
            return torch.cat([y, y_r], 2) if y_r.shape[2] else y
        q_w = q[:, :, : g.n_world]
        k_e, v_e = k.index_select(2, g.expert_keys), v.index_select(2, g.expert_keys)
        y_e = self.attn.attend(q_w, k_e, v_e, g.expert) * g.has
        y = self.attn.attend(q_w, k, v, g.world) + gate * y_e
        if g.n_world < q.shape[2]:
            y = torch.cat([y, self.attn.attend(q[:, :, g.n_world :], k, v, g.rest)], 2)
        return y

    def forward(self, x: dict, mod: dict, ctx: AttnContext, text, past_kv=None, kv_only: bool = False,
                kv_slots: bool = False):
        """x {stream: (B, N_s, W_s)}, mod {stream: (B, N_s, 6, W_s)}; text (B, N_text, D) or its (k, v).

        past_kv: (k, v) of the cached history (B, h, N_c, d) or None; with kv_slots, buffers
        (B, h, N_c + N, d) whose last N slots are overwritten with x's keys and values (no concatenation:
        the sampler reuses them every Euler step). Returns (x, (k, v) of x's tokens); with kv_only the
        block stops after computing them (the last block of an append).
        """
        names, sizes = list(x), [t.shape[1] for t in x.values()]
        lay = {s: self.streams[s] for s in names}
        m = {s: (mod[s] + lay[s].modulation).unbind(-2) for s in names}  # 6 x (B, N_s, W_s)

        h = torch.cat([lay[s].attn_in(modulate(lay[s].norm1(x[s]), m[s][0], m[s][1])) for s in names], 1)
        y, new_kv = self.shared_self_attention(h, ctx, past_kv, kv_only, kv_slots)
        if kv_only:
            return x, new_kv
        y = y.split(sizes, 1)
        x = {s: x[s] + m[s][2] * lay[s].attn_out(y[i]) for i, s in enumerate(names)}

        h = torch.cat([lay[s].cross_in(lay[s].norm2(x[s])) for s in names], 1)
        y = self.shared_cross_attention(h, text, ctx).split(sizes, 1)
        x = {s: x[s] + lay[s].cross_out(y[i]) for i, s in enumerate(names)}

        x = {s: x[s] + m[s][5] * lay[s].ffn(modulate(lay[s].norm3(x[s]), m[s][3], m[s][4])) for s in names}
        return x, new_kv

    def forward_stacked(self, x, mod, p: "StackedStreams", ctx: AttnContext, text, past_kv=None,
                        kv_slots: bool = False):
        """`forward` for S streams of one shape stacked: x (S, B·N, W), mod (S, 1 or B·N, 6, W), p this block's
        stacked weights of those streams (in sequence order, N tokens each); one batched matmul per layer
        instead of one per stream. Returns (x, (k, v))."""
        S, BN, W = x.shape
        B = ctx.text_mask.shape[0]
        lay = self.streams[p.names[0]]  # the parameter-free layers, the same for every stream
        m = (mod + p.modulation).unbind(-2)  # 6 x (S, 1 or B·N, W)
        # (S, B·N, D) -> (B, S·N, D), the streams' tokens in sequence order, and back
        joined = lambda t: t.view(S, B, BN // B, -1).transpose(0, 1).flatten(1, 2)  # noqa: E731
        split = lambda t: t.view(B, S, BN // B, -1).transpose(0, 1).flatten(1, 2)  # noqa: E731

        h = p.linear(modulate(lay.norm1(x), m[0], m[1]), "attn_in")
        y, new_kv = self.shared_self_attention(joined(h), ctx, past_kv, False, kv_slots)
        x = x + m[2] * p.linear(split(y), "attn_out")
        h = F.layer_norm(x, (W,), eps=lay.norm2.eps) * p.norm2_weight + p.norm2_bias
        x = x + p.linear(split(self.shared_cross_attention(joined(p.linear(h, "cross_in")), text, ctx)), "cross_out")
        h = lay.ffn.act(p.linear(modulate(lay.norm3(x), m[3], m[4]), "fc1"))
        return x + m[5] * p.linear(h, "fc2"), new_kv

    def shared_self_attention(self, h, ctx: AttnContext, past_kv, kv_only: bool, kv_slots: bool):
        """h (B, N, D) -> (y (B, N, D) or None with kv_only, (k, v) of these tokens); past_kv as in forward."""
        q, k, v = self.attn.project(h)  # (B, h, N, d)
        q, k = apply_rope(torch.stack([q, k]), *ctx.rope).unbind(0)  # one call: same positions
        new_kv = (k, v)
        if kv_only:
            return None, new_kv
        if kv_slots:
            n = k.shape[2]
            past_kv[0][:, :, -n:].copy_(k)
            past_kv[1][:, :, -n:].copy_(v)
            k, v = past_kv
        elif past_kv is not None:
            k, v = torch.cat([past_kv[0], k], 2), torch.cat([past_kv[1], v], 2)
        return self.attn.out(self.self_attention(q, k, v, ctx)), new_kv

    def shared_cross_attention(self, h, text, ctx: AttnContext):
        """h (B, N, D); text (B, N_text, D) or its (k, v) -> (B, N, D)."""
        return self.cross(h, self.cross.text_kv(text) if torch.is_tensor(text) else text, ctx.text_mask)


@dataclass
class StackedStreams:
    """One block's weights of streams with the same width, FFN and token count, stacked on a leading dim (S, ...)
    for `MoTBlock.forward_stacked` (sampling: ℓ and robot tokens of an actions-only chunk): copies of the
    parameters, which `WorldActionModel._stacked_streams` rebuilds whenever one of them changes."""

    names: tuple[str, ...]
    weights: dict  # layer -> (S, in, out) transposed weight or None (Identity adapter)
    biases: dict  # layer -> (S, 1, out)
    norm2_weight: torch.Tensor  # (S, 1, W)
    norm2_bias: torch.Tensor
    modulation: torch.Tensor  # (S, 1, 6, W)

    LAYERS = ("attn_in", "attn_out", "cross_in", "cross_out", "fc1", "fc2")

    @staticmethod
    def build(block: MoTBlock, names) -> "StackedStreams":
        lays = [block.streams[s] for s in names]
        get = lambda lay, n: getattr(lay.ffn, n) if n in ("fc1", "fc2") else getattr(lay, n)  # noqa: E731
        weights, biases = {}, {}
        for n in StackedStreams.LAYERS:
            mods = [get(lay, n) for lay in lays]
            linear = isinstance(mods[0], nn.Linear)
            weights[n] = torch.stack([m.weight.t() for m in mods]) if linear else None
            biases[n] = torch.stack([m.bias for m in mods])[:, None] if linear else None
        stack = lambda f: torch.stack([f(lay) for lay in lays])[:, None]  # noqa: E731
        return StackedStreams(tuple(names), weights, biases, stack(lambda lay: lay.norm2.weight),
                              stack(lambda lay: lay.norm2.bias), stack(lambda lay: lay.modulation))

    def linear(self, x, layer: str):
        # x (S, M, in) -> (S, M, out); Identity when the stream's width is the attention width
        w = self.weights[layer]
        return x if w is None else torch.baddbmm(self.biases[layer], x, w)

    @staticmethod
    def fits(cfg: WAMConfig, meta: dict) -> tuple[str, ...] | None:
        """The streams of a chunk with layout meta {group: TokenMeta} when they can be stacked, else None."""
        names = tuple(s for s in cfg.token_groups if s in meta)
        if len(names) < 2 or STATE in names:
            return None
        shapes = {(cfg.stream(s).width, cfg.stream(s).ffn_hidden, len(meta[s])) for s in names}
        return names if len(shapes) == 1 else None


class TimeEmbed(nn.Module):
    """Flow time per token -> embedding e (B, N, W) and adaLN parameters (B, N, 6, W) (shared by blocks)."""

    def __init__(self, width: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, alpha):
        # alpha (B, N) in [0, 1], 1 = clean
        f = sincos_1d(alpha.flatten() * TIME_SCALE, self.freq_dim).view(*alpha.shape, -1)
        e = self.mlp(f.to(self.mlp[0].weight.dtype))
        return e, self.proj(e).unflatten(-1, (6, -1))


class Head(nn.Module):
    """Final adaLN (shift, scale = time embedding + learned offset, Wan) and a zero-initialised Linear."""

    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Parameter(torch.zeros(2, width))
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x, e):
        shift, scale = (self.modulation + e[:, :, None]).unbind(2)
        return self.linear(modulate(self.norm(x), shift, scale))


class StreamIO(nn.Module):
    """A stream's input embedding (+ learned/sin-cos position within a latent frame), time MLP, head;
    the robot stream also embeds the state tokens (`state_embed`)."""

    def __init__(self, cfg: WAMConfig, s: StreamConfig):
        super().__init__()
        dim, per_frame = cfg.token_dim(s.name), cfg.group_tokens_per_frame(s.name)
        self.per_frame = per_frame
        self.embed = nn.Linear(dim, s.width)
        self.time = TimeEmbed(s.width, cfg.time_freq_dim)
        self.head = Head(s.width, dim)
        self.state_embed = nn.Linear(cfg.state_dim, s.width) if s.name == ROBOT and cfg.has(STATE) else None
        self.aux_head = None  # the state tokens' read-out (WAMConfig.aux_dim), training only
        if s.name == ROBOT and cfg.aux_dim:
            self.aux_head = nn.Sequential(nn.LayerNorm(s.width), nn.Linear(s.width, s.width),
                                          nn.GELU(approximate="tanh"), nn.Linear(s.width, cfg.aux_dim))
        # what the last clean frame before a noisy token's chunk adds to its embedding: video, the frame's patch
        # (last_frame_cond); robot, the frame's state (last_state_cond)
        self.anchor = None
        if s.name == VIDEO and cfg.last_frame_cond:
            self.anchor = nn.Linear(dim, s.width)
        elif s.name == ROBOT and cfg.last_state_cond:
            self.anchor = nn.Linear(cfg.state_dim, s.width)
        if per_frame == 1:
            self.pos = None
        elif s.name == VIDEO and cfg.spatial_pos == "sincos":
            self.register_buffer("pos", sincos_2d(*cfg.patch_grid, s.width), persistent=False)
        else:
            self.pos = nn.Parameter(torch.zeros(per_frame, s.width))

    def forward(self, feats):
        # feats (B, F·per_frame, dim), whole latent frames -> (B, F·per_frame, W)
        x = self.embed(feats)
        if self.pos is not None:
            x = x + self.pos.to(x.dtype).repeat(x.shape[1] // self.per_frame, 1)
        return x


# --------------------------------------------------------------------------------------------
# text and the KV cache
# --------------------------------------------------------------------------------------------


@dataclass
class TextContext:
    emb: torch.Tensor  # (B, N_text, D), projected (or the null embedding)
    mask: torch.Tensor  # (B, N_text) bool


@dataclass
class WAMCache:
    """Sampling state of a batch of episodes: text keys/values and the clean history's self-attention K/V."""

    text: TextContext
    text_kv: list  # per block (k, v) of the text, (B, h, N_text, d)
    kv: list  # per block (k, v) of the cached clean tokens (B, h, N_c, d), or None while empty
    meta: TokenMeta | None = None  # layout of the cached tokens
    next_frame: int = 0  # latent-frame index of the next frame
    next_chunk: int = 0
    last_ell: torch.Tensor | None = None  # ℓ of the last sampled chunk (B, k, A), used by append
    last_robot: torch.Tensor | None = None  # robot actions of the last sampled chunk (B, k, per, A_r), ditto
    last_z: torch.Tensor | None = None  # the last clean latent frame (B, L, d_v): the anchor of the next chunk
    last_state: torch.Tensor | None = None  # its state (B, D_s) [state tokens]: the robot anchor of the next chunk
    cfg_scale: float = 1.0
    uncond: "WAMCache | None" = None  # the same history under the null text, for CFG
    robot_history: bool = True  # the executed robot actions enter the history (config.robot_history)

    @property
    def batch_size(self) -> int:
        return self.text.emb.shape[0]

    @property
    def num_tokens(self) -> int:
        return 0 if self.meta is None else len(self.meta)


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------


class WorldActionModel(Pretrained, nn.Module):
    """Block-causal flow-matching transformer over visual latents, latent actions and (stage [4]) robot actions.

    Training: `loss(batch)`; teacher-forcing pass: `forward(...)`. Sampling: `new_cache`, `append`,
    `sample_chunk`. Checkpoints: `save_pretrained` / `from_pretrained` (the text encoder is not in
    them: store its name as `meta`); `from_pretrained(..., allow_new_streams=True)` starts adaptation.
    """

    checkpoint_type = "repwam.wam"
    config_class = WAMConfig
    config_key = "wam"

    def __init__(self, cfg: WAMConfig):
        super().__init__()
        self.cfg = cfg
        self.text_proj = nn.Linear(cfg.text_dim, cfg.width)
        self.null_text = nn.Parameter(torch.zeros(cfg.width))
        if cfg.first_frame_context:  # the episode's first frame as cross-attention context (see the docstring)
            self.first_proj = nn.Linear(cfg.token_dim(VIDEO), cfg.width)
            self.first_pos = nn.Parameter(torch.zeros(cfg.group_tokens_per_frame(VIDEO), cfg.width))
        self.io = nn.ModuleDict({s.name: StreamIO(cfg, s) for s in cfg.active_streams})
        self.blocks = nn.ModuleList([MoTBlock(cfg) for _ in range(cfg.depth)])
        # recompute each block's activations in backward instead of keeping them (training only); a setting of how
        # to train, not of the model: the trainer sets it (optim.activation_checkpointing) without touching cfg
        self.grad_checkpoint = cfg.grad_checkpoint
        self.new_parameters: list[str] = []  # set by from_pretrained(..., allow_new_streams=True)
        self._stacked = None  # (key, per block StackedStreams) of the last stacked streams (_stacked_streams)
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for io in self.io.values():
            if isinstance(io.pos, nn.Parameter):
                nn.init.normal_(io.pos, std=0.02)
            for lin in (io.time.mlp[0], io.time.mlp[2]):
                nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(io.time.proj[1].weight)  # adaLN-Zero: with the zero block offsets, gates start at 0
            nn.init.zeros_(io.time.proj[1].bias)
            nn.init.zeros_(io.head.linear.weight)
            nn.init.zeros_(io.head.linear.bias)
            if io.anchor is not None:  # starts as the unconditioned model
                nn.init.zeros_(io.anchor.weight)
        for blk in self.blocks:
            nn.init.zeros_(blk.cross.proj.weight)  # the ungated cross-attention starts as a no-op (PixArt)
            nn.init.zeros_(blk.cross.proj.bias)
            if blk.robot_gate is not None:
                nn.init.zeros_(blk.robot_gate)  # video and ℓ start blind to the robot stream
        nn.init.normal_(self.null_text, std=0.02)
        if self.cfg.first_frame_context:
            nn.init.normal_(self.first_pos, std=0.02)

    @classmethod
    def from_pretrained(cls, path, *, allow_new_streams: bool = False, **overrides):
        """The model in eval mode; overrides replace config fields (attn_window, sampling defaults).

        allow_new_streams: the overrides may add what the checkpoint lacks (robot_action_dim, state_dim:
        the robot stream, its state tokens; first_frame_context: the first frame's context projection).
        Everything the checkpoint has is loaded; the new parameters keep their fresh initialisation and
        are listed in `model.new_parameters`. When the whole robot stream is new, its zero robot_gate makes
        the video and ℓ outputs those of the checkpoint until training moves the gate (and its zero head
        outputs zero robot velocities); a new first-frame context changes them from the start.
        `checkpoint_meta` is the loaded checkpoint's (path, weights hash: the parent of the adapted model).
        """
        hint = f"{' and overrides ' + str(overrides) if overrides else ''}"
        if overrides and not allow_new_streams:
            saved = cls.config_class.from_dict(cls.read_checkpoint_config(path)[cls.config_key])
            added = sorted(set(replace(saved, **overrides).token_groups) - set(saved.token_groups))
            if added:
                raise RepwamError(f"{path} has no {added} tokens: pass allow_new_streams=True to add them freshly "
                                  "initialised (adaptation)")
        try:
            if not allow_new_streams:
                return super().from_pretrained(path, **overrides)
            base = super().from_pretrained(path)
            model = cls(replace(base.cfg, **overrides))
            missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
        except RuntimeError as e:  # load_state_dict: shapes differ from the model config.json describes
            first = str(e).strip().splitlines()[1:2] or [str(e)]
            raise RepwamError(
                f"{path}: model.safetensors does not fit the WAM built from its config.json{hint} "
                f"({first[0].strip()}); were the weights saved with another preset?"
            ) from None
        old = [n for n in missing if not (cls.is_robot_parameter(n) or n.startswith("first_"))]
        if unexpected or old:
            raise RepwamError(
                f"{path}: the overrides {overrides} drop or change parts of the checkpoint (unexpected "
                f"{unexpected[:5]}, missing {old[:5]}); allow_new_streams only adds the robot stream, its state "
                "and the first-frame context"
            )
        model.checkpoint_meta = base.checkpoint_meta  # the parent's: path and weights hash for the lineage
        model.new_parameters = sorted(missing)
        return model.eval()

    @staticmethod
    def is_robot_parameter(name: str) -> bool:
        """A parameter of the robot stream (its embeds, time MLP, head, per-block layers and attention gate)."""
        return name.startswith(f"io.{ROBOT}.") or f".streams.{ROBOT}." in name or name.endswith(f".{ROBOT}_gate")

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def stream_names(self) -> list[str]:
        return [s.name for s in self.cfg.active_streams]

    # ---- input checks ----

    def check_compatible(self, *, tokens_per_frame=None, latent_dim=None, action_dim=None, text_dim=None,
                         robot_action_dim=None, robot_per_frame=None, state_dim=None):
        """Raise RepwamError unless this WAM fits a tokenizer (L, d_v), a LAT (A), a text encoder and robot data."""
        c = self.cfg
        for what, got, want in (
            ("tokens per latent frame L", tokens_per_frame, c.tokens_per_frame),
            ("latent dim d_v", latent_dim, c.latent_dim),
            ("latent action dim A", action_dim, c.action_dim),
            ("text dim", text_dim, c.text_dim),
            ("robot action dim A_r", robot_action_dim, c.robot_action_dim),
            ("raw robot actions per latent frame", robot_per_frame, c.robot_per_frame),
            ("state dim D_s", state_dim, c.state_dim),
        ):
            if got is not None and got != want:
                raise RepwamError(f"the WAM was built for {what} = {want} but got {got}; train a WAM on these inputs")

    def _check_latents(self, z, what="z"):
        L, dv = self.cfg.tokens_per_frame, self.cfg.latent_dim
        if z.ndim != 4 or tuple(z.shape[2:]) != (L, dv):
            got = f" (L={z.shape[2]}, d_v={z.shape[3]})" if z.ndim == 4 else ""
            raise RepwamError(
                f"{what} has shape {tuple(z.shape)}{got}; this WAM expects (B, T', L={L}, d_v={dv}) "
                f"(latent grid {self.cfg.latent_grid[0]}x{self.cfg.latent_grid[1]}): "
                "use the tokenizer it was trained on"
            )

    def _check_actions(self, ell, batch: int, frames: int, what="ell"):
        want = (batch, frames, self.cfg.action_dim)
        if ell.ndim != 3 or tuple(ell.shape) != want:
            raise RepwamError(
                f"{what} has shape {tuple(ell.shape)}; expected latent actions {want} "
                f"(B, frames, action_dim={self.cfg.action_dim})"
            )

    def _check_robot(self, robot, batch: int, frames: int, what="robot"):
        want = (batch, frames, self.cfg.robot_per_frame, self.cfg.robot_action_dim)
        if robot.ndim != 4 or tuple(robot.shape) != want:
            raise RepwamError(
                f"{what} has shape {tuple(robot.shape)}; expected robot actions {want} (B, frames, "
                f"robot_per_frame={self.cfg.robot_per_frame}, robot_action_dim={self.cfg.robot_action_dim})"
            )

    def _check_state(self, state, batch: int, frames: int, what="state"):
        want = (batch, frames, self.cfg.state_dim)
        if state.ndim != 3 or tuple(state.shape) != want:
            raise RepwamError(f"{what} has shape {tuple(state.shape)}; expected states {want} "
                              f"(B, frames, state_dim={self.cfg.state_dim})")

    def _check_given(self, **inputs):
        """Each input is given exactly when this WAM has its token group."""
        why = {"ell": (ACTION, "use_latent_actions=False"), "robot": (ROBOT, "robot_action_dim=0"),
               "state": (STATE, "state_dim=0")}
        for name, x in inputs.items():
            group, off = why[name]
            if self.cfg.has(group) and x is None:
                raise RepwamError(f"this WAM needs {name} (it has the {group} tokens)")
            if not self.cfg.has(group) and x is not None:
                raise RepwamError(f"this WAM has no {group} tokens ({off}): leave {name} out")

    def _check_length(self, frames: int, what: str):
        if self.cfg.attn_window is None and frames > self.cfg.max_latent_frames:
            raise RepwamError(
                f"{what} has {frames} latent frames but max_latent_frames={self.cfg.max_latent_frames} and no "
                "attn_window is set; set attn_window (the KV cache then evicts old frames) or use shorter clips"
            )

    # ---- pieces ----

    def patchify(self, z):
        """z (B, F, L, d_v) -> video tokens (B, F·P, p²·d_v), P = L / p²."""
        (h, w), p = self.cfg.patch_grid, self.cfg.patch_size
        return rearrange(z, "b f (h p1 w p2) c -> b (f h w) (p1 p2 c)", h=h, p1=p, w=w, p2=p)

    def unpatchify(self, x):
        """video tokens (B, F·P, p²·d_v) -> z (B, F, L, d_v)."""
        (h, w), p = self.cfg.patch_grid, self.cfg.patch_size
        return rearrange(x, "b (f h w) (p1 p2 c) -> b f (h p1 w p2) c", h=h, w=w, p1=p, p2=p)

    def video_velocity(self, head, x, alpha, anchor):
        """Velocity of noisy video tokens from the video head's output. head, x (noisy tokens), anchor (the last
        clean frame's patches): (B, N, p²·d_v); alpha (B, N). See video_target in the module docstring."""
        if self.cfg.video_target == "velocity":
            return head
        gap = (1 - alpha.float()).clamp(min=RESIDUAL_MIN_GAP)[..., None]
        return (anchor.float() + head.float() - x.float()) / gap

    def flatten_robot(self, x):
        """robot actions (B, F, per, A_r) -> tokens (B, F, per·A_r), or (B, F·per, A_r) [robot_token_per_action]."""
        return x.flatten(1, 2) if self.cfg.robot_token_per_action else x.flatten(2)

    def unflatten_robot(self, x):
        """robot tokens (B, F, per·A_r) or (B, F·per, A_r) [robot_token_per_action] -> actions (B, F, per, A_r)."""
        if self.cfg.robot_token_per_action:
            return x.unflatten(1, (-1, self.cfg.robot_per_frame))
        return x.unflatten(-1, (self.cfg.robot_per_frame, self.cfg.robot_action_dim))

    def text_context(self, text_emb=None, text_mask=None, drop=None, batch_size=None, first=None) -> TextContext:
        """Project text (B, N, D_text) to width D; None, or rows where drop (B,) is True, get the null text.
        first (B, L, d_v): the episode's first latent frame, appended as context [first_frame_context; else unread]."""
        text = self._text_only(text_emb, text_mask, drop, batch_size)
        if not self.cfg.first_frame_context:
            return text
        B = text.emb.shape[0]
        if first is None:
            raise RepwamError("this WAM reads the episode's first latent frame as context (first_frame_context): "
                              "pass first=(B, L, d_v)")
        if first.ndim != 3 or first.shape[0] != B:
            raise RepwamError(f"first has shape {tuple(first.shape)}; expected (B={B}, L, d_v): one latent frame per "
                              "episode")
        self._check_latents(first[:, None], "first")
        x = self.first_proj(self.patchify(first[:, None]).to(self.first_proj.weight.dtype)) + self.first_pos
        mask = torch.ones(B, x.shape[1], dtype=torch.bool, device=x.device)
        return TextContext(torch.cat([text.emb, x.to(text.emb.dtype)], 1), torch.cat([text.mask, mask], 1))

    def _text_only(self, text_emb, text_mask, drop, batch_size) -> TextContext:
        """The instruction's part of text_context."""
        D = self.cfg.width
        if text_emb is None:
            B = batch_size or 1
            mask = torch.ones(B, 1, dtype=torch.bool, device=self.null_text.device)
            return TextContext(self.null_text.expand(B, 1, D), mask)
        wrong_batch = batch_size is not None and text_emb.shape[0] != batch_size
        if text_emb.ndim != 3 or text_emb.shape[-1] != self.cfg.text_dim or wrong_batch:
            raise RepwamError(
                f"text embeddings have shape {tuple(text_emb.shape)}; expected (B={batch_size or 'B'}, N_text, "
                f"{self.cfg.text_dim}) from the text encoder this WAM was trained with"
            )
        B, N = text_emb.shape[:2]
        mask = torch.ones(B, N, dtype=torch.bool, device=text_emb.device) if text_mask is None else text_mask.bool()
        if tuple(mask.shape) != (B, N):
            raise RepwamError(f"text_mask has shape {tuple(mask.shape)}; expected {(B, N)}")
        if not mask.any(1).all():
            raise RepwamError("a text_mask row has no valid token: pass text_emb=None (null text) instead")
        emb = self.text_proj(text_emb.to(self.text_proj.weight.dtype))
        if drop is not None and bool(drop.any()):
            null = torch.cat([self.null_text.expand(B, 1, D), emb.new_zeros(B, N - 1, D)], 1)
            null_mask = torch.zeros_like(mask)
            null_mask[:, 0] = True
            emb = torch.where(drop[:, None, None], null.to(emb.dtype), emb)
            mask = torch.where(drop[:, None], null_mask, mask)
        return TextContext(emb, mask)

    def use_flex(self, device) -> bool:
        """Whether self-attention runs as flex attention with a BlockMask (cfg.attn_backend) on this device."""
        return self.cfg.attn_backend == "flex" or (self.cfg.attn_backend == "auto" and device.type == "cuda")

    def attn_context(self, q_meta: TokenMeta, k_meta: TokenMeta, text_mask, valid_k=None,
                     merge_gated: bool = False) -> AttnContext:
        """Masks and RoPE of a pass: queries q_meta, keys k_meta = [cached history, queries]; valid_k (B, N_k)
        bool closes the keys of padded frames (each query still sees itself); merge_gated: see GatedMasks.build
        (SDPA only)."""
        dev = q_meta.frame.device
        rope = rope_cos_sin(q_meta.frame, self.cfg.width // self.cfg.heads)
        if self.use_flex(dev):
            if dev.type == "cpu" and torch.is_grad_enabled() and self.training:
                raise RepwamError("flex attention has no backward on the CPU (torch 2.13): train on the CPU with "
                                  "attn_backend='sdpa' or 'auto'")
            mask, gated = flex_masks(q_meta, k_meta, self.cfg.attn_window, valid_k)
            return AttnContext(mask, rope, text_mask, gated)
        mask = wam_attention_mask(q_meta, k_meta, self.cfg.attn_window)  # (N_q, N_k)
        if valid_k is not None:
            n_q, n_c = len(q_meta), len(k_meta) - len(q_meta)
            mask = mask[None] & valid_k[:, None, :]
            diag = torch.arange(n_q, device=mask.device)
            mask[:, diag, n_c + diag] = True  # a padded query still sees itself
            mask = mask[:, None]  # (B, 1, N_q, N_k)
        return AttnContext(mask, rope, text_mask, GatedMasks.build(mask, q_meta, k_meta, merge_gated))

    def _run(self, feats: dict, alpha: dict, meta: dict, text: TextContext, *, text_kv=None, valid=None,
             past: WAMCache | None = None, heads=None, anchors=None, plan: "ChunkPlan | None" = None, time=None,
             aux: bool = False):
        """The transformer on a set of new tokens, optionally after a cached clean history.

        feats {group: (B, N_g, token_dim)} over the token groups (video, action, robot, state);
        alpha {group: (B, N_g)} (state tokens are clean: none needed); meta {group: TokenMeta};
        valid {group: (B, N_g) bool} masks padded keys (each token still sees itself). heads: the
        streams whose outputs to compute (None: all present; () = only the K/V, the last block stops
        early). anchors {group: (B, N_a, in_dim)} [last_frame_cond, last_state_cond]: the last clean frame's
        patches (video) or states (robot) of the group's last N_a tokens (the noisy ones). plan: the attention
        context and K/V slots of `past` shared by every Euler step of a chunk (then meta, valid and past are not
        read). time {group: (e, mod)}: time embeddings already computed (broadcastable to (B, N_g, ...)), in
        place of alpha.
        aux: also return the state tokens' read-out under "aux", (B, N_state, aux_dim) [aux_dim].
        Returns ({stream: (B, N_s, token_dim)}, [(k, v) of the new tokens per block]).
        """
        groups = [g for g in self.cfg.token_groups if g in feats and feats[g].shape[1] > 0]
        parts: dict[str, list] = {}  # stream -> [(x, e, mod)] of its token groups (robot: actions, then states)
        for g in groups:
            s = ROBOT if g == STATE else g
            io = self.io[s]
            if g == STATE:
                x, a = io.state_embed(feats[g]), feats[g].new_ones(feats[g].shape[:2], dtype=torch.float32)
            else:
                x, a = io(feats[g]), alpha.get(g)
                anchor = (anchors or {}).get(g)
                if anchor is not None and anchor.shape[1] > 0:
                    n_a = anchor.shape[1]
                    x = torch.cat([x[:, : x.shape[1] - n_a], x[:, x.shape[1] - n_a :] + io.anchor(anchor)], 1)
            e, m = time[g] if time is not None and g in time else io.time(a)
            parts.setdefault(s, []).append((x, e, m))
        if all(len(ps) == 1 for ps in parts.values()):
            x = {s: ps[0][0] for s, ps in parts.items()}
            mod = {s: ps[0][2] for s, ps in parts.items()}
        else:
            x = {s: torch.cat([p[0] for p in ps], 1) for s, ps in parts.items()}
            mod = {s: torch.cat([p[2].expand(*p[0].shape[:2], *p[2].shape[2:]) for p in ps], 1)
                   for s, ps in parts.items()}
        heads = [s for s in (self.stream_names if heads is None else heads) if s in groups]

        if plan is not None:
            ctx, past_kv = plan.ctx, plan.kv
        else:
            q_meta = TokenMeta.cat([meta[g] for g in groups])
            k_meta = q_meta if past is None or past.meta is None else TokenMeta.cat([past.meta, q_meta])
            valid_k = None
            if valid is not None:
                valid_k = torch.cat([valid[g] for g in groups], 1).bool()  # (B, N_q)
                valid_k = F.pad(valid_k, (len(k_meta) - len(q_meta), 0), value=True)  # the cache holds no padding
            ctx = self.attn_context(q_meta, k_meta, text.mask, valid_k)
            past_kv = None if past is None else past.kv

        stacked = plan is not None and plan.stacked is not None and heads
        if stacked:  # (S, B·N, W): the streams through one batched matmul per layer
            names = plan.stacked[0].names
            shape = x[names[0]].shape
            x_all = torch.stack([x[s] for s in names]).flatten(1, 2)
            mod_all = torch.stack([mod[s] for s in names]).flatten(1, 2)
        new_kv = []
        for i, blk in enumerate(self.blocks):
            text_i = text.emb if text_kv is None else text_kv[i]
            past_i = None if past_kv is None else past_kv[i]
            kv_only = not heads and i == len(self.blocks) - 1
            if stacked:
                x_all, kv = blk.forward_stacked(x_all, mod_all, plan.stacked[i], ctx, text_i, past_i, True)
            elif self.grad_checkpoint and self.training and torch.is_grad_enabled():
                x, kv = checkpoint(blk, x, mod, ctx, text_i, past_i, kv_only, use_reentrant=False)
            else:
                x, kv = blk(x, mod, ctx, text_i, past_i, kv_only, plan is not None)
            new_kv.append(kv)
        if stacked:
            x = dict(zip(names, x_all.view(len(names), *shape).unbind(0)))
        # a stream's own tokens come first in x and in parts: the head reads those (never the states)
        out = {s: self.io[s].head(x[s][:, : feats[s].shape[1]], parts[s][0][1]) for s in heads}
        if aux and STATE in groups:  # the states follow the robot actions in the robot stream
            n_robot = feats[ROBOT].shape[1] if ROBOT in groups else 0
            out["aux"] = self.io[ROBOT].aux_head(x[ROBOT][:, n_robot:])
        return out, new_kv

    # ---- teacher forcing ----

    def forward(self, z, ell=None, text_emb=None, text_mask=None, *, chunk_size: int, noisy_z, alpha_z,
                noisy_ell=None, alpha_ell=None, robot=None, noisy_robot=None, alpha_robot=None, state=None,
                valid=None, drop_video: bool = False, drop_ell: bool = False, drop_text=None,
                aux: bool = False, first=None, drop_robot_history=None) -> dict:
        """One pass over whole clips with clean and noisy copies of every chunk (see the module docstring).

        The clean clip: z (B, T', L, d_v), ell (B, T'-1, A), robot (B, T'-1, per, A_r), state (B, T', D_s)
        (each exactly when the model has that token group). The noisy frames 1..T'-1: noisy_z
        (B, T'-1, L, d_v), noisy_ell (B, T'-1, A), noisy_robot (B, T'-1, per, A_r) at flow times alpha_*
        (B, T'-1) (constant within a chunk in training); noisy_ell may be left out with drop_ell.
        valid (B, T') bool; drop_text (B,) bool; first (B, L, d_v) the episode's first latent frame
        [first_frame_context]; drop_robot_history (B,) bool: these clips' clean robot tokens are closed to every
        query, as if the model had no robot history. Returns velocities {"video": (B, T'-1, L, d_v) or None
        when drop_video, "action": (B, T'-1, A) or None when drop_ell [ℓ stream], "robot": (B, T'-1, per, A_r)
        [robot stream], with aux [aux_dim] "aux": (B, n_clean, aux_dim), the read-out of the clean state tokens
        of frames 0 .. n_clean-1}.
        """
        c = self.cfg
        self._check_latents(z)
        B, T = z.shape[:2]
        if T < 2:
            raise RepwamError(f"a training clip needs at least 2 latent frames, got {T}")
        self._check_length(T, "the clip")
        self._check_given(ell=ell, robot=robot, state=state)
        drop_ell = drop_ell or not c.has(ACTION)
        if drop_video and drop_ell and not c.has(ROBOT):
            raise RepwamError("drop_video with no ℓ and no robot tokens leaves nothing to denoise")
        if not drop_video:
            self._check_latents(noisy_z, "noisy_z")
        if c.has(ACTION):
            self._check_actions(ell, B, T - 1)
            if not drop_ell:
                self._check_actions(noisy_ell, B, T - 1, "noisy_ell")
        if c.has(ROBOT):
            self._check_robot(robot, B, T - 1)
            self._check_robot(noisy_robot, B, T - 1, "noisy_robot")
        if c.has(STATE):
            self._check_state(state, B, T)
        layout, n_clean = clip_layout(c, T, chunk_size, drop_video, z.device, drop_ell=drop_ell)
        P, P_r = c.group_tokens_per_frame(VIDEO), c.group_tokens_per_frame(ROBOT)
        n_robot_clean = n_clean - 1 if c.robot_history else 0  # latent frames of clean robot tokens

        clean = {VIDEO: lambda: self.patchify(z[:, :n_clean]), ACTION: lambda: ell[:, : n_clean - 1],
                 ROBOT: lambda: self.flatten_robot(robot[:, : n_robot_clean]), STATE: lambda: state[:, :n_clean]}
        noisy = {VIDEO: lambda: (self.patchify(noisy_z), alpha_z.repeat_interleave(P, 1)),
                 ACTION: lambda: (noisy_ell, alpha_ell),
                 ROBOT: lambda: (self.flatten_robot(noisy_robot), alpha_robot.repeat_interleave(P_r, 1))}
        feats, alpha, meta = {}, {}, {}
        for g, (m_clean, m_noisy) in layout.items():
            f = clean[g]()
            feats[g], alpha[g], meta[g] = [f], [f.new_ones(f.shape[:2], dtype=torch.float32)], [m_clean]
            if m_noisy is not None:
                f, a = noisy[g]()
                feats[g].append(f)
                alpha[g].append(a.float())
                meta[g].append(m_noisy)
        feats = {g: torch.cat(v, 1) for g, v in feats.items()}
        alpha = {g: torch.cat(v, 1) for g, v in alpha.items()}
        meta = {g: TokenMeta.cat(v) for g, v in meta.items()}
        valid_g = None if valid is None else {g: valid.bool()[:, meta[g].frame] for g in meta}
        if drop_robot_history is not None and n_robot_clean and bool(drop_robot_history.any()):
            if valid_g is None:
                valid_g = {g: torch.ones(B, len(m), dtype=torch.bool, device=z.device) for g, m in meta.items()}
            hidden = torch.zeros_like(valid_g[ROBOT])
            hidden[:, : n_robot_clean * P_r] = drop_robot_history.bool()[:, None]
            valid_g[ROBOT] = valid_g[ROBOT] & ~hidden

        anchors = {}  # noisy frame f of chunk i >= 1: the last frame of chunk i-1
        last = (frame_chunks(T, chunk_size, z.device)[1:] - 1) * chunk_size  # (T'-1,)
        if c.last_frame_cond and not drop_video:
            anchors[VIDEO] = self.patchify(z[:, last])
        if c.last_state_cond:
            anchors[ROBOT] = state[:, last].repeat_interleave(P_r, 1)
        text = self.text_context(text_emb, text_mask, drop_text, B, first)
        heads = [g for g in self.stream_names if layout[g][1] is not None]
        aux = aux and c.aux_dim > 0
        out, _ = self._run(feats, alpha, meta, text, valid=valid_g, heads=heads, anchors=anchors, aux=aux)
        result = {VIDEO: None}
        if aux:
            result["aux"] = out["aux"]
        if not drop_video:
            noisy_tokens = slice(n_clean * P, None)  # the noisy video tokens follow the clean ones
            v = self.video_velocity(out[VIDEO][:, noisy_tokens], feats[VIDEO][:, noisy_tokens],
                                    alpha[VIDEO][:, noisy_tokens], anchors.get(VIDEO))
            result[VIDEO] = self.unpatchify(v)
        if c.has(ACTION):
            result[ACTION] = None if drop_ell else out[ACTION][:, n_clean - 1 :]
        if c.has(ROBOT):
            result[ROBOT] = self.unflatten_robot(out[ROBOT][:, n_robot_clean * P_r :])
        return result

    def sample_alpha(self, shape, device=None) -> torch.Tensor:
        """Flow times for noisy chunks: U(0, 1) or logit-normal (sigmoid of a normal)."""
        if self.cfg.alpha_sampler == "uniform":
            return torch.rand(shape, device=device)
        return torch.sigmoid(self.cfg.logit_normal_mean + self.cfg.logit_normal_std * torch.randn(shape, device=device))

    def loss(self, batch: dict, *, chunk_size: int | None = None, drop_video: bool | None = None,
             drop_ell: bool | None = None) -> dict:
        """Rectified-flow loss on a batch {"z", "ell" [ℓ stream], "action" [robot stream], "state" [state tokens],
        optional "valid", "text", "text_mask", "aux" (B, T', aux_dim) [aux_dim: the read-out's target per frame],
        "first" (B, L, d_v) [first_frame_context: the episode's first latent frame]}
        (the keys of `repwam.wam.data.WAMClips`; others are ignored).

        Chunk size, video drop, ℓ drop and text dropout are drawn from torch's global RNG (the drops
        only in training mode) unless given; so are the robot history's (robot_history_drop, per clip) and the
        clips whose future frames are given clean (future_frames_given).
        Returns scalar tensors: loss, video, action (the ℓ loss) and ell_dropped [ℓ stream], robot [robot stream],
        aux [aux_dim, given "aux"], chunk_size, video_dropped.
        """
        c = self.cfg
        z = batch["z"]
        self._check_latents(z)
        B, T = z.shape[:2]
        dev = z.device
        needed = {"ell": c.has(ACTION), "action": c.has(ROBOT), "state": c.has(STATE)}
        missing = [k for k, on in needed.items() if on and batch.get(k) is None]
        if missing:
            raise RepwamError(f"this WAM trains on batch keys {missing} (robot actions are 'action', (B, T'-1, "
                              f"per, A_r); states 'state', (B, T', D_s)): build the clips with them")
        ell, robot, state = (batch[k] if on else None for k, on in needed.items())
        valid = batch.get("valid")
        valid = torch.ones(B, T, dtype=torch.bool, device=dev) if valid is None else valid.bool()
        if tuple(valid.shape) != (B, T):
            raise RepwamError(f"valid has shape {tuple(valid.shape)}; expected (B, T') = {(B, T)}")
        if chunk_size is None:
            chunk_size = c.chunk_sizes[int(torch.randint(len(c.chunk_sizes), ()))]
        if drop_video is None:  # only when something else is denoised
            drop_video = self.training and (c.has(ACTION) or c.has(ROBOT)) and bool(torch.rand(()) < c.video_drop)
        drop_text = (torch.rand(B, device=dev) < c.text_dropout) if self.training else None
        if drop_ell is None:  # robot-only mode: only with robot tokens to denoise
            drop_ell = self.training and c.has(ACTION) and c.has(ROBOT) and bool(torch.rand(()) < c.ell_drop)
        drop_ell = drop_ell or not c.has(ACTION)
        drop_history = None
        if self.training and c.robot_history_drop > 0:
            drop_history = torch.rand(B, device=dev) < c.robot_history_drop

        chunk = frame_chunks(T, chunk_size, dev)[1:] - 1  # noisy frame -> noisy chunk index
        n_chunks = int(chunk[-1]) + 1 if T > 1 else 0

        def noised(x):  # x (B, T'-1, ...) -> (x_alpha, alpha (B, T'-1), target velocity); one alpha per chunk
            a = self.sample_alpha((B, n_chunks), dev)[:, chunk]
            u = x.float()
            eps = torch.randn_like(u)
            a_ = a.view(B, T - 1, *[1] * (u.ndim - 2))
            return ((1 - a_) * eps + a_ * u).to(x.dtype), a, u - eps

        x_z, a_z, v_z = noised(z[:, 1:])
        w = (valid[:, 1:] & valid[:, :-1]).float()  # (B, T'-1): both ends of the transition are real
        w_video = w
        if self.training and c.future_frames_given > 0 and not drop_video:  # these clips' future frames given clean
            given = torch.rand(B, device=dev) < c.future_frames_given  # (B,)
            a_z = torch.where(given[:, None], torch.ones_like(a_z), a_z)
            x_z = torch.where(given.view(B, *[1] * (x_z.ndim - 1)), z[:, 1:], x_z)
            w_video = w * (~given).float()[:, None]  # no video loss where the answer was given
        x_ell, a_ell, v_ell = noised(ell) if c.has(ACTION) else (None, None, None)
        x_r, a_r, v_r = noised(robot) if c.has(ROBOT) else (None, None, None)
        pred = self(z, ell, batch.get("text"), batch.get("text_mask"), chunk_size=chunk_size, noisy_z=x_z,
                    alpha_z=a_z, noisy_ell=x_ell, alpha_ell=a_ell, robot=robot, noisy_robot=x_r, alpha_robot=a_r,
                    state=state, valid=valid, drop_video=drop_video, drop_ell=drop_ell, drop_text=drop_text,
                    aux=batch.get("aux") is not None, first=batch.get("first"), drop_robot_history=drop_history)

        def mse(p, target, w=w):  # mean over everything but (B, T'-1), then over the real transitions
            return (((p.float() - target) ** 2).flatten(2).mean(-1) * w).sum() / w.sum().clamp(min=1)

        zero = w.new_zeros(())
        out = {"video": zero if drop_video else mse(pred[VIDEO], v_z, w_video)}
        total = c.video_loss_weight * out["video"]
        if c.has(ACTION):
            out["action"] = zero if drop_ell else mse(pred[ACTION], v_ell)
            out["ell_dropped"] = torch.tensor(float(drop_ell))
            total = total + c.ell_loss_weight * out["action"]
        if c.has(ROBOT):
            out["robot"] = mse(pred[ROBOT], v_r)
            total = total + c.robot_loss_weight * out["robot"]
        if "aux" in pred:  # the clean state tokens' frames 0 .. n_clean-1, padded frames left out
            n = pred["aux"].shape[1]
            wa = valid[:, :n].float()
            err = ((pred["aux"].float() - batch["aux"][:, :n].float()) ** 2).mean(-1)
            out["aux"] = (err * wa).sum() / wa.sum().clamp(min=1)
            total = total + c.aux_loss_weight * out["aux"]
        return {
            "loss": total,
            **{k: v.detach() for k, v in out.items()},
            "chunk_size": torch.tensor(float(chunk_size)),
            "video_dropped": torch.tensor(float(drop_video)),
        }

    # ---- sampling with a KV cache ----

    def robot_history_setting(self, robot_history: bool | None) -> bool:
        """Whether a history reads the executed robot actions: None is the config's; True needs a model trained
        with them (robot_history=True)."""
        if robot_history and not self.cfg.robot_history:
            raise RepwamError("this model was trained without the robot history (robot_history=False, "
                              "--no-robot-history): it cannot read one")
        return self.cfg.robot_history if robot_history is None else bool(robot_history)

    @torch.no_grad()
    def new_cache(self, text_emb=None, text_mask=None, *, batch_size: int | None = None,
                  cfg_scale: float | None = None, first=None, robot_history: bool | None = None) -> WAMCache:
        """An empty history for a batch of episodes. text_emb (B, N_text, D_text) or None (null text);
        first (B, L, d_v) the episode's first latent frame [first_frame_context: required].

        cfg_scale (default config.cfg_scale) != 1 keeps a second history under the null text.
        robot_history (default config.robot_history): the executed robot actions appended enter the history;
        False leaves them out (what a model trained with robot_history_drop also learned to act from).
        """
        robot_history = self.robot_history_setting(robot_history)
        if text_emb is not None:
            batch_size = text_emb.shape[0]
        text = self.text_context(text_emb, text_mask, batch_size=batch_size, first=first)
        cfg_scale = self.cfg.cfg_scale if cfg_scale is None else float(cfg_scale)
        cache = WAMCache(text=text, text_kv=[blk.cross.text_kv(text.emb) for blk in self.blocks],
                         kv=[None] * len(self.blocks), cfg_scale=cfg_scale, robot_history=robot_history)
        if cfg_scale != 1.0:
            cache.uncond = self.new_cache(None, batch_size=text.emb.shape[0], cfg_scale=1.0, first=first,
                                          robot_history=robot_history)
        return cache

    @torch.no_grad()
    def append(self, cache: WAMCache, z_frames, ell=None, robot=None, state=None) -> None:
        """Add observed (or generated) clean frames as one chunk of the history; runs the model once on them.

        z_frames (B, n, L, d_v); the actions leading into these frames, ((B, n-1, ...) for the first
        append of an episode: frame 0 has none): ell (B, n, A) [ℓ stream] and robot (B, n, per, A_r)
        [robot stream], normalised; state (B, n, D_s) [state tokens]: the states observed at these
        frames, normalised (required: a clean frame always has its state in training). ell and robot
        may be left out for a first single frame, or right after sample_chunk of n frames (the sampled
        ones are used; after robot_only or ell=False no ℓ was sampled: pass the LAT's ℓ of the observed frames).
        Append chunks of the size they were sampled in: a chunk is full attention inside.
        """
        c = self.cfg
        self._check_latents(z_frames, "z_frames")
        B, n = z_frames.shape[:2]
        if B != cache.batch_size:
            raise RepwamError(f"z_frames has batch {B} but the cache holds {cache.batch_size} episodes")
        if n < 1:
            raise RepwamError("append needs at least one latent frame")
        n_act = n - 1 if cache.next_frame == 0 else n

        def leading(given, last, name, shape, what):  # the actions leading into the frames, or the sampled ones
            if given is not None or not c.has({"ell": ACTION, "robot": ROBOT}[name]):
                return given
            if n_act == 0:
                return z_frames.new_zeros(shape)
            if last is not None and last.shape[1] == n_act:
                return last
            raise RepwamError(
                f"append needs {name} {shape}, {what}; {name}=None only works for the first frame or right after "
                "sample_chunk sampled it for as many frames"
            )

        ell = leading(ell, cache.last_ell, "ell", (B, n_act, c.action_dim), "the latent actions leading into these "
                      "frames (after a chunk sampled without ℓ: the LAT's ℓ of the observed frames)")
        robot = leading(robot, cache.last_robot, "robot", (B, n_act, c.robot_per_frame, c.robot_action_dim),
                        "the robot actions executed into these frames")
        self._check_given(ell=ell, robot=robot, state=state)
        if ell is not None:
            self._check_actions(ell, B, n_act)
        if robot is not None:
            self._check_robot(robot, B, n_act)
        if state is not None:
            self._check_state(state, B, n)
        self._check_length(cache.next_frame + n, "the history")
        self._extend(cache, z_frames, ell, robot, state)
        if cache.uncond is not None:
            self._extend(cache.uncond, z_frames, ell, robot, state)
        cache.last_ell = cache.last_robot = None

    def _extend(self, cache: WAMCache, z_frames, ell, robot, state):
        n, dev = z_frames.shape[1], z_frames.device
        frames = torch.arange(cache.next_frame, cache.next_frame + n, device=dev)
        chunk = torch.full_like(frames, cache.next_chunk)
        feats = {VIDEO: self.patchify(z_frames), ACTION: ell,
                 ROBOT: None if robot is None or not cache.robot_history else self.flatten_robot(robot),
                 STATE: state}
        feats = {g: f for g, f in feats.items() if f is not None and f.shape[1] > 0}
        meta = {}
        for g, f in feats.items():
            m = n if g == VIDEO else f.shape[1] // self.cfg.group_tokens_per_frame(g)  # frames covered: ℓ and
            # robot lead into the last n_act
            meta[g] = group_meta(self.cfg, g, frames[n - m :], chunk[n - m :], False)
        alpha = {g: f.new_ones(f.shape[:2], dtype=torch.float32) for g, f in feats.items()}
        _, new_kv = self._run(feats, alpha, meta, cache.text, text_kv=cache.text_kv, past=cache, heads=())
        new_meta = TokenMeta.cat([meta[g] for g in self.cfg.token_groups if g in meta])
        if cache.meta is None:
            cache.kv, cache.meta = new_kv, new_meta
        else:
            cache.kv = [(torch.cat([k0, k1], 2), torch.cat([v0, v1], 2))
                        for (k0, v0), (k1, v1) in zip(cache.kv, new_kv)]
            cache.meta = TokenMeta.cat([cache.meta, new_meta])
        cache.next_frame += n
        cache.next_chunk += 1
        cache.last_z = z_frames[:, -1]
        cache.last_state = None if state is None else state[:, -1]
        if self.cfg.attn_window is not None:  # evict keys no later query may see
            keep = cache.meta.frame > cache.next_frame - self.cfg.attn_window
            if not bool(keep.all()):
                idx = keep.nonzero().squeeze(1)
                cache.kv = [(k.index_select(2, idx), v.index_select(2, idx)) for k, v in cache.kv]
                cache.meta = cache.meta.select(idx)

    def _plan(self, cache: WAMCache, meta: dict) -> ChunkPlan:
        """The attention context and K/V slots of a chunk with layout meta {group: TokenMeta} after `cache`."""
        q_meta = TokenMeta.cat([meta[g] for g in self.cfg.token_groups if g in meta])
        ctx = self.attn_context(q_meta, TokenMeta.cat([cache.meta, q_meta]), cache.text.mask, merge_gated=True)
        n = len(q_meta)
        slots = lambda t: torch.cat([t, t.new_empty(*t.shape[:2], n, t.shape[3])], 2)  # noqa: E731
        names = StackedStreams.fits(self.cfg, meta)
        stacked = None if names is None else self._stacked_streams(names)
        # boolean masks as the additive ones SDPA would make of them (0 / -inf) every call, made once
        dtype = self.null_text.dtype
        additive = lambda m: torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(  # noqa: E731
            ~m, float("-inf"))
        if torch.is_tensor(ctx.mask):
            ctx.mask = additive(ctx.mask)
        if ctx.gated is not None and ctx.gated.merged is not None:
            ctx.gated.merged = additive(ctx.gated.merged)
        ctx.text_mask = additive(ctx.text_mask)
        return ChunkPlan(ctx, [(slots(k), slots(v)) for k, v in cache.kv], stacked)

    def _stacked_streams(self, names: tuple[str, ...]) -> list:
        """Per block StackedStreams of these streams, rebuilt only when a parameter they copy has changed
        (another tensor, or written in place: an optimizer step, load_state_dict)."""
        params = [p for blk in self.blocks for s in names for p in blk.streams[s].parameters()]
        key = (names, tuple((p.data_ptr(), p._version) for p in params))
        if self._stacked is None or self._stacked[0] != key:
            self._stacked = (key, [StackedStreams.build(blk, names) for blk in self.blocks])
        return self._stacked[1]

    def _step_times(self, alphas: list[dict]) -> list[dict]:
        """Time embeddings of the Euler steps of a chunk, every step's in one pass per group: alphas, one
        {group: alpha} per step -> one {group: (e (1, 1, W), mod (1, 1, 6, W))} per step."""
        dev = self.null_text.device
        per_group = {}
        for g in alphas[0]:
            e, m = self.io[g].time(torch.tensor([[a[g] for a in alphas]], device=dev))  # (1, n, W), (1, n, 6, W)
            per_group[g] = (e.unbind(1), m.unbind(1))
        return [{g: (e[i][:, None], m[i][:, None]) for g, (e, m) in per_group.items()} for i in range(len(alphas))]

    @torch.no_grad()
    def sample_chunk(self, cache: WAMCache, k: int | None = None, *, noise: dict | None = None,
                     actions_only: bool = False, robot_only: bool = False, ell: bool = True,
                     video_steps: int | None = None, action_steps: int | None = None,
                     generator: torch.Generator | None = None) -> dict:
        """Generate the next chunk of k latent frames after the cached history (which is not changed).

        noise: {"z": (B, k, L, d_v), "ell": (B, k, A), "robot": (B, k, per, A_r)} starting points (default:
        standard normal, drawn with `generator` when given). Phase 1: video_steps Euler steps on the video
        (ℓ and robot held at noise, alpha 0; CFG with the cache's cfg_scale). Phase 2: action_steps Euler
        steps on ℓ and robot actions together given the denoised video (alpha 1). actions_only: no video
        tokens for this chunk, phase 2 only; ell=False: no ℓ tokens (a model adapted with ell_drop 1, which never
        denoised ℓ beside the actions: its forecast and actions are sampled without them); robot_only: no video and
        no ℓ tokens either (actions_only with ell=False), phase 2 on the robot tokens only (the fastest control
        mode).
        Returns {"z": (B, k, L, d_v) or None, "ell": (B, k, A) or None, "robot": (B, k, per, A_r) or None}
        (None: not generated, or the model has no such stream); ell and robot are kept for `append`.
        """
        c = self.cfg
        k = k or c.chunk_size
        if robot_only:  # shorthand for both
            actions_only, ell = True, False
        if not ell and not c.has(ROBOT):
            raise RepwamError("robot_only and ell=False need the robot stream (robot_action_dim > 0)")
        if cache.next_frame == 0:
            raise RepwamError("the cache is empty: append the first observed latent frame before sampling")
        self._check_length(cache.next_frame + k, "the history plus the sampled chunk")
        groups = [g for g, on in ((VIDEO, not actions_only), (ACTION, ell), (ROBOT, True)) if on and c.has(g)]
        acts = [g for g in groups if g != VIDEO]
        if not acts and VIDEO not in groups:
            raise RepwamError("actions_only on a WAM without ℓ and robot streams samples nothing")
        B, dev = cache.batch_size, cache.text.emb.device
        shapes = {VIDEO: (B, k, c.tokens_per_frame, c.latent_dim), ACTION: (B, k, c.action_dim),
                  ROBOT: (B, k, c.robot_per_frame, c.robot_action_dim)}
        key = {VIDEO: "z", ACTION: "ell", ROBOT: "robot"}
        noise = noise or {}
        x = {}
        for g in groups:
            x0 = noise.get(key[g])
            if x0 is None:
                x0 = torch.randn(shapes[g], generator=generator, device=generator.device if generator else dev).to(dev)
            if tuple(x0.shape) != shapes[g]:
                raise RepwamError(f"noise[{key[g]!r}] has shape {tuple(x0.shape)}; expected {shapes[g]}")
            x[g] = {VIDEO: self.patchify, ACTION: lambda t: t, ROBOT: self.flatten_robot}[g](x0)
        frames = torch.arange(cache.next_frame, cache.next_frame + k, device=dev)
        chunk = torch.full_like(frames, cache.next_chunk)
        meta = {g: group_meta(c, g, frames, chunk, True) for g in groups}
        anchors = {}  # every frame of the chunk: the last frame of the history
        if VIDEO in groups and c.last_frame_cond:
            anchors[VIDEO] = self.patchify(cache.last_z[:, None].expand(-1, k, -1, -1))
        if ROBOT in groups and c.last_state_cond:
            anchors[ROBOT] = cache.last_state[:, None].expand(-1, k * c.group_tokens_per_frame(ROBOT), -1)

        # the same for every Euler step: masks, RoPE, the cached K/V with slots for this chunk, time embeddings
        plan = self._plan(cache, meta)
        velocity = lambda cache_, plan_, time, heads: self._run(  # noqa: E731
            x, {}, meta, cache_.text, text_kv=cache_.text_kv, heads=heads, anchors=anchors, plan=plan_, time=time)[0]
        if VIDEO in groups:
            n = video_steps or c.video_steps
            plan_u = None if cache.uncond is None else self._plan(cache.uncond, meta)
            times = self._step_times([{g: i / n if g == VIDEO else 0.0 for g in groups} for i in range(n)])
            for i in range(n):
                h = velocity(cache, plan, times[i], (VIDEO,))[VIDEO]
                if cache.uncond is not None:  # guidance on the head's output: video_velocity is affine in it
                    h_u = velocity(cache.uncond, plan_u, times[i], (VIDEO,))[VIDEO]
                    h = h_u + cache.cfg_scale * (h - h_u)
                v = self.video_velocity(h, x[VIDEO], x[VIDEO].new_full(x[VIDEO].shape[:2], i / n), anchors.get(VIDEO))
                x[VIDEO] = x[VIDEO] + v / n
        if acts:
            n = action_steps or c.action_steps
            times = self._step_times([{g: 1.0 if g == VIDEO else i / n for g in groups} for i in range(n)])
            for i in range(n):
                v = velocity(cache, plan, times[i], acts)
                x.update({g: x[g] + v[g] / n for g in acts})
        out = {"z": self.unpatchify(x[VIDEO]) if VIDEO in x else None, "ell": x.get(ACTION),
               "robot": self.unflatten_robot(x[ROBOT]) if ROBOT in x else None}
        cache.last_ell, cache.last_robot = out["ell"], out["robot"]
        return out


# --------------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------------


def count_parameters(cfg: WAMConfig) -> dict[str, int]:
    """Parameters of the model `cfg` builds (on the meta device: no memory), in total and per stream."""
    with torch.device("meta"):
        model = WorldActionModel(cfg)
    counts = {"total": 0, "shared": 0, **{s: 0 for s in model.stream_names}}
    for name, p in model.named_parameters():
        owner = next((s for s in model.stream_names if f"io.{s}." in name or f"streams.{s}." in name
                      or name.endswith(f".{s}_gate")), "shared")
        counts[owner] += p.numel()
        counts["total"] += p.numel()
    return counts


def describe_presets() -> str:
    """One line per preset: shape and parameter counts (shared attention, each stream, total)."""
    lines = [f"{'preset':<7}{'depth':>6}{'width':>7}{'heads':>6}  {'streams (width/ffn)':<26}{'shared':>9}"
             f"{'video':>9}{'action':>9}{'total':>9}"]
    for name, cfg in PRESETS.items():
        c = count_parameters(cfg)
        fmt = lambda n: f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"  # noqa: E731
        streams = ", ".join(f"{s.name} {s.width}/{s.ffn_hidden}" for s in cfg.streams)
        lines.append(f"{name:<7}{cfg.depth:>6}{cfg.width:>7}{cfg.heads:>6}  {streams:<26}{fmt(c['shared']):>9}"
                     f"{fmt(c['video']):>9}{fmt(c['action']):>9}{fmt(c['total']):>9}")
    return "\n".join(lines)
