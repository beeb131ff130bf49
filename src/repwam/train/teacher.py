"""`repwam train teacher`: fit the privileged UPPER-BOUND teacher on a dataset's simulator state.

The privileged teacher (`repwam.tokenizer.teachers.privileged`) is a small CNN whose stride-8 feature map is
trained to predict the simulator's state from one camera frame: the hand, the gripper, the first object and the
goal (the columns the tokenizer table's state probe scores, `repwam.eval.probes.STATE_GROUPS`). A tokenizer
aligned to it (`repwam train tokenizer --recipe privileged --teacher-path DIR`) is the labelled upper bound of
the tokenizer table: what alignment gives when the teacher knows exactly what the probes ask for. It is fitted on
the training episodes of the stable split only, and its held-out R² per group is saved beside it (`fit.json`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from repwam.data.dataset import split_episodes, split_spec
from repwam.data.lerobot import LeRobotDataset
from repwam.errors import RepwamError
from repwam.data.transforms import frames_to_model
from repwam.eval.probes import STATE_GROUPS, grouped_r2
from repwam.tokenizer.teachers.privileged import PrivilegedEncoder

ENV_STATE = "observation.environment_state"
TARGET_COLUMNS = [c for cols in STATE_GROUPS.values() for c in cols]  # hand, gripper, object, goal


def _gather(datasets: list[LeRobotDataset], pairs: list[tuple[int, int]], stride: int) -> tuple[np.ndarray, np.ndarray]:
    frames, targets = [], []
    for d, e in pairs:
        ds = datasets[d]
        if ENV_STATE not in ds.features:
            raise RepwamError(f"{ds.root} has no {ENV_STATE!r} column: the privileged teacher is fitted on the "
                              "simulator state that `repwam data generate` records")
        frames.append(ds.episode_frames(e, ds.camera_keys[0])[::stride])
        targets.append(ds.episode_data(e)[ENV_STATE][::stride][:, TARGET_COLUMNS])
    return np.concatenate(frames), np.concatenate(targets).astype(np.float32)


def fit_privileged_teacher(data: list[str | Path], out: str | Path, *, steps: int = 2000, batch_size: int = 64,
                           frame_stride: int = 2, val_fraction: float = 0.1, split_seed: int = 0, seed: int = 0,
                           progress: bool = True) -> dict:
    """Fit on the training episodes of `data`, save to `out` (config.json, model.safetensors, fit.json) and return
    the fit report: held-out R² per state group on the validation episodes."""
    if frame_stride < 1:
        raise RepwamError(f"frame_stride must be >= 1, got {frame_stride}")
    datasets = [LeRobotDataset(d) for d in data]
    train = split_episodes(datasets, "train", val_fraction, split_seed)
    val = split_episodes(datasets, "val", val_fraction, split_seed)
    if not train or not val:
        raise RepwamError(f"need training and validation episodes, got {len(train)} and {len(val)}")
    x_train, y_train = _gather(datasets, train, frame_stride)
    x_val, y_val = _gather(datasets, val, frame_stride)
    model = PrivilegedEncoder.fit(x_train, y_train, steps=steps, batch_size=batch_size, seed=seed, progress=progress)
    with torch.no_grad():
        pred = torch.cat([model(frames_to_model(torch.from_numpy(x_val[i : i + 256]).permute(0, 3, 1, 2)))
                          for i in range(0, len(x_val), 256)]).numpy()
    ss_res = ((pred - y_val) ** 2).sum(0)
    ss_tot = ((y_val - y_val.mean(0)) ** 2).sum(0).clip(1e-12)
    r2 = 1.0 - ss_res / ss_tot  # per target column
    groups = grouped_r2(r2, STATE_GROUPS, TARGET_COLUMNS)
    groups.pop("mean")  # the report's mean is over the groups, as printed
    report = {"steps": steps, "batch_size": batch_size, "frame_stride": frame_stride, "seed": seed,
              "target_columns": TARGET_COLUMNS, "train_frames": int(len(x_train)), "val_frames": int(len(x_val)),
              "val_r2": groups, "val_r2_mean": float(np.mean(list(groups.values()))),
              "final_train_mse": float(np.mean(model.fit_history[-50:])), "data": [str(d) for d in data],
              "split": split_spec(datasets, val_fraction, split_seed)}
    out = Path(out)
    model.save(out)
    (out / "fit.json").write_text(json.dumps(report, indent=2))
    return report
