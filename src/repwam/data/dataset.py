"""Clips for training, over one or more LeRobot v3.0 datasets.

A clip is `num_frames` frames taken every `frame_stride` raw frames from one episode (T = 1 + 4k frames for
the tokenizer), with the actions of every raw step it spans, the state at each frame, the task text and masks
where the clip runs past the episode's end (padding repeats the last frame; masked entries must be ignored).

Videos are decoded once, when the dataset is built, into one uint8 array per dataset (`decode once and
cache`): 64x64 frames cost 12 KiB each, so 100k frames are 1.2 GiB. DataLoader workers share it through fork.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from repwam.data.lerobot import LeRobotDataset, camera_key
from repwam.data.transforms import frames_from_model, frames_to_model  # noqa: F401  (re-exported)
from repwam.errors import RepwamError


@dataclass
class _Episode:
    source: int  # which dataset
    index: int  # episode index in that dataset
    start: int  # first row of the episode in this ClipDataset's frame arrays
    length: int
    task: str
    global_start: int  # first row of the episode in its source dataset (LeRobot `index`)
    camera: str = ""  # the view of this slot (views="separate"); "" when the item carries every view


def episode_key(ds: LeRobotDataset, e: int) -> str:
    """What identifies an episode across datasets and runs: its task and its layout seed ("task|seed").
    Datasets without a seed column fall back to the dataset's directory name and the episode index."""
    seed = ds.episodes[e].get("seed")
    return f"{ds.episode_task(e)}|{seed if seed is not None else f'{ds.root.name}/{e}'}"


def _rank(key: str, salt: int) -> str:
    return hashlib.sha1(f"{salt}|{key}".encode()).hexdigest()


def split_episodes(datasets: list[LeRobotDataset], split: str, val_fraction: float, seed: int = 0) -> list[tuple[int, int]]:
    """(dataset, episode) pairs of `split` ("train", "val" or "all"), stratified by task.

    The split is a stable function of each episode's (task, layout seed) and `seed` (a salt): within a task,
    episodes are ranked by a hash of their key and the first round(val_fraction * n) go to validation (at least
    one when n >= 2 and val_fraction > 0). It does not depend on the order of the datasets, so every stage that
    reads the same data with the same (val_fraction, seed) sees the same validation episodes.
    """
    if split not in ("train", "val", "all"):
        raise RepwamError(f"split must be train, val or all, got {split!r}")
    by_task: dict[str, list[tuple[str, int, int]]] = {}
    for d, ds in enumerate(datasets):
        for e in range(ds.num_episodes):
            key = episode_key(ds, e)
            by_task.setdefault(ds.episode_task(e), []).append((key, d, e))
    val_keys = set()
    for task in sorted(by_task):
        keys = sorted({k for k, _, _ in by_task[task]}, key=lambda k: _rank(k, seed))
        n_val = int(round(val_fraction * len(keys)))
        if val_fraction > 0 and len(keys) >= 2:
            n_val = max(n_val, 1)
        val_keys.update(keys[:n_val])
    chosen = [(d, e) for eps in by_task.values() for k, d, e in eps
              if split == "all" or (k in val_keys) == (split == "val")]
    return sorted(chosen)


def split_spec(datasets: list[LeRobotDataset], val_fraction: float, seed: int = 0) -> dict:
    """What a checkpoint records about its data split: the rule's parameters and the validation episodes' keys."""
    val = sorted(episode_key(datasets[d], e) for d, e in split_episodes(datasets, "val", val_fraction, seed))
    return {"rule": "sha1(salt|task|seed) rank per task", "val_fraction": val_fraction, "salt": seed,
            "val_episodes": val}


