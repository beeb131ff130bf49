"""The clip loader and the data CLI (info, view) on the tiny generated dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repwam.data.dataset import ClipDataset, frames_from_model, frames_to_model, split_episodes
from repwam.data.lerobot import LeRobotDataset
from repwam.errors import RepwamError

from conftest import TINY_EPISODES, TINY_TASKS


def test_clips_align_frames_actions_and_state(tiny_dataset):
    ds = ClipDataset(tiny_dataset, num_frames=5, frame_stride=2, progress=False)
    src = LeRobotDataset(tiny_dataset)
    item = ds[7]
    assert item["frames"].shape == (5, 3, 64, 64) and item["frames"].dtype == torch.uint8
    assert item["action"].shape == (10, 4) and item["state"].shape == (5, 4) and item["env_state"].shape == (5, 39)
    assert item["frame_mask"].all() and item["action_mask"].all()
    e, s = item["episode"], item["start"]
    frames = src.episode_frames(e, "observation.images.corner3")
    data = src.episode_data(e)
    np.testing.assert_array_equal(item["frames"].permute(0, 2, 3, 1).numpy(), frames[s : s + 10 : 2])
    np.testing.assert_array_equal(item["action"].numpy(), data["action"][s : s + 10])
    np.testing.assert_array_equal(item["state"].numpy(), data["observation.state"][s : s + 10 : 2])
    assert item["task"] == src.episode_task(e)


def test_clips_past_the_end_are_masked(tiny_dataset):
    ds = ClipDataset(tiny_dataset, num_frames=9, frame_stride=1, min_valid_frames=3, progress=False)
    last = max(i for i, (slot, _) in enumerate(ds.index) if slot == 0)
    item = ds[last]
    ep_len = ds.episodes[0].length
    n_valid = ep_len - item["start"]
    assert n_valid == 3
    assert item["frame_mask"].tolist() == [True] * 3 + [False] * 6
    assert item["action_mask"].sum() == 3
    assert torch.equal(item["frames"][3], item["frames"][2]), "padding repeats the last frame"
    assert (item["action"][3:] == 0).all()
    full = ClipDataset(tiny_dataset, num_frames=9, progress=False)
    assert all(full[i]["frame_mask"].all() for i in range(0, len(full), 37))


def test_split_by_episode_is_disjoint_and_stratified(tiny_dataset):
    datasets = [LeRobotDataset(tiny_dataset)]
    train = split_episodes(datasets, "train", 0.34, seed=0)
    val = split_episodes(datasets, "val", 0.34, seed=0)
    assert not set(train) & set(val)
    assert len(train) + len(val) == len(TINY_TASKS) * TINY_EPISODES
    assert len({datasets[0].episode_task(e) for _, e in val}) == len(TINY_TASKS), "every task is in val"
    tr = ClipDataset(tiny_dataset, num_frames=5, split="train", val_fraction=0.34, progress=False)
    assert {ep.index for ep in tr.episodes} == {e for _, e in train}


def test_two_datasets_and_dataloader(tiny_dataset):
    ds = ClipDataset([tiny_dataset, tiny_dataset], num_frames=5, progress=False)
    assert {ep.source for ep in ds.episodes} == {0, 1}
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)))
    assert batch["frames"].shape == (4, 5, 3, 64, 64) and len(batch["task"]) == 4
    x = frames_to_model(batch["frames"])
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(frames_from_model(x), batch["frames"])


def test_loader_bad_input(tiny_dataset, tmp_path):
    with pytest.raises(RepwamError, match="no camera"):
        ClipDataset(tiny_dataset, camera="wrist", progress=False)
    with pytest.raises(RepwamError, match="no clip of 999 frames"):
        ClipDataset(tiny_dataset, num_frames=999, progress=False)
    with pytest.raises(RepwamError, match="info.json"):
        ClipDataset(tmp_path, progress=False)


def test_cli_info_and_view(tiny_dataset, tmp_path, capsys):
    import sys

    from repwam import cli

    def run(*args):
        sys.argv = ["repwam", *args]
        try:
            cli.main()
        except SystemExit as e:
            return e.code
        return 0

    assert run("data", "info", str(tiny_dataset)) == 0
    out = capsys.readouterr().out
    assert "episodes 9" in out and "move the gripper to the red goal" in out and "observation.images.corner3" in out
    gif = tmp_path / "ep.gif"
    assert run("data", "view", str(tiny_dataset), "--episode", "1", "--out", str(gif)) == 0
    from PIL import Image

    im = Image.open(gif)
    assert im.n_frames == LeRobotDataset(tiny_dataset).episodes[1]["length"] and im.size[0] == 256
    mp4 = tmp_path / "ep.mp4"
    assert run("data", "view", str(tiny_dataset), "-e", "0", "-o", str(mp4)) == 0 and mp4.stat().st_size > 1000
    assert run("data", "view", str(tiny_dataset), "--episode", "99") == 2
    assert "episode 99 does not exist" in capsys.readouterr().err
    assert run("data", "info", str(tmp_path / "missing")) == 2
    assert "/missing" in capsys.readouterr().err
