"""Closed-loop evaluation: Wilson intervals, evaluation layouts, expert vs random through worker processes, resume
after a crash, refused settings, videos (with imagined frames) and policies that return bad actions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from repwam.data.generate import layout_seed
from repwam.data.sim import EVAL_SEED_OFFSET, MetaWorldEnv
from repwam.data.tasks import MT10, instruction
from repwam.errors import RepwamError
from repwam.eval.closed_loop import (EPISODES_FILE, RESULTS_FILE, PolicySpec, evaluate_policy, evaluation_seeds,
                                     policy_spec, wilson_interval)
from repwam.policy.expert import ExpertPolicy, RandomPolicy

EXPERT = "repwam.policy.expert:ExpertPolicy"
RANDOM = "repwam.policy.expert:RandomPolicy"
SIZE = 32  # the smallest frames that still show the scene; rendering dominates the cost of these runs


# ---------------------------------------------------------------- policies the worker processes import from here
class _Counting:
    """The expert, logging every reset to a file. From reset number `crash_at` on, while `crash_flag` exists, it
    crashes as the flag says: "exit" kills the worker process, "raise" raises."""

    def __init__(self, log: str, crash_flag: str, crash_at: int):
        self.inner, self.log, self.flag, self.crash_at = ExpertPolicy(image_size=SIZE), Path(log), Path(crash_flag), crash_at
        self.metadata = self.inner.metadata

    def reset(self, text):
        with open(self.log, "a") as fh:
            fh.write(text + "\n")
        if self.flag.exists() and len(self.log.read_text().splitlines()) >= self.crash_at:
            if self.flag.read_text() == "exit":
                os._exit(1)
            raise RuntimeError("simulated crash")
        self.inner.reset(text)

    def infer(self, observation):
        return self.inner.infer(observation)


class _Broken(RandomPolicy):
    """Random actions, then a bad one at step `after`."""

    def __init__(self, kind: str, after: int = 3):
        super().__init__(0, image_size=SIZE)
        self.kind, self.after, self.t = kind, after, 0

    def reset(self, text):
        super().reset(text)
        self.t = 0

    def infer(self, observation):
        out, self.t = super().infer(observation), self.t + 1
        if self.t > self.after:
            out["actions"] = np.full((1, 4), np.nan, np.float32) if self.kind == "nan" else np.zeros((1, 7), np.float32)
        return out


class _Imagining(ExpertPolicy):
    """The expert, returning two 'imagined' frames (the colour-inverted observation) every fourth step."""

    def __init__(self):
        super().__init__(image_size=SIZE)
        self.t = 0

    def infer(self, observation):
        out = super().infer(observation)
        if self.t % 4 == 0:
            img = observation[self.metadata["camera_keys"][0]]
            out["imagined"] = np.stack([255 - img, img[::-1]])
        self.t += 1
        return out


class _Estimating(ExpertPolicy):
    """The expert, returning as its 'estimated_state' the simulator's with the object 4 cm and the goal 3 cm off, at
    every fourth step (or of a wrong size)."""

    def __init__(self, size: int = 39):
        super().__init__(image_size=SIZE)
        self.size, self.t = size, 0

    def infer(self, observation):
        out = super().infer(observation)
        if self.t % 4 == 0:
            est = np.array(observation["observation.environment_state"], np.float32)
            est[5] += 0.04
            est[36] -= 0.03
            out["estimated_state"] = est[: self.size]
        self.t += 1
        return out


def estimating(size: int = 39) -> _Estimating:
    return _Estimating(size)


def counting(log: str, crash_flag: str, crash_at: int) -> _Counting:
    return _Counting(log, crash_flag, crash_at)


def broken(kind: str) -> _Broken:
    return _Broken(kind)


def imagining() -> _Imagining:
    return _Imagining()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _decode(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


# ---------------------------------------------------------------- tests
def test_wilson_interval_known_values():
    for (s, n), (lo, hi) in {(5, 10): (0.2366, 0.7634), (0, 10): (0.0, 0.2775), (10, 10): (0.7225, 1.0),
                             (1, 1): (0.2065, 1.0), (81, 263): (0.2553, 0.3662)}.items():
        assert wilson_interval(s, n) == pytest.approx((lo, hi), abs=1e-4), (s, n)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    from scipy.stats import binomtest

    for s, n in [(0, 3), (2, 3), (7, 20), (19, 20), (137, 500)]:
        ci = binomtest(s, n).proportion_ci(method="wilson")
        assert wilson_interval(s, n) == pytest.approx((ci.low, ci.high), abs=1e-12), (s, n)


def test_evaluation_seeds_are_eval_only_deterministic_and_stable():
    a, b = evaluation_seeds(0, MT10, 20), evaluation_seeds(0, MT10, 20)
    assert a == b and len(set(a.values())) == len(a)
    assert min(a.values()) >= EVAL_SEED_OFFSET and max(a.values()) < 2 * EVAL_SEED_OFFSET
    demo = {layout_seed(0, t, k) for t in MT10 for k in range(20)}
    assert not demo & set(a.values())
    assert evaluation_seeds(0, MT10[:2], 3).items() <= a.items(), "layouts must not depend on the episode count"
    assert not set(evaluation_seeds(1, MT10, 20).values()) & set(a.values())


def test_expert_succeeds_and_random_does_not_on_the_same_layouts(tmp_path):
    kw = dict(tasks="reach,drawer-open", episodes_per_task=2, seed=0, workers=2, max_steps=150, progress=False)
    ex = evaluate_policy(PolicySpec(EXPERT, {"image_size": SIZE}), out_dir=tmp_path / "expert", **kw)
    rnd = evaluate_policy(PolicySpec(RANDOM, {"seed": 0, "image_size": SIZE}), out_dir=tmp_path / "random",
                          videos_per_task=0, **kw)
    assert [r["success_rate"] for r in ex["tasks"].values()] == [1.0, 1.0] and ex["mean"]["success_rate"] == 1.0
    assert ex["mean"]["ci95"] == pytest.approx(wilson_interval(4, 4))
    assert rnd["mean"]["success_rate"] < 1.0 and rnd["mean"]["mean_length"] > ex["mean"]["mean_length"]
    eps = {name: _lines(tmp_path / name / EPISODES_FILE) for name in ("expert", "random")}
    want = evaluation_seeds(0, ["reach-v3", "drawer-open-v3"], 2)
    for name, lines in eps.items():
        assert {(r["task"], r["episode"]): r["seed"] for r in lines} == want, name
        assert all(r["infer_calls"] == r["steps"] and (r["success"] or r["steps"] == 150) for r in lines)
    assert all(r["steps"] < 150 for r in eps["expert"])
    # where episodes end: the expert's reach ends within Meta-World's 5 cm success radius of the goal it records,
    # random's hand ends farther away; every record keeps the goal, the final hand and object positions
    for name, lines in eps.items():
        for r in lines:
            assert len(r["goal"]) == len(r["final_hand"]) == len(r["final_obj"]) == 3
            assert 0 <= r["goal_dist_min"] <= r["goal_dist_final"] + 1e-9
    reach = {name: [r for r in lines if r["task"] == "reach-v3"] for name, lines in eps.items()}
    for r in reach["expert"]:
        assert r["goal_dist_final"] <= 0.05
        assert np.linalg.norm(np.subtract(r["final_hand"], r["goal"])) < 0.1  # the env measures from the fingertips
    assert ex["tasks"]["reach-v3"]["goal_dist_final_mean"] < rnd["tasks"]["reach-v3"]["goal_dist_final_mean"]
    saved = json.loads((tmp_path / "expert" / RESULTS_FILE).read_text())
    assert saved["mean"] == ex["mean"] and Path(ex["plot"]).stat().st_size > 0
    assert (tmp_path / "expert" / "table.md").read_text().count("| reach-v3 | 100.0%") == 1
    # one video per task, for episode 0, showing the rollout (frames change, then the outcome is held)
    assert [Path(v).name for v in ex["videos"]] == ["drawer-open-v3_ep000.mp4", "reach-v3_ep000.mp4"]
    assert rnd["videos"] == []
    steps = {r["task"]: r["steps"] for r in eps["expert"] if r["episode"] == 0}
    for v in ex["videos"]:
        frames = _decode(Path(v))
        task = Path(v).name.split("_ep")[0]
        assert len(frames) == steps[task] + 1 + 40, "every observed frame, the final one, and the held outcome"
        view = frames[:, : frames.shape[2]].astype(np.float32)
        assert view[0].std() > 10 and np.abs(view[steps[task] // 2] - view[0]).mean() > 1


def test_crash_keeps_finished_episodes_and_rerun_runs_only_the_missing(tmp_path):
    out, log, flag = tmp_path / "eval", tmp_path / "resets.log", tmp_path / "crash"
    spec = PolicySpec("test_eval_closed_loop:counting", {"log": str(log), "crash_flag": str(flag), "crash_at": 3})
    kw = dict(tasks="reach", episodes_per_task=3, seed=0, workers=1, max_steps=100, out_dir=out, progress=False,
              videos_per_task=0)
    flag.write_text("exit")
    with pytest.raises(RepwamError, match="a worker process died.*rerun the same command to resume"):
        evaluate_policy(spec, **kw)
    before = _lines(out / EPISODES_FILE)
    assert [r["episode"] for r in before] == [0, 1] and len(log.read_text().splitlines()) == 3
    with open(out / EPISODES_FILE, "a") as fh:  # a line torn by the crash
        fh.write('{"task": "reach-v3", "epis')
    flag.write_text("raise")  # an exception in the policy reaches the caller as itself
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate_policy(spec, **kw)
    assert len(log.read_text().splitlines()) == 4, "the rerun started with the missing episode"
    flag.unlink()
    res = evaluate_policy(spec, **kw)
    assert res["episodes_run"] == 1 and res["episodes_resumed"] == 2
    assert len(log.read_text().splitlines()) == 5, "only the missing episode was run"
    after = _lines(out / EPISODES_FILE)
    assert after[:2] == before and [r["episode"] for r in after] == [0, 1, 2]
    assert res["tasks"]["reach-v3"]["episodes"] == 3 and res["mean"]["success_rate"] == 1.0
    # different settings are refused before anything runs
    for change in ({"seed": 1}, {"max_steps": 90}):
        with pytest.raises(RepwamError, match="other settings"):
            evaluate_policy(spec, **{**kw, **change})
    with pytest.raises(RepwamError, match="other settings"):
        evaluate_policy(PolicySpec(EXPERT, {"image_size": SIZE}), **kw)
    assert len(log.read_text().splitlines()) == 5


def test_settings_from_the_policy_metadata_are_checked_and_episodes_can_grow(tmp_path):
    kw = dict(tasks="reach", seed=0, workers=0, max_steps=10, out_dir=tmp_path, progress=False, videos_per_task=0)
    evaluate_policy(PolicySpec(RANDOM, {"image_size": SIZE}), episodes_per_task=1, **kw)
    res = evaluate_policy(PolicySpec(RANDOM, {"image_size": SIZE}), episodes_per_task=2, **kw)
    assert (res["episodes_resumed"], res["episodes_run"]) == (1, 1)
    config = json.loads((tmp_path / "eval_config.json").read_text())
    assert config["env"]["image_size"] == SIZE and config["env"]["cameras"] == ["corner3"]
    # the same spec whose policy now reports other metadata (the checkpoint behind a path changed)
    config["policy_metadata"]["image_size"] = 64
    (tmp_path / "eval_config.json").write_text(json.dumps(config))
    with pytest.raises(RepwamError, match="other settings.*policy_metadata"):
        evaluate_policy(PolicySpec(RANDOM, {"image_size": SIZE}), episodes_per_task=3, **kw)


def test_bad_actions_are_refused_with_the_policy_named(tmp_path):
    kw = dict(tasks="reach", episodes_per_task=1, seed=0, max_steps=20, progress=False, videos_per_task=0)
    with pytest.raises(RepwamError, match=r"policy test_eval_closed_loop:broken\(kind='dim'\) returned actions of "
                                          r"shape \(1, 7\) at step 3 of reach-v3 episode 0"):
        evaluate_policy(PolicySpec("test_eval_closed_loop:broken", {"kind": "dim"}), out_dir=tmp_path / "a",
                        workers=0, **kw)
    with pytest.raises(RepwamError, match=r"policy test_eval_closed_loop:broken\(kind='nan'\) returned non-finite"):
        evaluate_policy(PolicySpec("test_eval_closed_loop:broken", {"kind": "nan"}), out_dir=tmp_path / "b",
                        workers=1, **kw)  # the error crosses the process boundary intact
    with pytest.raises(RepwamError, match="neither a directory nor one of: expert, random"):
        policy_spec(str(tmp_path / "missing"))
    with pytest.raises(RepwamError, match="privileged"):
        p = ExpertPolicy()
        p.reset(instruction("reach-v3"))
        p.infer({"observation.state": np.zeros(4, np.float32)})


def test_video_puts_imagined_frames_beside_the_real_ones(tmp_path):
    res = evaluate_policy(PolicySpec("test_eval_closed_loop:imagining"), tasks="reach", episodes_per_task=1, seed=0,
                          workers=0, max_steps=30, out_dir=tmp_path, progress=False)
    frames = _decode(Path(res["videos"][0]))
    scale = 4  # real | imagined x 2: 97 pixels wide, upscaled 4x
    assert frames.shape[2] == (SIZE + 1 + 2 * SIZE) * scale
    image = frames[:, : SIZE * scale].astype(np.float32)  # the rows above the caption
    real, imagined = image[:, :, : SIZE * scale], image[:, :, (SIZE + 1) * scale: (2 * SIZE + 1) * scale]
    assert np.abs(255 - imagined[5] - real[4]).mean() < 10, "step 5 holds step 4's imagined (inverted) frame"
    assert np.abs(255 - imagined[5] - real[5]).mean() > np.abs(255 - imagined[5] - real[4]).mean()
    assert real[:30].std(0).mean() > 1, "the video is not constant"


def test_a_policys_reading_of_the_scene_is_scored_against_the_simulator(tmp_path):
    kw = dict(tasks="reach,push", episodes_per_task=1, seed=0, workers=0, max_steps=12, progress=False,
              videos_per_task=0)
    res = evaluate_policy(PolicySpec("test_eval_closed_loop:estimating"), out_dir=tmp_path / "a", **kw)
    for r in _lines(tmp_path / "a" / "episodes.jsonl"):
        assert r["estimate_err_cm"] == {"object": 4.0, "goal": 3.0}
    assert res["mean"]["estimate_err_cm"] == {"object": 4.0, "goal": 3.0}
    assert "estimate_err_cm" not in evaluate_policy(PolicySpec(EXPERT, {"image_size": SIZE}), out_dir=tmp_path / "b",
                                                    **kw)["mean"]
    with pytest.raises(RepwamError, match=r"'estimated_state' of shape \(7,\) at step 0"):
        evaluate_policy(PolicySpec("test_eval_closed_loop:estimating", {"size": 7}), out_dir=tmp_path / "c", **kw)


def test_record_keeps_the_episodes_as_a_dataset_with_their_simulator_labels(tmp_path):
    """`record`: every episode run is kept (frames, robot and simulator state, executed actions), written as a LeRobot
    dataset an estimator can be fitted on; a resumed run adds to it; episodes run before `record` are counted."""
    from repwam.data.lerobot import LeRobotDataset

    kw = dict(tasks="reach,push", seed=0, workers=0, max_steps=15, progress=False, videos_per_task=0)
    spec = PolicySpec(RANDOM, {"seed": 0, "image_size": SIZE})
    evaluate_policy(spec, episodes_per_task=1, out_dir=tmp_path, **kw)  # not recorded
    res = evaluate_policy(spec, episodes_per_task=2, out_dir=tmp_path, record=True, **kw)
    assert res["rollouts"] == {"path": str(tmp_path / "rollouts"), "episodes": 2, "not_recorded": 2}
    ds = LeRobotDataset(tmp_path / "rollouts")
    assert ds.num_episodes == 2 and ds.camera_keys == ["observation.images.corner3"]
    assert [ds.episode_task(e) for e in range(2)] == [instruction("reach-v3"), instruction("push-v3")]
    data = ds.episode_data(0)
    assert ds.episode_length(0) == 15 and ds.episode_frames(0, ds.camera_keys[0]).shape == (15, SIZE, SIZE, 3)
    env = np.asarray(data["observation.environment_state"])
    np.testing.assert_allclose(np.asarray(data["observation.state"]), env[:, :4])
    seed = next(r["seed"] for r in _lines(tmp_path / "episodes.jsonl") if r["task"] == "reach-v3" and r["episode"] == 1)
    with MetaWorldEnv("reach-v3", cameras=("corner3",), image_size=SIZE) as sim:  # the first step's observation
        np.testing.assert_allclose(env[0], sim.reset(seed), atol=1e-6)
    assert np.abs(np.asarray(data["action"])).max() <= 1.0


def test_cli_runs_the_expert(tmp_path):
    from typer.testing import CliRunner

    from repwam.cli import app

    r = CliRunner().invoke(app, ["eval", "policy", "--checkpoint", "expert", "--tasks", "reach", "--episodes", "1",
                                 "--workers", "0", "--max-steps", "80", "--videos", "0", "--out", str(tmp_path),
                                 "--record"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "| reach-v3 | 100.0%" in r.output and (tmp_path / "success.png").exists()
    assert f"rollouts: 1 episodes -> {tmp_path / 'rollouts'}" in r.output


def test_demonstration_layouts_are_a_separate_diagnostic(tmp_path, tiny_dataset):
    """`demo_layouts=DATASET`: the episodes start from that dataset's demonstration layouts (the seeds it recorded),
    marked as such; such a run is never resumed as an evaluation (or the other way round); too few is refused."""
    from repwam.data.lerobot import LeRobotDataset

    kw = dict(tasks="reach", episodes_per_task=2, seed=0, workers=0, max_steps=150, progress=False, videos_per_task=0)
    res = evaluate_policy(PolicySpec(EXPERT, {"image_size": SIZE}), out_dir=tmp_path / "d", demo_layouts=tiny_dataset,
                          **kw)
    want = [int(ep["seed"]) for ep in LeRobotDataset(tiny_dataset).episodes if ep["env_task"] == "reach-v3"][:2]
    assert [r["seed"] for r in _lines(tmp_path / "d" / EPISODES_FILE)] == want and max(want) < EVAL_SEED_OFFSET
    assert res["layouts"].startswith("demonstrations of") and res["mean"]["success_rate"] == 1.0
    with pytest.raises(RepwamError, match="layouts"):
        evaluate_policy(PolicySpec(EXPERT, {"image_size": SIZE}), out_dir=tmp_path / "d", **kw)
    with pytest.raises(RepwamError, match="holds 3 demonstrations of reach-v3"):
        evaluate_policy(PolicySpec(EXPERT, {"image_size": SIZE}), out_dir=tmp_path / "e", demo_layouts=tiny_dataset,
                        **{**kw, "episodes_per_task": 5})


def test_policy_settings_parse_and_apply_to_checkpoints_only(tmp_path):
    from repwam.policy import parse_settings

    assert parse_settings(["chunk=1", "actions_only=false", "device=cpu", "steps=null"]) == {
        "chunk": 1, "actions_only": False, "device": "cpu", "steps": None}
    assert parse_settings(None) == {}
    for bad in ("chunk", "=1"):
        with pytest.raises(RepwamError, match="KEY=VALUE"):
            parse_settings([bad])
    for name in ("expert", "random", "ws://127.0.0.1:8000"):
        with pytest.raises(RepwamError, match="apply to a checkpoint"):
            policy_spec(name, settings={"chunk": 1})
    (tmp_path / "ckpt").mkdir()
    spec = policy_spec(str(tmp_path / "ckpt"))
    assert "settings" not in spec.kwargs, "no settings: the same eval_config.json as before the option existed"
