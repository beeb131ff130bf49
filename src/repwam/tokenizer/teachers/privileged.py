"""The privileged UPPER-BOUND teacher: a small CNN supervised on simulator object poses (ablations only)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from repwam.errors import RepwamError
from repwam.tokenizer.teachers.base import Teacher, _resize

# --------------------------------------------------------------------------------------------
# privileged (upper bound): features supervised on simulator object poses
# --------------------------------------------------------------------------------------------


class SpatialSoftmax(nn.Module):
    """Expected (x, y) image coordinate of each channel's softmax (Levine et al. 2016)."""

    def forward(self, f):
        # f (N, C, h, w) -> (N, 2C) in [-1, 1]
        n, c, h, w = f.shape
        att = f.flatten(2).softmax(-1).view(n, c, h, w)
        ys = torch.linspace(-1, 1, h, device=f.device, dtype=f.dtype)
        xs = torch.linspace(-1, 1, w, device=f.device, dtype=f.dtype)
        return torch.cat([(att.sum(2) * xs).sum(-1), (att.sum(3) * ys).sum(-1)], dim=1)


class PrivilegedEncoder(nn.Module):
    """UPPER-BOUND teacher: a small CNN whose stride-8 feature map is trained to predict the
    simulator's object poses (privileged state, unavailable to a camera-only method).

    images (N, 3, H, W) in [-1, 1] -> features (N, dim, H/8, W/8); head: spatial softmax -> Linear -> poses.
    """

    def __init__(self, target_dim: int, dim: int = 64, widths=(32, 64), image_size: int = 64,
                 target_mean=None, target_std=None):
        super().__init__()
        self.config = {"kind": "privileged-encoder", "target_dim": target_dim, "dim": dim,
                       "widths": list(widths), "image_size": image_size}
        chans, layers = [3, *widths, dim], []
        for i in range(len(chans) - 1):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1), nn.GroupNorm(8, chans[i + 1]), nn.SiLU()]
            layers += [nn.Conv2d(chans[i + 1], chans[i + 1], 3, padding=1), nn.SiLU()]
        self.body = nn.Sequential(*layers[:-1])  # linear last conv: features, not activations
        self.keypoints = SpatialSoftmax()
        self.head = nn.Linear(2 * dim, target_dim)
        self.register_buffer("target_mean", torch.zeros(target_dim) if target_mean is None else torch.as_tensor(target_mean).float())
        self.register_buffer("target_std", torch.ones(target_dim) if target_std is None else torch.as_tensor(target_std).float())
        self.dim, self.image_size = dim, image_size

    def features(self, x):
        return self.body(_resize(x, self.image_size))  # (N, dim, h, w)

    def forward(self, x):
        """Poses (N, target_dim) in the data's units."""
        return self.head(self.keypoints(self.features(x))) * self.target_std + self.target_mean

    @classmethod
    def fit(cls, images, targets, steps: int = 2000, batch_size: int = 64, lr: float = 1e-3,
            dim: int = 64, seed: int = 0, device: str = "cpu", log_every: int = 0,
            progress: bool = False) -> "PrivilegedEncoder":
        """Train on images uint8 (N, H, W, 3) and targets (N, D) (e.g. object positions/quaternions)."""
        import numpy as np

        images = torch.as_tensor(np.asarray(images))
        targets = torch.as_tensor(np.asarray(targets)).float()
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise RepwamError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        if targets.ndim != 2 or len(targets) != len(images):
            raise RepwamError(f"targets must be (N, D) with N={len(images)}, got {tuple(targets.shape)}")
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        mean, std = targets.mean(0), targets.std(0).clamp_min(1e-6)
        model = cls(targets.shape[1], dim=dim, image_size=images.shape[1], target_mean=mean, target_std=std).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        model.fit_history = []
        from tqdm.auto import tqdm

        bar = tqdm(range(steps), desc="fit privileged teacher", disable=not progress)
        for step in bar:
            idx = torch.randint(len(images), (min(batch_size, len(images)),), generator=g)
            x = images[idx].to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            y = ((targets[idx] - mean) / std).to(device)
            loss = F.mse_loss(model.head(model.keypoints(model.features(x))), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            model.fit_history.append(loss.item())
            if step % 50 == 0:
                bar.set_postfix(mse=f"{loss.item():.4f}")
            if log_every and step % log_every == 0:
                print(f"privileged step {step} mse {loss.item():.4f}")
        return model.eval()

    def save(self, path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.config, indent=2))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(path / "model.safetensors"))

    @classmethod
    def load(cls, path) -> "PrivilegedEncoder":
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
            raise RepwamError(
                f"no privileged encoder at {path}: expected config.json and model.safetensors written by "
                "PrivilegedEncoder.save (train one with PrivilegedEncoder.fit on simulator poses)"
            )
        cfg = json.loads((path / "config.json").read_text())
        model = cls(cfg["target_dim"], dim=cfg["dim"], widths=cfg["widths"], image_size=cfg["image_size"])
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return model.eval()


class PrivilegedTeacher(Teacher):
    """UPPER BOUND, not a foundation model: PrivilegedEncoder features (N, dim, H/8, W/8)."""

    def __init__(self, path):
        super().__init__()
        if path is None:
            raise RepwamError("the privileged teacher needs path=DIR of a saved PrivilegedEncoder")
        self.encoder = PrivilegedEncoder.load(path)
        self.name, self.path, self.dim = "privileged", str(path), self.encoder.dim
        self.freeze()

    def features(self, frames):
        return self.encoder.features(frames)