class ClipDataset(torch.utils.data.Dataset):
    """Clips from one or more LeRobot v3.0 datasets (all must share the camera's image size and feature shapes).

    Cameras: `camera` picks one (default: the first); `cameras` several (a list, or "all": every camera of the first
    dataset), as `views` says: "separate" makes each (episode, camera) its own clip source, so one model learns every
    view with the same weights (the tokenizer), "stacked" gives every clip all views at once (frames (T, V, 3, H, W),
    a multi-view policy).

    Each item:
      frames        uint8 (T, 3, H, W)    (T, V, 3, H, W) with views="stacked"
      camera        str               the clip's camera key (views="separate")
      frame_mask    bool (T,)         False where the clip ran past the episode's end
      action        float32 (T*s, A)  the actions of every raw step from the first frame on (s = frame_stride)
      action_mask   bool (T*s,)
      state         float32 (T, D)    if the dataset has observation.state
      env_state     float32 (T, E)    if it has observation.environment_state (simulator object poses)
      task          str
      episode, start  ints            episode index (within the source dataset) and first raw frame
      source        int               which dataset
    """

    def __init__(
        self,
        roots: str | Path | list[str | Path],
        *,
        num_frames: int = 9,
        frame_stride: int = 1,
        camera: str | None = None,
        cameras: list[str] | str | None = None,
        views: str = "separate",
        split: str = "all",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        clip_step: int = 1,
        min_valid_frames: int | None = None,
        episodes: list[tuple[int, int]] | None = None,
        progress: bool = True,
    ):
        roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
        if not roots:
            raise RepwamError("no dataset given")
        if num_frames < 1 or frame_stride < 1 or clip_step < 1:
            raise RepwamError(f"num_frames, frame_stride and clip_step must be >= 1 (got {num_frames}, {frame_stride}, {clip_step})")
        self.datasets = [LeRobotDataset(r) for r in roots]
        self.num_frames, self.frame_stride = num_frames, frame_stride
        self.min_valid_frames = num_frames if min_valid_frames is None else min_valid_frames
        if not 1 <= self.min_valid_frames <= num_frames:
            raise RepwamError(f"min_valid_frames must be in [1, {num_frames}], got {self.min_valid_frames}")

        first = self.datasets[0]
        if not first.camera_keys:
            raise RepwamError(f"{first.root} has no camera features")
        if camera is not None and cameras is not None:
            raise RepwamError("give camera (one) or cameras (several), not both")
        if views not in ("separate", "stacked"):
            raise RepwamError(f"views must be 'separate' or 'stacked', got {views!r}")
        if cameras == "all":
            cameras = list(first.camera_keys)
        elif cameras is None:
            cameras = [camera or first.camera_keys[0]]
        self.cameras = [camera_key(c) for c in cameras]
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise RepwamError(f"cameras must be distinct and at least one, got {self.cameras}")
        self.camera = self.cameras[0]
        self.stacked = views == "stacked"
        for ds in self.datasets:
            missing = [c for c in self.cameras if c not in ds.camera_keys]
            if missing:
                raise RepwamError(f"{ds.root} has no camera {missing[0]!r}; it has {ds.camera_keys}")
            for key in (*self.cameras, "action", "observation.state"):
                if key in first.features and key in ds.features:
                    a, b = tuple(first.features[key]["shape"]), tuple(ds.features[key]["shape"])
                    if a != b:
                        raise RepwamError(f"feature {key!r} has shape {b} in {ds.root} but {a} in {first.root}")

        pairs = episodes if episodes is not None else split_episodes(self.datasets, split, val_fraction, split_seed)
        self._load(pairs, progress)
        self.frame_arrays: dict[str, list] = {}
        # clip index: (episode slot, start frame within the episode)
        span_valid = (self.min_valid_frames - 1) * frame_stride + 1
        self.index = [
            (i, s) for i, ep in enumerate(self.episodes) for s in range(0, max(ep.length - span_valid + 1, 0), clip_step)
        ]
        if not self.index:
            raise RepwamError(
                f"no clip of {num_frames} frames at stride {frame_stride} fits in the selected episodes "
                f"(longest has {max((e.length for e in self.episodes), default=0)} frames)"
            )

    def _load(self, pairs: list[tuple[int, int]], progress: bool) -> None:
        """Decode the selected episodes once into contiguous arrays."""
        self.episodes: list[_Episode] = []
        frames, actions, states, env_states = [], [], [], []
        row = 0
        views = [""] if self.stacked else self.cameras  # one slot per episode, or per (episode, camera)
        for d, e in tqdm(pairs, desc="decoding episodes", unit="ep", disable=not progress):
            ds = self.datasets[d]
            data = ds.episode_data(e)  # read once for all of the episode's views
            for cam in views:
                if self.stacked:  # (T, V, H, W, 3)
                    video = np.stack([ds.episode_frames(e, c) for c in self.cameras], axis=1)
                else:  # (T, H, W, 3)
                    video = ds.episode_frames(e, cam)
                n = len(video)
                self.episodes.append(_Episode(d, e, row, n, ds.episode_task(e), int(ds.episodes[e]["dataset_from_index"]),
                                              cam))
                frames.append(video)
                if "action" in data:
                    actions.append(np.asarray(data["action"], np.float32).reshape(n, -1))
                if "observation.state" in data:
                    states.append(np.asarray(data["observation.state"], np.float32).reshape(n, -1))
                if "observation.environment_state" in data:
                    env_states.append(np.asarray(data["observation.environment_state"], np.float32).reshape(n, -1))
                row += n
        self.frames = np.concatenate(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)  # (N, [V,] H, W, 3)
        total = len(self.frames)
        # a feature is used only when every selected episode has it
        slots = len(self.episodes)
        self.actions = np.concatenate(actions) if len(actions) == slots and slots else None
        self.states = np.concatenate(states) if len(states) == slots and slots else None
        self.env_states = np.concatenate(env_states) if len(env_states) == slots and slots else None
        for arr in (self.actions, self.states, self.env_states):
            assert arr is None or len(arr) == total

    def attach(self, name: str, per_source: list) -> None:
        """Return `per_source[source][global frame index]` under `name` for every frame of a clip.

        per_source: one array or tensor per source dataset with one row per frame of that dataset (e.g. cached
        teacher features), or per source a dict {camera key: such an array} of per-view arrays (with views=
        "separate" each clip gets its camera's rows; with "stacked" the views are stacked after the frame axis)."""
        if len(per_source) != len(self.datasets):
            raise RepwamError(f"{name}: got arrays for {len(per_source)} datasets, expected {len(self.datasets)}")
        for ds, arr in zip(self.datasets, per_source):
            for cam, a in (arr.items() if isinstance(arr, dict) else [(None, arr)]):
                if cam is not None and cam not in self.cameras:
                    continue
                if len(a) != ds.num_frames:
                    raise RepwamError(f"{name}: {len(a)} rows for {ds.root}, which has {ds.num_frames} frames")
            if isinstance(arr, dict) and any(c not in arr for c in self.cameras):
                raise RepwamError(f"{name}: per-camera arrays for {sorted(arr)}, the clips need {self.cameras}")
        self.frame_arrays[name] = per_source

    def __len__(self) -> int:
        return len(self.index)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.frames.shape[-3:-1])

    def rows(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Row indices into the frame and action arrays for clip i, and their validity masks."""
        slot, s = self.index[i]
        ep = self.episodes[slot]
        T, st = self.num_frames, self.frame_stride
        f = s + st * np.arange(T)
        a = s + np.arange(T * st)
        fmask, amask = f < ep.length, a < ep.length
        f = ep.start + np.minimum(f, ep.length - 1)
        a = ep.start + np.minimum(a, ep.length - 1)
        return f, fmask, a, amask

    def __getitem__(self, i: int) -> dict:
        slot, s = self.index[i]
        ep = self.episodes[slot]
        f, fmask, a, amask = self.rows(i)
        frames = torch.from_numpy(self.frames[f])  # (T, [V,] H, W, 3)
        item = {
            "frames": frames.movedim(-1, -3).contiguous(),  # (T, [V,] 3, H, W) uint8
            "frame_mask": torch.from_numpy(fmask),
            "task": ep.task,
            "episode": ep.index,
            "source": ep.source,
            "start": s,
        }
        if not self.stacked:
            item["camera"] = ep.camera
        if self.actions is not None:
            act = self.actions[a].copy()
            act[~amask] = 0.0
            item["action"] = torch.from_numpy(act)
            item["action_mask"] = torch.from_numpy(amask)
        if self.states is not None:
            item["state"] = torch.from_numpy(self.states[f])
        if self.env_states is not None:
            item["env_state"] = torch.from_numpy(self.env_states[f])
        if self.frame_arrays:
            g = f - ep.start + ep.global_start
            for name, arrays in self.frame_arrays.items():  # float16 is a storage format: hand out float32
                arr = arrays[ep.source]  # (a float16 batch breaks collation under CPU autocast)
                if not isinstance(arr, dict):
                    x = torch.as_tensor(arr[g])
                elif self.stacked:
                    x = torch.stack([torch.as_tensor(arr[c][g]) for c in self.cameras], dim=1)  # (T, V, ...)
                else:
                    x = torch.as_tensor(arr[ep.camera][g])
                item[name] = x.float() if x.dtype == torch.float16 else x
        return item
