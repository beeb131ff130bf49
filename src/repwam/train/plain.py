"""`repwam train plain`: the plain-policy baseline (image + state + instruction -> action chunk), through the one
trainer, on the raw frames and actions of LeRobot datasets (no tokenizer, no LAT).

One sample per control step t of every training episode (`ClipDataset`, frame stride 1, one row per step):
    frames       uint8 (n_obs, 3, H, W)   steps t-n_obs+1 .. t (an episode's first frame repeated before it)
    state        (n_obs, D_s)             the states at those steps, normalised with the dataset stats
    action       (H, A)                   actions t .. t+H-1, normalised; steps past the episode's end are padding
    action_mask  (H,) bool                False on the padding (left out of the loss)
    text         int                      the instruction (a row of the `TextTable`)
The state is `observation.state` (the robot's: hand xyz + gripper) by default; `state_key =
observation.environment_state` gives the policy the full simulator observation instead (object poses and the goal):
a privileged reference that tells how well the same policy does when it need not see the goal (not deployable:
a real robot has no such observation).
`state_key = observation.estimated_state` with `estimator` (a `repwam train estimator` checkpoint) reads the robot's
state followed by the state estimator's reading of the cameras: cross-fitted estimates of each frame in training (as
the WAM's repwam_est row), the estimator run on the cameras at every step when deployed.
`aux_key = observation.environment_state` keeps the camera policy and adds a privileged *training target* instead:
    aux          (D_e,)                   the simulator observation at step t, normalised (std floored)
which an MLP on the pooled observation memory regresses (`PlainConfig.aux_dim`, MSE times `aux_weight` added to the
flow loss), so the image encoder has to find the objects and the goal; the deployed policy sees only the camera,
its state and the instruction, as without it. (Asymmetric / privileged auxiliary losses as in robot RL.)
`aug_shift` > 0 gives training frames a random shift (pad that many pixels by replication, crop back; the same shift
for every frame of a sample): DrQ's augmentation, diffusion policy's random crop. It is off by default: from one
fixed 64x64 camera the goal is a ~20-pixel marker whose absolute position *is* the goal, and a 4-pixel shift is
several centimetres of it. Measured on reach alone (20 demonstrations, 1,500 steps; README, "Random-shift
augmentation"): with a 4-pixel shift the policy reproduces 3 of 10 of its own demonstration layouts, without it 9 of
10. Validation and the policy always see plain frames.

The checkpoint records the state and action statistics (meta/stats.json of the datasets, `dataset_stats`), the
camera, the text encoder by name (never its weights), the instructions seen, the data and its split (the stable
`split_episodes` rule, the same val_fraction / salt as the other stages).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from repwam.data.dataset import ClipDataset, split_spec
from repwam.data.transforms import Normalizer, frames_to_model
from repwam.errors import RepwamError
from repwam.policy.plain import ENCODERS, PlainConfig, PlainPolicyModel
from repwam.serve import ENV_STATE_KEY, EST_STATE_KEY, STATE_KEY
from repwam.train.trainer import OptimConfig, Stage, run_stage, val_subset
from repwam.wam.data import ENV_STATE_MIN_STD, TextTable, dataset_stats
from repwam.wam.text import TextEncoder

VAL_BATCH = 64  # validation batch size (only speed depends on it)
STATE_KEYS = (STATE_KEY, ENV_STATE_KEY, EST_STATE_KEY)


@dataclass
class PlainTrainConfig:
    preset: str = "tiny"
    encoder: str | None = None  # "vit" | "resnet"; None: the preset's
    cameras: tuple[str, ...] | None = None  # the views it sees at once (None: every camera of the first dataset)
    state_key: str = STATE_KEY  # or ENV_STATE_KEY ("observation.environment_state"): the privileged reference
    # or EST_STATE_KEY: the robot's state followed by `estimator`'s reading of the cameras (cross-fitted in training)
    estimator: str | None = None  # a `repwam train estimator` checkpoint, fitted on this data (or its episodes)
    aux_key: str | None = None  # ENV_STATE_KEY: read the simulator state out of the memory in training (None: off)
    aux_weight: float = 1.0  # the read-out's MSE weight in the loss
    aux_feedback: bool = False  # with aux_key: the read-out (detached) is also a memory token (PlainConfig)
    n_obs: int = 2  # frames observed per plan
    horizon: int = 16  # raw actions per chunk
    aug_shift: int = 0  # random-shift augmentation in pixels (0: off; see the module docstring)
    text_encoder: str = "all-minilm-l6-v2"
    val_fraction: float = 0.1
    split_seed: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        steps=20000, batch_size=64, lr=3e-4, weight_decay=1e-3, warmup=500, ema=0.999, save_every=1000,
        val_items=256))

    def __post_init__(self):
        if self.encoder is not None and self.encoder not in ENCODERS:
            raise RepwamError(f"encoder must be one of {ENCODERS} (or unset: the preset's), got {self.encoder!r}")
        if self.state_key not in STATE_KEYS:
            raise RepwamError(f"state_key must be one of {STATE_KEYS}, got {self.state_key!r}")
        if self.aug_shift < 0:
            raise RepwamError(f"aug_shift must be >= 0, got {self.aug_shift}")
        if self.aux_key not in (None, ENV_STATE_KEY):
            raise RepwamError(f"aux_key must be {ENV_STATE_KEY!r} or unset, got {self.aux_key!r}")
        if (self.state_key == EST_STATE_KEY) != bool(self.estimator):
            raise RepwamError(f"--estimator DIR goes with --state-key {EST_STATE_KEY} (its estimates feed the state "
                              f"token), got state_key={self.state_key!r}, estimator={self.estimator!r}")
        if self.aux_key is not None and self.state_key == ENV_STATE_KEY:
            raise RepwamError("aux_key reads the simulator state the policy already gets as state_key: pick one")
        if self.aux_feedback and self.aux_key is None:
            raise RepwamError("aux_feedback feeds the read-out back into the memory: it needs aux_key")
        if self.aux_weight < 0:
            raise RepwamError(f"aux_weight must be >= 0, got {self.aux_weight}")


def plain_states(clips: ClipDataset, state_key: str, estimates: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The (N, D_s) states of every row of `clips` the state token reads: the robot's, the simulator's, or (with a
    state estimator's cross-fitted `estimates`, {dataset root: (num_frames, D)}) the robot's followed by the
    estimate of that frame."""
    states = clips.env_states if state_key == ENV_STATE_KEY else clips.states
    if clips.actions is None or states is None:
        raise RepwamError(f"the plain policy learns from `action` and `{state_key}`: some dataset lacks them")
    if state_key != EST_STATE_KEY:
        return states
    if estimates is None:
        raise RepwamError(f"state_key {EST_STATE_KEY!r} reads a state estimator's cross-fitted estimates: pass them")
    roots = [str(Path(ds.root).resolve()) for ds in clips.datasets]
    est = np.concatenate([estimates[roots[ep.source]][ep.global_start : ep.global_start + ep.length]
                          for ep in clips.episodes])  # (N, D), rows as the clips' (episode by episode)
    return np.concatenate([states, est], 1).astype(np.float32)


