"""The one chain of transforms between raw robot data and model inputs, used unchanged by training, the policies
and the server (as openpi does): frames to [-1, 1], resize to the model's image size, per-dimension normalisation of
states and actions (statistics saved with the checkpoint that uses them), and the observation check.

    observation dict (LeRobot keys, uint8 H x W x 3 images, float state)
      -> repwam.serve.validate_observation (keys, shapes, dtypes, finite values: one clear error naming what was
         expected; the same check the policy server runs)
      -> image_to_model   uint8 (H, W, 3) -> float (3, S, S) in [-1, 1] (area resize when H, W != S)
      -> Normalizer       state (D,) -> (state - mean) / std
    model output
      -> Normalizer.inverse  normalised actions -> robot actions
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import torch
import torch.nn.functional as F



def frames_to_model(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float in [-1, 1]."""
    return frames.float().div_(127.5).sub_(1.0)


def frames_from_model(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] (..., 3, H, W) -> uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def image_to_model(image: np.ndarray, size: int) -> torch.Tensor:
    """One camera image uint8 (H, W, 3) -> float (3, size, size) in [-1, 1]; area-resized when its size differs."""
    x = frames_to_model(torch.from_numpy(np.array(image, np.uint8)).permute(2, 0, 1))
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="area")[0]
    return x


@dataclass
class Normalizer:
    """Per-dimension (x - mean) / std; saved in checkpoints as plain lists (`to_dict` / `from_dict`)."""

    mean: list[float]
    std: list[float]

    def _stats(self, like: torch.Tensor):
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=like.device)
        return mean, torch.as_tensor(self.std, dtype=torch.float32, device=like.device)

    def __call__(self, x) -> torch.Tensor:
        x = x.float() if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, np.float32))
        mean, std = self._stats(x)
        return (x - mean) / std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        mean, std = self._stats(x)
        return x * std + mean

    def to_dict(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_array(cls, x: np.ndarray, min_std: float = 0.0) -> "Normalizer":
        """Per-dimension statistics of the rows of x (N, D), each std floored at `min_std` (for data without a
        stats.json, e.g. a state estimator's estimates)."""
        return cls(x.mean(0).tolist(), np.maximum(x.std(0), min_std).tolist())

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(list(d["mean"]), [max(float(s), 1e-6) for s in d["std"]])
