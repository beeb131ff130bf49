"""Meta-World demonstrations: layouts, rendering, the generated LeRobot dataset, resume and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from repwam.data.generate import GenerateConfig, generate, layout_seed
from repwam.data.lerobot import LeRobotDataset
from repwam.data.sim import EVAL_SEED_OFFSET, MetaWorldEnv, rollout_expert
from repwam.data.tasks import ALL_TASKS, INSTRUCTIONS, MT10, resolve_tasks
from repwam.errors import RepwamError

from conftest import TINY_EPISODES, TINY_TASKS


def test_every_task_has_an_instruction_and_sets_resolve():
    assert len(ALL_TASKS) == 50 and all(len(INSTRUCTIONS[t].split()) >= 3 for t in ALL_TASKS)
    assert len(set(INSTRUCTIONS.values())) == 50
    assert resolve_tasks("mt10") == MT10
    assert resolve_tasks("reach,push-v3") == ["reach-v3", "push-v3"]
    with pytest.raises(RepwamError, match="unknown Meta-World task 'rech'"):
        resolve_tasks("rech")


def test_seeds_change_layouts_and_renders_are_not_constant():
    with MetaWorldEnv("push-v3") as env:
        a, b, a2 = env.reset(1)[4:7].copy(), env.reset(2)[4:7].copy(), env.reset(1)[4:7].copy()
        goal1, goal2 = env.reset(1)[36:39].copy(), env.reset(2)[36:39].copy()
        frame = env.render()
    assert np.allclose(a, a2), "the same seed must give the same layout"
    assert not np.allclose(a, b) and not np.allclose(goal1, goal2), "different seeds must move object and goal"
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.std() > 10
    # demonstration and evaluation seeds never overlap
    demo = {layout_seed(0, t, k) for t in MT10 for k in range(20)}
    ev = {layout_seed(0, t, k, eval=True) for t in MT10 for k in range(20)}
    assert max(demo) < EVAL_SEED_OFFSET <= min(ev)
    assert len({layout_seed(0, "reach-v3", k) for k in range(50)}) == 50


@pytest.mark.parametrize("task", ["reach-v3", "peg-insert-side-v3"])
def test_the_first_frame_shows_this_layout_not_the_previous_one(task):
    """Meta-World's reset places the goal site (and peg-insert-side's box) after its last forward pass: the frame
    rendered right after reset must already show the new layout, as it does after one step of doing nothing."""
    with MetaWorldEnv(task) as env:
        model, data = env.env.model, env.env.data
        goal = [i for i in range(model.nsite) if model.site(i).name == "goal"][0]
        env.reset(1)
        obs = env.reset(2)
        np.testing.assert_allclose(data.site_xpos[goal], obs[36:39], atol=1e-6)
        first = env.render().astype(np.int16)
        env.step(np.zeros(4, np.float32))  # the hand barely moves; everything else stays put
        after = env.render().astype(np.int16)
    assert (np.abs(first - after).sum(-1) > 30).sum() < 20, "the first frame must show the layout the episode runs on"


def test_generated_dataset_matches_what_was_recorded(tiny_dataset):
    ds = LeRobotDataset(tiny_dataset)
    assert ds.info["codebase_version"] == "v3.0"
    assert ds.num_episodes == len(TINY_TASKS) * TINY_EPISODES
    assert sorted(set(ds.tasks)) == sorted(INSTRUCTIONS[t] for t in TINY_TASKS)
    report = json.loads((tiny_dataset / "meta" / "repwam_generation.json").read_text())
    assert report["episodes"] == ds.num_episodes and "expert_failures" in report
    # re-run the expert from the stored seed of one episode per task: same actions, same frames (up to the codec)
    for e in range(0, ds.num_episodes, TINY_EPISODES):
        meta = ds.episodes[e]
        data = ds.episode_data(e)
        with MetaWorldEnv(meta["env_task"]) as env:
            rec = rollout_expert(env, int(meta["seed"]))
            # replayed open loop from the same layout, the recorded actions give the recorded states and the
            # success: a policy that emits the demonstrated actions succeeds in the evaluation env
            obs, states, success = env.reset(int(meta["seed"])), [], False
            for a in data["action"]:
                states.append(obs[:4])
                res = env.step(a)
                obs, success = res.obs, success or res.success
        np.testing.assert_allclose(np.asarray(states, np.float32), data["observation.state"], atol=1e-6)
        assert success
        frames = ds.episode_frames(e, "observation.images.corner3")
        assert rec["episode_success"] and bool(meta["success"])
        np.testing.assert_array_equal(data["action"], rec["action"])
        np.testing.assert_array_equal(data["observation.state"], rec["state"])
        np.testing.assert_array_equal(data["observation.environment_state"], rec["env_state"])
        assert frames.shape == rec["image"].shape
        mse = np.mean((frames.astype(np.float64) - rec["image"]) ** 2)
        assert 10 * np.log10(255**2 / mse) > 30, "video round trip lost too much"
        assert bool(data["next.success"][-1]), "episodes end after the expert succeeded"
    # stats agree with the recorded columns
    actions = np.concatenate([ds.episode_data(e)["action"] for e in range(ds.num_episodes)])
    st = ds.stats["action"]
    np.testing.assert_allclose(st["mean"], actions.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st["std"], actions.std(0), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(st["min"], actions.min(0))
    np.testing.assert_allclose(st["max"], actions.max(0))
    np.testing.assert_allclose(st["q01"], np.quantile(actions, 0.01, axis=0), atol=1e-2)


def test_interrupted_generate_resumes(tmp_path, monkeypatch):
    from repwam.data import lerobot

    out = tmp_path / "ds"
    cfg = GenerateConfig(tasks=["reach-v3"], episodes_per_task=2, workers=1)
    real = lerobot.LeRobotWriter.finalize

    def crash(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(lerobot.LeRobotWriter, "finalize", crash)
    with pytest.raises(KeyboardInterrupt):
        generate(out, cfg)
    assert not (out / "meta" / "info.json").exists(), "an interrupted run must not look complete"
    with pytest.raises(RepwamError, match="info.json"):
        LeRobotDataset(out)
    staged = sorted((tmp_path / "ds.partial" / "reach-v3").glob("*.npz"))
    assert len(staged) == 2
    monkeypatch.setattr(lerobot.LeRobotWriter, "finalize", real)
    # other settings than the interrupted run: refused clearly
    with pytest.raises(RepwamError, match="other settings"):
        generate(out, GenerateConfig(tasks=["reach-v3"], episodes_per_task=2, workers=1, seed=5))
    report = generate(out, cfg)  # resumes: staged episodes are not re-run
    assert report["resumed_episodes"] == 2 and report["env_steps"] == 0
    assert LeRobotDataset(out).num_episodes == 2
    assert not (tmp_path / "ds.partial").exists()
    with pytest.raises(RepwamError, match="already holds a complete dataset"):
        generate(out, cfg)


def test_bad_output_dirs(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RepwamError, match="cannot write"):
        generate(blocker / "ds", GenerateConfig(tasks=["reach-v3"], episodes_per_task=1, workers=1))
    other = tmp_path / "other"
    other.mkdir()
    (other / "something.txt").write_text("x")
    with pytest.raises(RepwamError, match="not empty"):
        generate(other, GenerateConfig(tasks=["reach-v3"], episodes_per_task=1, workers=1))


def test_two_cameras_record_one_video_each(tmp_path):
    """`--camera corner3,topview`: one video feature per camera, rendered at the same steps (frame t of each view
    is the same simulator state), the views really different; an unknown or repeated camera is a clear error."""
    cfg = GenerateConfig(tasks=["reach-v3"], episodes_per_task=1, workers=1, cameras=("corner3", "topview"))
    generate(tmp_path / "ds", cfg)
    ds = LeRobotDataset(tmp_path / "ds")
    assert ds.camera_keys == ["observation.images.corner3", "observation.images.topview"]
    a, b = (ds.episode_frames(0, k) for k in ds.camera_keys)
    assert a.shape == b.shape == (ds.episode_length(0), 64, 64, 3)
    assert np.abs(a.astype(float) - b).mean() > 10, "the two views should differ"
    with MetaWorldEnv("reach-v3", cameras=("corner3", "topview")) as env:
        rec = rollout_expert(env, int(ds.episodes[0]["seed"]))
    for key, cam in zip(ds.camera_keys, ("corner3", "topview")):
        mse = np.mean((ds.episode_frames(0, key).astype(np.float64) - rec["images"][cam]) ** 2)
        assert 10 * np.log10(255**2 / mse) > 30
    for bad, msg in ((("corner3", "nope"), "unknown camera"), (("corner3", "corner3"), "twice")):
        with pytest.raises(RepwamError, match=msg):
            generate(tmp_path / f"bad{len(msg)}", GenerateConfig(tasks=["reach-v3"], episodes_per_task=1, cameras=bad))


def test_noisy_demonstrations_record_the_experts_action(tmp_path, tiny_dataset):
    """`--action-noise` (DART): the env executes the expert's action plus noise on x, y, z, the dataset records the
    expert's action at the states reached and the executed one beside it; seeded by the layout; bad values refused."""
    with MetaWorldEnv("push-v3") as env:
        clean = rollout_expert(env, 3)
        noisy, again = rollout_expert(env, 3, action_noise=0.5), rollout_expert(env, 3, action_noise=0.5)
    np.testing.assert_array_equal(clean["action"], clean["executed_action"])
    np.testing.assert_array_equal(noisy["executed_action"], again["executed_action"])  # seeded by the layout
    diff = noisy["executed_action"] - noisy["action"]
    assert np.abs(diff[:, :3]).mean() > 0.1 and np.all(diff[:, 3] == 0), "noise on the hand only, not the gripper"
    assert np.all(np.abs(noisy["executed_action"]) <= 1)
    # the states really were driven off the clean path (the expert then acts from them)
    n = min(len(clean["state"]), len(noisy["state"]))
    assert np.abs(clean["state"][:n, :3] - noisy["state"][:n, :3]).max() > 0.005
    cfg = GenerateConfig(tasks=["reach-v3"], episodes_per_task=1, workers=1, action_noise=0.5)
    generate(tmp_path / "ds", cfg)
    ds = LeRobotDataset(tmp_path / "ds")
    data = ds.episode_data(0)
    with MetaWorldEnv("reach-v3") as env:
        rec = rollout_expert(env, int(ds.episodes[0]["seed"]), action_noise=0.5)
    np.testing.assert_allclose(data["action"], rec["action"], atol=1e-6)
    np.testing.assert_allclose(data["action.executed"], rec["executed_action"], atol=1e-6)
    assert "action.executed" not in LeRobotDataset(tiny_dataset).episode_data(0), "clean datasets stay as they were"
    with pytest.raises(RepwamError, match="action-noise"):
        generate(tmp_path / "bad", GenerateConfig(tasks=["reach-v3"], episodes_per_task=1, action_noise=-0.1))