class PlainSamples(torch.utils.data.Dataset):
    """Per-step samples (see the module docstring) over the episodes of a ClipDataset of single frames."""

    def __init__(self, clips: ClipDataset, n_obs: int, horizon: int, state_norm: Normalizer,
                 action_norm: Normalizer, text_index: dict[str, int], state_key: str = STATE_KEY,
                 aux_norm: Normalizer | None = None, estimates: dict[str, np.ndarray] | None = None):
        states = plain_states(clips, state_key, estimates)
        if aux_norm is not None and clips.env_states is None:
            raise RepwamError(f"the read-out's target `{ENV_STATE_KEY}` is missing from some dataset")
        self.aux = aux_norm(clips.env_states).numpy() if aux_norm is not None else None
        if clips.num_frames != 1 or clips.frame_stride != 1:
            raise RepwamError("PlainSamples wants a ClipDataset of single frames at stride 1")
        self.clips, self.n_obs, self.horizon = clips, n_obs, horizon
        self.states = state_norm(states).numpy()
        self.actions = action_norm(clips.actions).numpy()
        self.text_index = text_index

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        slot, t = self.clips.index[i]
        ep = self.clips.episodes[slot]
        obs = ep.start + np.maximum(t - np.arange(self.n_obs - 1, -1, -1), 0)
        steps = t + np.arange(self.horizon)
        mask = steps < ep.length
        action = self.actions[ep.start + np.minimum(steps, ep.length - 1)].copy()
        action[~mask] = 0.0
        item = {
            "frames": torch.from_numpy(self.clips.frames[obs]).movedim(-1, -3),  # (n_obs, V, 3, H, W) uint8
            "state": torch.from_numpy(self.states[obs]),
            "action": torch.from_numpy(action),
            "action_mask": torch.from_numpy(mask),
            "text": self.text_index[ep.task],
        }
        if self.aux is not None:
            item["aux"] = torch.from_numpy(self.aux[ep.start + t])
        return item


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """images (B, T, [V,] C, S, S) -> the same, each sample translated by up to `pad` pixels (edges replicated); every
    frame (and view) of a sample moves alike."""
    if pad <= 0:
        return images
    if images.ndim == 6:
        return random_shift(images.flatten(1, 2), pad, generator).view(images.shape)
    B, T, C, S, _ = images.shape
    padded = F.pad(images.flatten(1, 2), (pad,) * 4, mode="replicate")  # (B, T·C, S+2p, S+2p)
    dx, dy = torch.randint(0, 2 * pad + 1, (2, B), generator=generator)  # on the CPU: read back as offsets
    out = torch.stack([padded[b, :, y : y + S, x : x + S] for b, (x, y) in enumerate(zip(dx.tolist(), dy.tolist()))])
    return out.view(B, T, C, S, S)


