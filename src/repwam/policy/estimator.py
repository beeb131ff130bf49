"""StateEstimator: the objects' and the goal's positions read from the camera by a linear map on the frozen teacher.

Told where the objects and the goal are (the simulator's observation as its state token), the world action model
succeeds on tasks it fails from the camera alone; the positions are in the frozen teacher's features (a ridge
read-out of them places push's 2-cm puck to ~1.7 cm from 20 layouts), but the action expert does not extract them
precisely from 20 demonstrations per task. This module makes that read-out explicit: a ridge map, fitted on the
demonstrations' privileged simulator state (`repwam train estimator`), from the teacher's features of one camera
frame to the simulator's observation. The state token of a WAM adapted with `--state-key observation.estimated_state`
reads the robot's state followed by this estimate; deployed, only the camera and the robot's state are needed.
(Privileged information at training time only, as in asymmetric / teacher-student robot learning.)

    images (N, V, 3, S, S) in [-1, 1] -> teacher maps -> latent grids (N, V, L, C) -> flatten (N, V·L·C)
    -> standardise -> @ weight[task] (V·L·C, D) + bias[task] -> estimate (N, D) in the simulator's units

It reads one view or several (`cameras`): from one view a position's depth is a guess from its apparent size; the
views' features side by side let the linear map triangulate. A view it reads need not be one the WAM sees.

One map per task (the instruction names it; `tasks` lists them), or one for all when `tasks` is empty: what a
position looks like differs between tasks (a puck, a peg, a goal in the air), and the instruction is an input anyway.

The teacher is referenced by name in config.json (never copied); the weights file holds the scaler and the map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from repwam.checkpoint import Pretrained, read_config
from repwam.config import ModelConfig
from repwam.data.transforms import image_to_model
from repwam.errors import RepwamError
from repwam.serve import EST_STATE_KEY
from repwam.tokenizer.teachers import build_teacher, teacher_options
from repwam.tokenizer.teachers.base import HoldsTeacher, teacher_targets


@dataclass
class EstimatorConfig(ModelConfig):
    teacher: str = "efficientnet-lite0"
    teacher_layer: str | None = "stage5"
    teacher_input_size: int | None = 128
    grid: tuple[int, int] = (8, 8)  # the teacher's maps are averaged onto this grid (the tokenizer's latent grid)
    feature_dim: int = 0  # views x grid tokens x teacher channels
    target_dim: int = 39  # the simulator observation's size (Meta-World: 39)
    cameras: tuple[str, ...] = ("observation.images.corner3",)  # the views it reads, in this order
    image_size: int = 64  # the frames it was fitted on
    tasks: tuple[str, ...] = ()  # one map per task instruction; empty: one map for every task

    def __post_init__(self):
        self.grid = tuple(int(g) for g in self.grid)
        self.tasks = tuple(self.tasks)
        self.cameras = tuple(self.cameras)
        if self.target_dim < 1:
            raise RepwamError(f"target_dim must be >= 1, got {self.target_dim}")
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise RepwamError(f"the estimator reads one or more distinct cameras, got {self.cameras}")

    @classmethod
    def from_dict(cls, d: dict):
        if "camera" in d:  # estimators saved before it read several views
            d = {**{k: v for k, v in d.items() if k != "camera"}, "cameras": [d["camera"]]}
        return super().from_dict(d)

    @classmethod
    def presets(cls) -> dict:
        return {"tiny": cls()}


class StateEstimator(HoldsTeacher, Pretrained, nn.Module):
    """images (N, V, 3, S, S) in [-1, 1] (+ the task's instruction) -> the simulator observation's estimate (N, D)."""

    checkpoint_type = "repwam.state_estimator"
    config_class = EstimatorConfig
    config_key = "estimator"

    def __init__(self, cfg: EstimatorConfig):
        super().__init__()
        self.cfg = cfg
        teacher = build_teacher(cfg.teacher, **teacher_options(cfg.teacher_layer, cfg.teacher_input_size))
        if teacher is None:
            raise RepwamError("the state estimator reads a teacher's features: teacher 'none' has none")
        self.hold_teacher(teacher)  # not a submodule: its weights are never saved here
        v, d, t = len(cfg.cameras), cfg.target_dim, max(len(cfg.tasks), 1)
        f = v * teacher.dim * cfg.grid[0] * cfg.grid[1]
        if cfg.feature_dim and cfg.feature_dim != f:
            raise RepwamError(f"feature_dim {cfg.feature_dim} != {v} views x {teacher.dim} teacher channels x grid "
                              f"{cfg.grid}")
        self.register_buffer("feat_mean", torch.zeros(f))
        self.register_buffer("feat_std", torch.ones(f))
        self.register_buffer("weight", torch.zeros(t, f, d))
        self.register_buffer("bias", torch.zeros(t, d))

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, V, 3, S, S) in [-1, 1] (or (N, 3, S, S) for one view) -> (N, V·L·C): each view's teacher maps on the
        grid, token-major as the feature cache (`repwam.tokenizer.tokenize.teacher_cache`) holds them, rounded to its
        float16, views in `cameras` order."""
        v = len(self.cfg.cameras)
        if images.ndim == 4 and v == 1:
            images = images[:, None]
        if images.ndim != 5 or tuple(images.shape[1:3]) != (v, 3):
            raise RepwamError(f"the state estimator reads {v} view(s) {list(self.cfg.cameras)}: it takes images "
                              f"(N, {v}, 3, S, S), got {tuple(images.shape)}")
        maps = self.teacher(images.flatten(0, 1).float())  # (N V, C, h, w)
        grid = teacher_targets(maps[:, None], self.cfg.grid)[:, 0].half().float()  # (N V, L, C)
        return grid.reshape(images.shape[0], -1)  # (N, V·L·C)

    def task_index(self, task: str | None) -> int:
        if not self.cfg.tasks:
            return 0
        if task not in self.cfg.tasks:
            raise RepwamError(f"the state estimator has a map for the tasks {list(self.cfg.tasks)}, not {task!r}")
        return self.cfg.tasks.index(task)

    def predict(self, features: torch.Tensor, task: str | None = None) -> torch.Tensor:
        """(N, L·C) teacher features of frames of `task` -> (N, target_dim)."""
        i = self.task_index(task)
        return ((features.float() - self.feat_mean) / self.feat_std) @ self.weight[i] + self.bias[i]

    def forward(self, images: torch.Tensor, task: str | None = None) -> torch.Tensor:
        """images (N, V, 3, S, S) of `cameras` (or (N, 3, S, S) for one) -> (N, target_dim)."""
        return self.predict(self.features(images), task)


# ---------------------------------------------------------------- what a policy with a state estimator shares
def load_estimator(meta: dict, what: str, path: str | Path | None = None) -> StateEstimator:
    """The estimator a policy checkpoint's config.json names (parents.estimator: path + weights hash), or (`path`,
    the policies' `estimator` setting) another one fitted for the same state: e.g. refitted on the states the policy
    visits in closed loop, so that better perception is tried without retraining the policy. Another estimator must
    estimate the same `target_dim` values and have a map for every task the named one has."""
    ref = (meta.get("parents") or {}).get("estimator")
    if not ref:
        raise RepwamError(f"{what} reads a state estimator's estimates but its config.json names none")
    estimator = StateEstimator.from_pretrained(path or ref["path"])
    if path is None:
        if estimator.checkpoint_meta["weights_hash"] != ref["weights_hash"]:
            raise RepwamError(f"the state estimator at {ref['path']} is not the one {what} was trained on")
        return estimator.eval()
    trained = read_config(ref["path"])["estimator"] if Path(ref["path"]).is_dir() else None
    if trained is not None:
        want_dim, want_tasks = trained["target_dim"], set(trained.get("tasks") or ())
        have = estimator.cfg
        if have.target_dim != want_dim:
            raise RepwamError(f"the estimator setting {path} estimates {have.target_dim} values; {what} was trained "
                              f"on an estimator of {want_dim}")
        missing = sorted(want_tasks - set(have.tasks)) if have.tasks else []
        if missing:
            raise RepwamError(f"the estimator setting {path} has no map for {', '.join(map(repr, missing))}, which "
                              f"{what}'s estimator ({ref['path']}) had")
    return estimator.eval()


def policy_estimator(meta: dict, kind: str, checkpoint: str | Path, setting: str | Path | None = None
                     ) -> StateEstimator | None:
    """The state estimator a policy checkpoint's state reads (`load_estimator`), or None when it reads none;
    `setting` (the policies' `estimator` inference setting) is refused for a policy that reads none. `kind`: "WAM",
    "plain policy" (for the messages)."""
    if meta.get("state_key") != EST_STATE_KEY:
        if setting is not None:
            noun = kind.split()[-1]  # WAM, policy
            raise RepwamError(f"the estimator setting is for a {noun} that reads {EST_STATE_KEY}; {checkpoint} reads "
                              f"{meta.get('state_key') or 'observation.state'}")
        return None
    return load_estimator(meta, f"the {kind} {checkpoint}", setting)


def policy_cameras(cameras: list[str], estimator: StateEstimator | None) -> list[str]:
    """The views a policy asks for: its model's, then those only its estimator reads."""
    extra = [c for c in estimator.cfg.cameras if c not in cameras] if estimator is not None else []
    return list(cameras) + extra


@torch.no_grad()
def robot_and_estimate(estimator: StateEstimator, obs: dict, robot: np.ndarray, task: str) -> tuple[np.ndarray,
                                                                                                    np.ndarray]:
    """What a state token reads with a state estimator: (the robot's state ⧺ the estimate (D_r + D,), the estimate
    (D,)), the estimate from the observation's views of the estimator's cameras."""
    c = estimator.cfg
    views = torch.stack([image_to_model(obs[cam], c.image_size) for cam in c.cameras])  # (V_e, 3, S, S)
    est = estimator(views[None], task)[0].numpy()  # the objects and the goal as seen
    return np.concatenate([robot, est]).astype(np.float32), est.astype(np.float32)
