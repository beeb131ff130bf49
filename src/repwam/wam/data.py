"""Training data of the world action model: clips of cached visual latents, latent-action labels and instructions.

Per dataset it reads the latent cache of one tokenizer (`<data>/cache/latents/<tokenizer hash>/`), the label cache
of one LAT trained on that tokenizer (`<data>/cache/latent_actions/<LAT hash>/`), and each episode's task text.
Datasets without robot actions (action-free video) work: ℓ comes from the LAT. When every dataset has robot
actions and states, clips also carry them (the adaptation stage denoises robot actions).

Item (a clip of `clip_frames` latent frames starting at latent frame s of one episode):
    z          (T', L, d_v)      visual latents (frames past the episode's real end repeat the last one)
    ell        (T'-1, A)         latent actions, normalised with the LAT's stats (ℓ - mean) / std
    valid      (T',) bool        latent frames that cover only real frames
    text       int               index into `TextTable` (the instruction)
    action     (T'-1, tp·s, A_r) robot actions between latent frames j and j+1 (tp = 4 raw steps per latent frame
                                 at stride s), normalised with the dataset stats      [when the data has them]
    state      (T', D_s)         proprioceptive state at the last raw frame each latent frame covers, normalised
                                                                                      [when the data has them]
    first      (L, d_v)          the episode's first latent frame (the context of first_frame_context)
    aux        (T', D_e)         the simulator observation (`observation.environment_state`) at those frames,
                                 normalised: the privileged read-out's target, never a model input  [aux_norm given]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from repwam.data.dataset import split_episodes
from repwam.data.lerobot import LeRobotDataset
from repwam.data.transforms import Normalizer
from repwam.errors import RepwamError
from repwam.lat.data import load_labels, valid_latent_frames
from repwam.serve import ENV_STATE_KEY as ENV_STATE
from repwam.serve import EST_STATE_KEY, STATE_KEY
from repwam.tokenizer.tokenize import load_latents


class TextTable:
    """Instruction strings -> padded token embeddings (n, N_max, D) and masks (n, N_max), encoded once."""

    def __init__(self, instructions: list[str], encoder):
        self.instructions = list(dict.fromkeys(instructions))
        self.index = {s: i for i, s in enumerate(self.instructions)}
        encoded = [encoder.encode(s) for s in self.instructions]
        n = max(len(e) for e, _ in encoded)
        self.emb = torch.zeros(len(encoded), n, encoder.dim)
        self.mask = torch.zeros(len(encoded), n, dtype=torch.bool)
        for i, (e, m) in enumerate(encoded):
            self.emb[i, : len(e)] = e
            self.mask[i, : len(m)] = m

    def __call__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.emb[idx], self.mask[idx]


ENV_STATE_MIN_STD = 1e-2  # some simulator dims (a second object's pose) are constant in a task set: no blow-ups


def dataset_stats(datasets: list[LeRobotDataset], key: str, min_std: float = 0.0) -> Normalizer | None:
    """Mean/std of `key` over the datasets that have it (from meta/stats.json), or None; std floored at min_std."""
    stats = [ds.stats[key] for ds in datasets if key in getattr(ds, "stats", {})]
    if len(stats) != len(datasets) or not stats:
        return None
    counts = np.array([float(np.ravel(s.get("count", [1]))[0]) for s in stats])
    means = np.array([np.ravel(s["mean"]) for s in stats])
    stds = np.array([np.ravel(s["std"]) for s in stats])
    w = counts / counts.sum()
    mean = (w[:, None] * means).sum(0)
    var = (w[:, None] * (stds**2 + (means - mean) ** 2)).sum(0)
    return Normalizer(mean.tolist(), np.maximum(np.sqrt(np.maximum(var, 1e-12)), min_std).tolist())


class WAMClips(torch.utils.data.Dataset):
    def __init__(self, roots: list[str | Path], tokenizer_hash: str, lat_hash: str, *, clip_frames: int = 6,
                 split: str = "all", val_fraction: float = 0.1, split_seed: int = 0, ell_norm: Normalizer | None = None,
                 robot: bool = False, action_norm: Normalizer | None = None, state_norm: Normalizer | None = None,
                 aux: bool = False, aux_norm: Normalizer | None = None, state_key: str = "observation.state",
                 estimates: dict[str, np.ndarray] | None = None):
        if clip_frames < 2:
            raise RepwamError(f"clip_frames must be >= 2 (one transition), got {clip_frames}")
        self.datasets = [LeRobotDataset(r) for r in roots]
        self.clip_frames = clip_frames
        self.latents, self.valid, self.labels, self.tasks = [], [], [], []
        self.lat_meta = self.z_meta = None
        for ds, root in zip(self.datasets, roots):
            zs, valid, self.z_meta = load_latents(root, tokenizer_hash, what="the world action model")
            ells, _, self.lat_meta = load_labels(root, lat_hash)
            if self.lat_meta["tokenizer_hash"] != tokenizer_hash:
                raise RepwamError(f"the latent actions in {root} (LAT {lat_hash}) were made on tokenizer "
                                  f"{self.lat_meta['tokenizer_hash']}, not {tokenizer_hash}")
            self.latents.append(zs)
            self.valid.append(valid)
            self.labels.append(ells)
            self.tasks.append([ds.episode_task(e) for e in range(ds.num_episodes)])
        self.stride, self.tp = int(self.z_meta["frame_stride"]), int(self.z_meta["temporal_patch"])
        self.ell_norm = ell_norm or Normalizer.from_dict(self.lat_meta["stats"])
        self.robot = robot
        # EST_STATE_KEY: the robot's state followed by a state estimator's cross-fitted estimate of the frame
        estimated = state_key == EST_STATE_KEY
        if estimated and estimates is None:
            raise RepwamError(f"state_key {EST_STATE_KEY!r} reads a state estimator's cross-fitted estimates: "
                              "pass them (repwam.train.estimator.crossfit_estimates)")
        read_key = STATE_KEY if estimated else state_key
        if robot:
            missing = [str(ds.root) for ds in self.datasets if "action" not in ds.features or
                       read_key not in ds.features]
            if missing:
                raise RepwamError(f"robot-action training needs `action` and `{read_key}` in every dataset; "
                                  f"missing in {missing}")
            self.action_norm = action_norm or dataset_stats(self.datasets, "action")
            floor = ENV_STATE_MIN_STD if state_key == ENV_STATE else 0.0
            self.state_norm = state_norm or (None if estimated else dataset_stats(self.datasets, state_key, floor))
            self.actions, self.states = {}, {}
        self.aux_norm, self.env_states = None, {}
        if aux:
            missing = [str(ds.root) for ds in self.datasets if ENV_STATE not in ds.features]
            if missing:
                raise RepwamError(f"the read-out's target `{ENV_STATE}` is missing in {missing}")
            self.aux_norm = aux_norm or dataset_stats(self.datasets, ENV_STATE, ENV_STATE_MIN_STD)
            if self.aux_norm is None:
                raise RepwamError(f"the read-out's target is normalised with meta/stats.json: some dataset has no "
                                  f"stats of `{ENV_STATE}` (regenerate it with repwam data generate)")
        self.index = []
        for d, e in split_episodes(self.datasets, split, val_fraction, split_seed):
            n_valid = valid_latent_frames(self.valid[d][e], self.tp)
            data = self.datasets[d].episode_data(e) if robot or aux else None
            if robot:
                self.actions[(d, e)] = np.asarray(data["action"], np.float32)
                self.states[(d, e)] = np.asarray(data[read_key], np.float32)
                if estimated:
                    ds = self.datasets[d]
                    lo = int(ds.episodes[e]["dataset_from_index"])
                    est = estimates[str(Path(ds.root).resolve())][lo : lo + ds.episode_length(e)]
                    self.states[(d, e)] = np.concatenate([self.states[(d, e)], est], 1).astype(np.float32)
            if aux:
                self.env_states[(d, e)] = np.asarray(data[ENV_STATE], np.float32)
            for s in range(0, max(n_valid - 1, 0)):  # every start with at least one real transition
                self.index.append((d, e, s))
        if not self.index:
            raise RepwamError(f"no clip with a real transition in the {split} episodes")
        if robot and self.state_norm is None:  # the estimates have no stats.json: from these episodes' frames
            st = np.concatenate(list(self.states.values()))
            self.state_norm = Normalizer.from_array(st, ENV_STATE_MIN_STD)
        self.instructions = sorted({t for ts in self.tasks for t in ts})

    @property
    def latent_shape(self) -> tuple[int, int]:
        z = self.latents[0][0]
        return int(z.shape[1]), int(z.shape[2])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        d, e, s = self.index[i]
        z_ep, ell_ep = self.latents[d][e], self.labels[d][e]
        n_valid = valid_latent_frames(self.valid[d][e], self.tp)
        frames = np.minimum(np.arange(s, s + self.clip_frames), len(z_ep) - 1)
        trans = np.minimum(np.arange(s, s + self.clip_frames - 1), len(ell_ep) - 1)
        item = {
            "z": z_ep[frames],
            "first": z_ep[0],
            "ell": self.ell_norm(ell_ep[trans]),
            "valid": torch.from_numpy(np.arange(s, s + self.clip_frames) < n_valid),
            "text": self.instructions.index(self.tasks[d][e]),
            "episode": e,
            "source": d,
            "start": s,
        }
        per = self.tp * self.stride  # raw steps per latent-frame step
        last_raw = per * np.arange(s, s + self.clip_frames)  # the last raw frame each latent frame covers
        if self.robot:
            act, st = self.actions[(d, e)], self.states[(d, e)]
            rows = np.minimum(per * s + np.arange((self.clip_frames - 1) * per), len(act) - 1)
            item["action"] = self.action_norm(act[rows].reshape(self.clip_frames - 1, per, -1))
            item["state"] = self.state_norm(st[np.minimum(last_raw, len(st) - 1)])
        if self.aux_norm is not None:
            env = self.env_states[(d, e)]
            item["aux"] = self.aux_norm(env[np.minimum(last_raw, len(env) - 1)])
        return item