class PlainStage(Stage):
    name = "plain"

    def __init__(self, cfg: PlainTrainConfig, data: list[str | Path], progress: bool = True):
        self.cfg, self.data = cfg, [str(d) for d in data]
        common = dict(num_frames=1, frame_stride=1, cameras=list(cfg.cameras) if cfg.cameras else "all",
                      views="stacked", val_fraction=cfg.val_fraction, split_seed=cfg.split_seed, progress=progress)
        train_clips = ClipDataset(data, split="train", **common)
        val_clips = ClipDataset(data, split="val", **common) if cfg.val_fraction > 0 else None
        datasets = train_clips.datasets
        self.estimator, estimates = None, None
        if cfg.estimator:
            from repwam.train.estimator import crossfit_estimates, estimator_ref

            self.estimator, estimates = estimator_ref(cfg.estimator), crossfit_estimates(cfg.estimator, data)
            st = plain_states(train_clips, cfg.state_key, estimates)  # the estimates have no stats.json
            self.state_norm = Normalizer.from_array(st, ENV_STATE_MIN_STD)
        else:
            floor = ENV_STATE_MIN_STD if cfg.state_key == ENV_STATE_KEY else 0.0
            self.state_norm = dataset_stats(datasets, cfg.state_key, floor)
        self.action_norm = dataset_stats(datasets, "action")
        if self.state_norm is None or self.action_norm is None:
            raise RepwamError(f"the plain policy normalises states and actions with meta/stats.json: some dataset has "
                              f"no stats of `{cfg.state_key}` / `action` (regenerate it with repwam data generate)")
        self.aux_norm = None
        if cfg.aux_key is not None:
            self.aux_norm = dataset_stats(datasets, cfg.aux_key, ENV_STATE_MIN_STD)
            if self.aux_norm is None:
                raise RepwamError(f"the read-out's target is normalised with meta/stats.json: some dataset has no "
                                  f"stats of `{cfg.aux_key}` (regenerate it with repwam data generate)")
        encoder = TextEncoder(cfg.text_encoder, cache_dir=Path(data[0]) / "cache" / "text")
        self.text_spec = encoder.spec()
        episodes = train_clips.episodes + (val_clips.episodes if val_clips is not None else [])
        self.text = TextTable(sorted({ep.task for ep in episodes}), encoder)
        samples = dict(n_obs=cfg.n_obs, horizon=cfg.horizon, state_norm=self.state_norm, action_norm=self.action_norm,
                       text_index=self.text.index, state_key=cfg.state_key, aux_norm=self.aux_norm,
                       estimates=estimates)
        self.train_set = PlainSamples(train_clips, **samples)
        self.val_set = PlainSamples(val_clips, **samples) if val_clips is not None else None
        overrides = dict(n_obs=cfg.n_obs, horizon=cfg.horizon, text_dim=encoder.dim, num_views=len(train_clips.cameras),
                         state_dim=self.train_set.states.shape[1], action_dim=train_clips.actions.shape[1],
                         aux_dim=0 if self.aux_norm is None else len(self.aux_norm.mean),
                         aux_feedback=cfg.aux_feedback)
        if cfg.encoder is not None:
            overrides["encoder"] = cfg.encoder
        self.model = PlainPolicyModel(PlainConfig.preset(cfg.preset, **overrides))
        self.cameras = train_clips.cameras
        self.split = split_spec(datasets, cfg.val_fraction, cfg.split_seed)
        self.device = torch.device("cpu")

    def to(self, device):
        self.device = device

    def collate_fn(self, items):
        keys = ("frames", "state", "action", "action_mask") + (("aux",) if "aux" in items[0] else ())
        batch = {k: torch.stack([it[k] for it in items]) for k in keys}
        batch["text"], batch["text_mask"] = self.text(torch.tensor([it["text"] for it in items]))
        return batch

    def model_inputs(self, batch: dict, augment: bool) -> dict:
        """uint8 frames -> images in [-1, 1] at the model's size (area resize, as `image_to_model`), shifted."""
        images = frames_to_model(batch["frames"])
        S = self.model.cfg.image_size
        if images.shape[-2:] != (S, S):
            lead = images.shape[:-3]
            images = F.interpolate(images.flatten(0, len(lead) - 1), size=(S, S), mode="area").unflatten(0, lead)
        if augment:  # from the global torch RNG, which the trainer saves: resume stays exact
            images = random_shift(images, self.cfg.aug_shift)
        return {**batch, "images": images}

    def loss(self, batch):
        return self.model.loss(self.model_inputs(batch, augment=True), aux_weight=self.cfg.aux_weight)

    @torch.no_grad()
    def validate(self, model):
        """Flow loss with fixed noise and times, and the MSE of a sampled chunk against the real one (normalised
        units, padding left out), on a fixed sample of validation steps."""
        if self.val_set is None:
            return {}
        items = val_subset(self.val_set, self.cfg.optim.val_items, seed=1)
        loader = torch.utils.data.DataLoader(items, batch_size=VAL_BATCH, collate_fn=self.collate_fn)
        g = torch.Generator(self.device).manual_seed(0)
        flow, aux, mse, n = 0.0, 0.0, 0.0, 0
        for batch in loader:
            batch = self.model_inputs({k: v.to(self.device) for k, v in batch.items()}, augment=False)
            u, valid = batch["action"], batch["action_mask"].float()[..., None]
            B = u.shape[0]
            noise = torch.randn(u.shape, generator=g, device=self.device)
            alpha = torch.rand(B, generator=g, device=self.device)
            losses = model.loss(batch, noise=noise, alpha=alpha)
            flow += float(losses.get("flow", losses["loss"])) * B
            aux += float(losses.get("aux", 0.0)) * B
            sampled = model.sample_actions(batch["images"], batch["state"], batch["text"], batch["text_mask"],
                                           noise=torch.randn(u.shape, generator=g, device=self.device))
            err = ((sampled - u.float()) ** 2 * valid).sum() / (valid.sum() * u.shape[-1]).clamp(min=1)
            mse += float(err) * B
            n += B
        out = {"loss": flow / n, "action_mse": mse / n}
        return {**out, "aux": aux / n} if self.aux_norm is not None else out

    def checkpoint_meta(self, model):
        return {
            "camera": self.cameras[0],
            "cameras": self.cameras,
            "state_key": self.cfg.state_key,
            "state_stats": self.state_norm.to_dict(),
            "aux_key": self.cfg.aux_key,  # a training target only: the policy never reads it
            "action_stats": self.action_norm.to_dict(),
            "text_encoder": self.text_spec,
            "instructions": self.text.instructions,
            "frame_stride": 1,
            "data": self.data,
            "split": self.split,
            **({"parents": {"estimator": self.estimator}} if self.estimator else {}),
        }


def train_plain(cfg: PlainTrainConfig, data: list[str | Path], out: str | Path, *, resume: bool = False,
                progress: bool = True) -> Path:
    return run_stage(lambda: PlainStage(cfg, data, progress=progress), cfg, "train plain", data, out, resume=resume,
                     progress=progress)


CONFIG = PlainTrainConfig
RECIPES = {
    "default": PlainTrainConfig(),  # the preset's encoder, 2 frames, chunks of 16 (diffusion policy's settings)
    "resnet": PlainTrainConfig(encoder="resnet"),  # diffusion policy's image encoder family (GroupNorm ResNet)
    "aux": PlainTrainConfig(aux_key=ENV_STATE_KEY),  # + the privileged read-out of the simulator state in training
    "aux-feedback": PlainTrainConfig(aux_key=ENV_STATE_KEY, aux_feedback=True),  # + the estimate as a memory token
}
train = train_plain
