"""Closed-loop evaluation on the embedded Meta-World benchmark (`repwam eval policy`).

Protocol (DESIGN.md, "Closed-loop evaluation protocol")
- One policy for every task. Episode k of task t starts from the layout `layout_seed(seed, t, k, eval=True)`, a
  seed in [EVAL_SEED_OFFSET, 2 * EVAL_SEED_OFFSET): never a demonstration layout (those are < EVAL_SEED_OFFSET),
  the same for every policy evaluated with the same `seed`, and independent of the episode count and of workers.
- An episode: `policy.reset(instruction)`, then at every control step `policy.infer(observation)` and the env
  executes `actions[0]` (checked: shape (H, 4), all finite; then clipped to [-1, 1]).
- Success = the env's `success` flag after any step within the step limit. The limit is Meta-World's
  `max_path_length`, 500 steps for every v3 task (`max_steps` overrides it for quick runs). An episode stops at
  its first success; its length is the steps to success, or the limit.

What the policy observes at every step
    observation.images.<cam>       uint8 (S, S, 3)  each camera of metadata["camera_keys"], S = metadata["image_size"]
    observation.state              float32 (4,)     hand xyz + gripper opening (the first 4 of the Meta-World obs)
    observation.environment_state  float32 (39,)    the full Meta-World obs (`sim.OBS_NAMES`): privileged, read only by
                                                    reference policies such as the scripted expert
    metadata["instruction_key"]    str              the task's instruction ("prompt")
`metadata["goal_marker_scale"]` (default 3.0, as `repwam data generate`) sets how the goal markers are drawn.
A policy may return `"imagined"`: uint8 (H, W, 3) or (n, H, W, 3) decoded future frames; videos show them beside
the real frames (held until the next ones arrive). A policy that reads the scene's state from its cameras may return
`"estimated_state"` (39,) at the steps it reads it: each episode then keeps the mean 3-D error (cm) of its object
and goal positions against the simulator's, in closed loop (`estimate_err_cm`).

How it runs
- Each worker process (spawn) builds its own policy from a picklable `PolicySpec` (a checkpoint path travels, never a
  live model) and keeps one MetaWorldEnv at a time (the safe pattern for offscreen GL); `workers=0` runs everything
  in this process (for debugging a policy).
- `out_dir/episodes.jsonl` gets one line per finished episode at once (flushed and fsynced): a crash keeps finished
  episodes and a rerun with the same settings (`out_dir/eval_config.json`: policy, seed, step limit, cameras, image
  size, the policy's metadata) runs only the missing ones; other settings are refused. The episode count and the
  task list may grow between runs: episodes are keyed by (task, index) and their layouts do not depend on either.
- Rollout videos (`out_dir/videos/`) of the first `videos_per_task` episodes of each task, recorded when they run.
- Summary over the requested tasks x episodes: per-task success with a 95% Wilson interval, the mean over tasks with
  the Wilson interval over all episodes, mean episode length, the mean final distance from what the task moves to
  its target (Meta-World's `obj_to_target`; each episode also keeps its minimum, the final hand and object
  positions and the goal), and policy milliseconds per `infer` call: `results.json`, `table.md` and `success.png`.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from repwam.data.generate import layout_seed
from repwam.data.sim import ACTION_NAMES, CAMERAS, DEFAULT_IMAGE_SIZE, FPS, STATE_NAMES
from repwam.data.tasks import instruction, resolve_tasks
from repwam.errors import RepwamError
from repwam.eval.probes import STATE_GROUPS
from repwam.policy.base import INSTRUCTION_KEY, Policy

CONFIG_FILE = "eval_config.json"
EPISODES_FILE = "episodes.jsonl"
RESULTS_FILE = "results.json"
ROLLOUTS_STAGING = "rollouts_staging/{task}_ep{k:03d}.npz"  # one recorded episode (`record`), under out_dir
PROTOCOL = "metaworld-closed-loop-v1"  # bump when the meaning of an episode record changes
META_WORLD_MAX_STEPS = 500  # max_path_length of every Meta-World v3 task
DEFAULT_GOAL_MARKER_SCALE = 3.0  # as in `repwam data generate`
IMAGE_PREFIX = "observation.images."
ENV_STATE_KEY = "observation.environment_state"
Z95 = 1.959963984540054  # standard normal quantile of 0.975
VIDEO_HOLD_S = 0.5  # the last frame, framed green (success) or red (failure), is held this long
VIDEO_MIN_WIDTH, VIDEO_MAX_WIDTH = 256, 1280  # frames are upscaled (4x, or more for tiny ones) within these widths


# ---------------------------------------------------------------- policies, by a picklable recipe
@dataclass(frozen=True)
class PolicySpec:
    """How a worker builds its policy: `target` is "module:callable", called with `kwargs` (JSON values only)."""

    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.target.count(":") != 1:
            raise RepwamError(f"policy target must look like 'package.module:function', got {self.target!r}")
        try:
            json.dumps(self.kwargs)
        except TypeError as e:
            raise RepwamError(f"policy kwargs must be JSON values (they are stored in {CONFIG_FILE}): {e}") from None

    def build(self) -> Policy:
        module, attr = self.target.split(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise RepwamError(f"cannot import the policy factory {self.target}: {e}") from None
        policy = factory(**self.kwargs)
        if not isinstance(policy, Policy):
            raise RepwamError(f"{self} built a {type(policy).__name__}, which lacks metadata / reset / infer")
        return policy

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "kwargs": json.loads(json.dumps(self.kwargs))}

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.kwargs.items()))
        return f"{self.target}({args})"


def load_checkpoint_policy(path: str, settings: dict[str, Any] | None = None) -> Policy:
    """A policy checkpoint directory, through `repwam.policy.load_policy` (imported here, in the worker), with its
    inference `settings` (e.g. {"chunk": 1})."""
    import repwam.policy

    load = getattr(repwam.policy, "load_policy", None)
    if load is None:
        raise RepwamError(
            f"cannot evaluate {path}: no checkpoint type is servable yet (repwam.policy.load_policy does not exist); "
            "the reference rows are --checkpoint expert and --checkpoint random"
        )
    return load(path, **(settings or {}))


def policy_spec(name: str, *, seed: int = 0, settings: dict[str, Any] | None = None) -> PolicySpec:
    """`expert`, `random` (seeded with `seed`), a checkpoint directory, or a policy server `ws://HOST:PORT`
    (each worker opens its own connection, so each has its own episode state on the server). `settings`: a
    checkpoint policy's inference settings (`repwam.policy.load_policy`), recorded in eval_config.json."""
    if settings and (name in ("expert", "random") or name.startswith(("ws://", "wss://"))):
        raise RepwamError(f"policy settings ({', '.join(settings)}) apply to a checkpoint; {name} takes none "
                          "(a server's policy is set when it is started: `repwam serve --setting ...`)")
    if name.startswith(("ws://", "wss://")):
        return PolicySpec("repwam.serve.client:WebsocketPolicy", {"url": name})
    if name == "expert":
        return PolicySpec("repwam.policy.expert:ExpertPolicy")
    if name == "random":
        return PolicySpec("repwam.policy.expert:RandomPolicy", {"seed": seed})
    path = Path(name)
    if not path.is_dir():
        raise RepwamError(f"--checkpoint {name!r} is neither a directory nor one of: expert, random")
    kwargs: dict[str, Any] = {"path": str(path.resolve())}
    if settings:  # only when given, so the eval_config.json of earlier runs still matches
        kwargs["settings"] = dict(settings)
    return PolicySpec("repwam.eval.closed_loop:load_checkpoint_policy", kwargs)


def env_settings(metadata: dict[str, Any], policy: str) -> dict[str, Any]:
    """What to render and send, from a policy's metadata; refuses policies that cannot drive Meta-World."""
    keys = metadata.get("camera_keys") or []
    cameras = [k.removeprefix(IMAGE_PREFIX) for k in keys]
    bad = [c for c in cameras if c not in CAMERAS]
    if not cameras or bad:
        raise RepwamError(f"policy {policy}: metadata camera_keys {keys!r} must name Meta-World cameras: {CAMERAS}")
    size = metadata.get("image_size", DEFAULT_IMAGE_SIZE)
    if not isinstance(size, int):
        h, w = size
        if h != w:
            raise RepwamError(f"policy {policy}: image_size {size} is not square; Meta-World renders square frames")
        size = h
    if int(metadata.get("action_dim", len(ACTION_NAMES))) != len(ACTION_NAMES):
        raise RepwamError(f"policy {policy}: metadata action_dim is {metadata['action_dim']}, "
                          f"Meta-World's is {len(ACTION_NAMES)} ({', '.join(ACTION_NAMES)})")
    if int(metadata.get("state_dim") or len(STATE_NAMES)) != len(STATE_NAMES):  # 0: the policy reads no state
        raise RepwamError(f"policy {policy}: metadata state_dim is {metadata['state_dim']}, "
                          f"Meta-World's is {len(STATE_NAMES)} ({', '.join(STATE_NAMES)})")
    return {
        "cameras": cameras,
        "image_size": int(size),
        "goal_marker_scale": float(metadata.get("goal_marker_scale", DEFAULT_GOAL_MARKER_SCALE)),
        "instruction_key": metadata.get("instruction_key", INSTRUCTION_KEY),
    }


def evaluation_seeds(seed: int, tasks: list[str], episodes_per_task: int) -> dict[tuple[str, int], int]:
    """(task, episode index) -> layout seed, all >= EVAL_SEED_OFFSET."""
    return {(t, k): layout_seed(seed, t, k, eval=True) for t in tasks for k in range(episodes_per_task)}


def demonstration_seeds(dataset: str | Path, tasks: list[str], episodes_per_task: int) -> dict[tuple[str, int], int]:
    """(task, episode index) -> the layout seed of that task's k-th demonstration in `dataset`: a diagnostic (does
    the policy reproduce what it was trained on?), never the protocol's success rate."""
    from repwam.data.lerobot import LeRobotDataset

    by_task: dict[str, list[int]] = {}
    for ep in LeRobotDataset(dataset).episodes:
        if "seed" in ep and "env_task" in ep:
            by_task.setdefault(ep["env_task"], []).append(int(ep["seed"]))
    out = {}
    for t in tasks:
        have = by_task.get(t, [])
        if len(have) < episodes_per_task:
            raise RepwamError(f"{dataset} holds {len(have)} demonstrations of {t} (with their layout seeds); "
                              f"asked for {episodes_per_task} episodes per task on demonstration layouts")
        out.update({(t, k): have[k] for k in range(episodes_per_task)})
    return out


# ---------------------------------------------------------------- worker side: one policy and one env per process
_WORKER: dict[str, Any] = {}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _worker_policy(spec: PolicySpec) -> Policy:
    key = json.dumps(spec.to_json(), sort_keys=True)
    if _WORKER.get("spec") != key:
        _WORKER["policy"], _WORKER["spec"] = spec.build(), key
    return _WORKER["policy"]


def _probe(spec: PolicySpec) -> dict[str, Any]:
    """The policy's metadata, JSON-safe (it is stored in the evaluation config)."""
    return json.loads(json.dumps(_worker_policy(spec).metadata, default=lambda o: getattr(o, "tolist", lambda: str(o))()))


def _worker_env(task: str, env_cfg: dict, max_steps: int):
    from repwam.data.sim import MetaWorldEnv

    key = json.dumps([task, env_cfg, max_steps], sort_keys=True)
    if _WORKER.get("env_key") != key:
        _release_env()
        _WORKER["env"] = MetaWorldEnv(
            task,
            cameras=tuple(env_cfg["cameras"]),
            image_size=env_cfg["image_size"],
            goal_marker_scale=env_cfg["goal_marker_scale"],
            max_steps=max_steps,
        )
        _WORKER["env_key"] = key
    return _WORKER["env"]


def _release_env() -> None:
    if _WORKER.get("env") is not None:
        _WORKER["env"].close()
    _WORKER["env"] = _WORKER["env_key"] = None


def _checked_action(out: Any, policy: str, where: str) -> np.ndarray:
    if not isinstance(out, dict) or "actions" not in out:
        raise RepwamError(f"policy {policy} returned {type(out).__name__} without 'actions' {where}")
    try:
        actions = np.asarray(out["actions"], dtype=np.float64)
    except (TypeError, ValueError):
        raise RepwamError(f"policy {policy} returned non-numeric 'actions' {where}") from None
    if actions.ndim != 2 or actions.shape[0] < 1 or actions.shape[1] != len(ACTION_NAMES):
        raise RepwamError(
            f"policy {policy} returned actions of shape {actions.shape} {where}; Meta-World needs "
            f"(H, {len(ACTION_NAMES)}) with H >= 1 ({', '.join(ACTION_NAMES)})"
        )
    if not np.isfinite(actions).all():
        raise RepwamError(f"policy {policy} returned non-finite actions {where}: {actions[~np.isfinite(actions).all(1)][0]}")
    return np.clip(actions[0], -1.0, 1.0).astype(np.float32)


def _checked_imagined(x: Any, policy: str, where: str) -> np.ndarray | None:
    if x is None:
        return None
    arr = np.asarray(x)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or len(arr) == 0:
        raise RepwamError(
            f"policy {policy} returned 'imagined' of dtype {arr.dtype} and shape {arr.shape} {where}; "
            "expected uint8 (H, W, 3) or (n, H, W, 3)"
        )
    return arr.copy()


def _run_episode(spec: PolicySpec, env_cfg: dict, task: str, k: int, seed: int, max_steps: int,
                 video: str | None, record: str | None = None) -> dict[str, Any]:
    policy = _worker_policy(spec)
    env = _worker_env(task, env_cfg, max_steps)
    text = instruction(task)
    t_start = time.perf_counter()
    policy.reset(text)
    obs = env.reset(seed)
    views, imagined, infer_ms, dists = [], [], [], []
    est_err: dict[str, list[float]] = {"object": [], "goal": []}  # the policy's reading of the scene, per step
    rollout: dict[str, list] = {}  # with `record`: every step's observation, executed action, reward, success
    success, steps = False, max_steps
    goal = obs[-3:].astype(float)  # the goal-observable obs ends with the goal's xyz; it never moves in an episode
    for t in range(max_steps):
        images = env.render_all()  # the env was built with env_cfg["cameras"]
        observation: dict[str, Any] = {f"{IMAGE_PREFIX}{cam}": im for cam, im in images.items()}
        observation["observation.state"] = obs[: len(STATE_NAMES)].astype(np.float32)
        observation[ENV_STATE_KEY] = obs.astype(np.float32)
        observation[env_cfg["instruction_key"]] = text
        t0 = time.perf_counter()
        out = policy.infer(observation)
        infer_ms.append(1000 * (time.perf_counter() - t0))
        where = f"at step {t} of {task} episode {k} (seed {seed})"
        action = _checked_action(out, str(spec), where)
        if out.get("estimated_state") is not None:
            est = np.asarray(out["estimated_state"], dtype=np.float64)
            if est.shape != obs.shape:
                raise RepwamError(f"policy {spec} returned 'estimated_state' of shape {est.shape} {where}; expected "
                                  f"the simulator observation's {obs.shape}")
            for name, dims in est_err.items():
                dims.append(float(np.linalg.norm(est[STATE_GROUPS[name]] - obs[STATE_GROUPS[name]])))
        if video:
            views.append(np.concatenate(list(images.values()), axis=1))
            imagined.append(_checked_imagined(out.get("imagined"), str(spec), where))
        res = env.step(action)
        if record:
            for key, value in [*((f"{IMAGE_PREFIX}{cam}", im) for cam, im in images.items()),
                               ("observation.state", observation["observation.state"]),
                               (ENV_STATE_KEY, observation[ENV_STATE_KEY]),
                               ("action", action),  # as executed (clipped)
                               ("next.reward", np.float32([res.reward])), ("next.success", np.bool_([res.success]))]:
                rollout.setdefault(key, []).append(value)
        obs = res.obs
        if res.goal_dist is not None:
            dists.append(res.goal_dist)
        if res.success:
            success, steps = True, t + 1
            break
        if res.truncated:
            steps = t + 1
            break
    if video:
        views.append(np.concatenate([env.render(cam) for cam in env_cfg["cameras"]], axis=1))
        imagined.append(None)
        outcome = f"SUCCESS at step {steps}" if success else f"FAILED within {max_steps} steps"
        label = f"{task} #{k}, seed {seed}: {text}. {outcome}"
        if any(x is not None for x in imagined):
            label += " (right: the policy's imagined future)"
        _write_rollout_video(views, imagined, success, label, Path(video))
    if record:  # atomically, before the episode's line is written: a recorded line always has its rollout
        tmp = Path(record).with_suffix(".tmp.npz")
        np.savez(tmp, **{key: np.stack(v) for key, v in rollout.items()})
        os.replace(tmp, record)
    ms = np.asarray(infer_ms)
    return {
        "task": task,
        "episode": k,
        "seed": seed,
        "success": success,
        "steps": steps,
        "infer_calls": len(ms),
        "infer_ms_mean": round(float(ms.mean()), 3),
        "infer_ms_p95": round(float(np.percentile(ms, 95)), 3),
        "wall_s": round(time.perf_counter() - t_start, 3),
        "video": Path(video).name if video else None,
        # Where the episode ended (m, world frame), for telling a policy that ignores the goal from an imprecise one:
        # the env's distance from what the task moves to its target (min over the episode, and at the end).
        "goal_dist_min": round(min(dists), 4) if dists else None,
        "goal_dist_final": round(dists[-1], 4) if dists else None,
        "final_hand": [round(float(v), 4) for v in obs[:3]],
        "final_obj": [round(float(v), 4) for v in obs[4:7]],
        "goal": [round(float(v), 4) for v in goal],
        # the policy's own reading of the scene against the simulator's (mean over the steps it returned one)
        "estimate_err_cm": ({k: round(100 * float(np.mean(v)), 2) for k, v in est_err.items()}
                            if est_err["goal"] else None),
    }


def _write_rollout_video(views: list[np.ndarray], imagined: list[np.ndarray | None], success: bool, label: str,
                         path: Path) -> None:
    """Real frames, the imagined future beside them (held until the next), and the outcome framed on the last one."""
    from PIL import Image

    from repwam.data.inspect import annotate, write_video

    size = views[0].shape[0]
    strips, held = [], None
    widest = max((len(x) for x in imagined if x is not None), default=0)
    for x in imagined:
        if x is not None:
            held = np.concatenate(
                [f if f.shape[:2] == (size, size) else np.asarray(Image.fromarray(f).resize((size, size))) for f in x], 1
            )
        strips.append(held)
    frames = []
    for view, strip in zip(views, strips):
        if widest:
            pad = np.zeros((size, widest * size, 3), np.uint8)
            if strip is not None:
                pad[:, : strip.shape[1]] = strip
            view = np.concatenate([view, np.full((size, 1, 3), 255, np.uint8), pad], 1)
        frames.append(view)
    last, color = frames[-1].copy(), (0, 200, 0) if success else (220, 0, 0)
    last[[0, -1]], last[:, [0, -1]] = color, color
    frames += [last] * int(FPS * VIDEO_HOLD_S)
    frames = np.stack(frames)
    width = frames.shape[2]
    scale = max(1, min(max(4, VIDEO_MIN_WIDTH // width), VIDEO_MAX_WIDTH // width))
    tmp = path.with_name(f".{path.stem}.tmp.mp4")
    write_video(annotate(frames, label, scale=scale), tmp, FPS)
    os.replace(tmp, path)


# ---------------------------------------------------------------- statistics and reports
def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ((0, 1) when n = 0)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def _group(records: list[dict]) -> dict[str, Any]:
    n, s = len(records), sum(bool(r["success"]) for r in records)
    calls = sum(r["infer_calls"] for r in records)
    return {
        "episodes": n,
        "successes": s,
        "success_rate": s / n,
        "ci95": list(wilson_interval(s, n)),
        "mean_length": float(np.mean([r["steps"] for r in records])),
        "infer_ms_mean": sum(r["infer_ms_mean"] * r["infer_calls"] for r in records) / max(calls, 1),
        "infer_ms_p95_worst": max(r["infer_ms_p95"] for r in records),
        "goal_dist_final_mean": _mean_of(records, "goal_dist_final"),
        **_estimate_err(records),
    }


def _estimate_err(records: list[dict]) -> dict[str, Any]:
    """The mean closed-loop estimate errors (cm) over the episodes that have them (policies that return
    'estimated_state'); nothing for the others."""
    errs = [r["estimate_err_cm"] for r in records if r.get("estimate_err_cm")]
    if not errs:
        return {}
    return {"estimate_err_cm": {k: round(float(np.mean([e[k] for e in errs])), 2) for k in errs[0]}}


def _mean_of(records: list[dict], key: str) -> float | None:
    """The mean of `key` over the records that have it (older result files lack the goal distances)."""
    vals = [r[key] for r in records if r.get(key) is not None]
    return round(float(np.mean(vals)), 4) if vals else None


def summarize(records: list[dict], tasks: list[str]) -> dict[str, Any]:
    """Per-task rows and the mean row. The mean's rate is the mean of task rates; its interval is the Wilson
    interval over all episodes pooled (equal episodes per task make the two rates agree)."""
    per = {t: _group([r for r in records if r["task"] == t]) for t in tasks}
    mean = _group(records)
    mean["success_rate"] = float(np.mean([p["success_rate"] for p in per.values()]))
    return {"tasks": per, "mean": mean}


def _cm(metres: float | None) -> str:
    return "–" if metres is None else f"{100 * metres:.1f}"


def format_table(results: dict[str, Any]) -> str:
    lines = [
        f"policy: {results['policy']}  (seed {results['seed']}, {results['episodes_per_task']} episodes per task, "
        f"limit {results['settings']['max_steps']} steps)",
        "",
        "| task | success | 95% CI | episodes | mean length | final distance to goal (cm) | "
        "policy ms/call (mean, worst p95) |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = list(results["tasks"].items()) + [("**mean**", results["mean"])]
    for name, r in rows:
        lo, hi = r["ci95"]
        lines.append(
            f"| {name} | {100 * r['success_rate']:.1f}% | {100 * lo:.1f}–{100 * hi:.1f} | {r['episodes']} | "
            f"{r['mean_length']:.0f} | {_cm(r.get('goal_dist_final_mean'))} | "
            f"{r['infer_ms_mean']:.2f}, {r['infer_ms_p95_worst']:.2f} |"
        )
    return "\n".join(lines)


def plot_success(results: dict[str, Any], path: str | Path) -> Path:
    """Per-task success rate with Wilson 95% error bars, and the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(results["tasks"].items()) + [("mean", results["mean"])]
    rate = np.array([r["success_rate"] for _, r in rows])
    ci = np.array([r["ci95"] for _, r in rows])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(rows) + 1.5), 3.8))
    colors = ["tab:blue"] * (len(rows) - 1) + ["tab:orange"]
    ax.bar(range(len(rows)), 100 * rate, color=colors,
           yerr=100 * np.stack([rate - ci[:, 0], ci[:, 1] - rate]).clip(0), capsize=3)
    ax.set_xticks(range(len(rows)), [n.removesuffix("-v3") for n, _ in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("success % (95% Wilson CI)")
    ax.set_title(f"{results['policy']}"[:90], fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- driver
def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _check_settings(stored: dict | None, current: dict, out_dir: Path) -> None:
    if stored is None:
        return
    diff = {k: (stored.get(k), v) for k, v in current.items() if stored.get(k) != v}
    if diff:
        shown = "; ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise RepwamError(
            f"{out_dir} holds an evaluation with other settings ({shown}); rerun with those settings to resume it, "
            "or choose another --out"
        )


def _load_episodes(path: Path) -> dict[tuple[str, int], dict]:
    """Finished episodes by (task, index). A line torn by a crash is dropped, and the file rewritten without it."""
    if not path.exists():
        return {}
    records, torn = {}, False
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
            records.setdefault((r["task"], int(r["episode"])), r)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            torn = True
    if torn:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records.values()))
        os.replace(tmp, path)
    return records


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


class _InProcess:
    """The executor interface, running each call at submit time in this process (workers=0)."""

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as e:
            fut.set_exception(e)
        return fut

    def shutdown(self, cancel_futures: bool = False) -> None:
        _release_env()
        _WORKER.pop("policy", None)
        _WORKER.pop("spec", None)


def evaluate_policy(
    make_policy: PolicySpec,
    *,
    tasks: str | list[str],
    episodes_per_task: int,
    seed: int,
    out_dir: str | Path,
    workers: int = 2,
    max_steps: int | None = None,
    videos_per_task: int = 1,
    progress: bool = True,
    demo_layouts: str | Path | None = None,
    record: bool = False,
) -> dict[str, Any]:
    """Run `episodes_per_task` closed-loop episodes of every task (resuming a previous run in `out_dir`) and
    summarise them. Cameras and image size come from the policy's metadata. Returns the results (also in
    `out_dir/results.json`); `max_steps=None` is Meta-World's limit of 500 steps. `demo_layouts` (a generated
    dataset) runs the episodes on its demonstrations' layouts instead (a diagnostic: `seed` is then unused).
    `record` keeps every episode run from now on (frames of the policy's cameras, robot and simulator state, the
    executed actions) and writes the recorded ones as a LeRobot dataset, `out_dir/rollouts` (its episodes' `success`
    in meta/episodes): the states this policy visits, with their simulator labels (e.g. to refit a state estimator
    on them, `repwam train estimator --data DEMOS --data out_dir/rollouts`)."""
    spec = make_policy
    tasks = resolve_tasks(tasks)
    max_steps = META_WORLD_MAX_STEPS if max_steps is None else int(max_steps)
    for name, value, low in (("episodes per task", episodes_per_task, 1), ("seed", seed, 0), ("workers", workers, 0),
                             ("max steps", max_steps, 1), ("videos per task", videos_per_task, 0)):
        if value < low:
            raise RepwamError(f"{name} must be >= {low}, got {value}")
    out_dir = Path(out_dir)
    try:
        (out_dir / "videos").mkdir(parents=True, exist_ok=True)
        if record:
            (out_dir / ROLLOUTS_STAGING).parent.mkdir(exist_ok=True)
    except OSError as e:
        raise RepwamError(f"cannot create {out_dir}: {e.strerror}") from None
    config_path, episodes_path = out_dir / CONFIG_FILE, out_dir / EPISODES_FILE
    stored = json.loads(config_path.read_text()) if config_path.exists() else None
    settings: dict[str, Any] = {"protocol": PROTOCOL, "policy": spec.to_json(), "seed": seed, "max_steps": max_steps}
    # None: the evaluation layouts (also what an eval_config.json from before this setting means)
    settings["layouts"] = None if demo_layouts is None else f"demonstrations of {Path(demo_layouts).resolve()}"
    _check_settings(stored, settings, out_dir)  # before starting any worker
    records = _load_episodes(episodes_path)
    if records and stored is None:
        raise RepwamError(f"{episodes_path} exists without {config_path.name}: choose another --out")
    seeds = evaluation_seeds(seed, tasks, episodes_per_task) if demo_layouts is None else \
        demonstration_seeds(demo_layouts, tasks, episodes_per_task)
    todo = deque(key for key in seeds if key not in records)
    resumed = len(seeds) - len(todo)

    t0 = time.time()
    if todo:
        executor = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) \
            if workers else _InProcess()
        try:
            metadata = executor.submit(_probe, spec).result()
            env_cfg = env_settings(metadata, str(spec))
            settings.update(env=env_cfg, policy_metadata=metadata)
            _check_settings(stored, settings, out_dir)
            _write_json(config_path, settings)
            _run_all(executor, spec, env_cfg, todo, seeds, records, max_steps, videos_per_task, out_dir,
                     workers, total=len(seeds), resumed=resumed, progress=progress, keep_rollouts=record)
        except BrokenProcessPool:
            raise RepwamError(
                f"a worker process died while evaluating {spec} (a crash in the simulator or the policy); finished "
                f"episodes are kept in {episodes_path}: rerun the same command to resume"
            ) from None
        finally:
            executor.shutdown(cancel_futures=True)
        stored = settings
    wall = time.time() - t0

    chosen = [records[key] for key in seeds]
    results = {
        "policy": str(spec),
        "seed": seed,
        "layouts": settings["layouts"] or "evaluation",
        "episodes_per_task": episodes_per_task,
        "settings": stored,
        **summarize(chosen, tasks),
        "episodes_run": len(seeds) - resumed,
        "episodes_resumed": resumed,
        "wall_s": round(wall, 1),
        "videos": sorted(str(out_dir / "videos" / r["video"]) for r in chosen if r.get("video")),
        "out_dir": str(out_dir),
    }
    if record:
        results["rollouts"] = write_rollouts(out_dir, [records[key] for key in seeds], stored, str(spec))
    _write_json(out_dir / RESULTS_FILE, results)
    (out_dir / "table.md").write_text(format_table(results) + "\n")
    results["plot"] = str(plot_success(results, out_dir / "success.png"))
    return results


def write_rollouts(out_dir: Path, chosen: list[dict], settings: dict, policy: str) -> dict[str, Any]:
    """The recorded episodes among `chosen`, in order, as the LeRobot dataset `out_dir/rollouts` (rewritten)."""
    from repwam.data.generate import features
    from repwam.data.lerobot import LeRobotWriter

    env = settings["env"]
    staged = [(r, ROLLOUTS_STAGING.format(task=r["task"], k=r["episode"])) for r in chosen]
    kept = [(r, out_dir / f) for r, f in staged if (out_dir / f).exists()]
    root = out_dir / "rollouts"
    if kept:
        with LeRobotWriter(root, fps=FPS, features=features(tuple(env["cameras"]), env["image_size"]),
                           robot_type="sawyer", overwrite=True) as writer:
            for r, path in kept:
                with np.load(path) as ep:
                    writer.add_episode({key: ep[key] for key in ep.files}, instruction(r["task"]),
                                       extra_episode_meta={"success": bool(r["success"]), "seed": int(r["seed"]),
                                                           "env_task": r["task"], "policy": policy})
    return {"path": str(root) if kept else None, "episodes": len(kept),
            "not_recorded": len(chosen) - len(kept)}  # run before --record was on


def _run_all(executor, spec: PolicySpec, env_cfg: dict, todo: deque, seeds: dict, records: dict, max_steps: int,
             videos_per_task: int, out_dir: Path, workers: int, *, total: int, resumed: int, progress: bool,
             keep_rollouts: bool = False) -> None:
    """Keep up to two episodes per worker in flight (task-major, so workers mostly reuse their env); record each
    finished episode at once. On an error, finish the episodes already running, record them, then raise."""
    episodes_path = out_dir / EPISODES_FILE
    pending: dict[Future, tuple[str, int]] = {}
    error: BaseException | None = None
    successes = sum(bool(records[k]["success"]) for k in seeds if k in records)
    bar = tqdm(total=total, initial=resumed, desc="closed-loop episodes", unit="ep", disable=not progress)
    try:
        while todo or pending:
            while todo and error is None and len(pending) < max(1, 2 * workers):
                task, k = todo.popleft()
                video = str(out_dir / "videos" / f"{task}_ep{k:03d}.mp4") if k < videos_per_task else None
                rollout = str(out_dir / ROLLOUTS_STAGING.format(task=task, k=k)) if keep_rollouts else None
                fut = executor.submit(_run_episode, spec, env_cfg, task, k, seeds[task, k], max_steps, video, rollout)
                pending[fut] = (task, k)
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                task, k = pending.pop(fut)
                if fut.cancelled():
                    continue
                if fut.exception() is not None:
                    if error is None:
                        error = fut.exception()
                        todo.clear()
                        for other in pending:
                            other.cancel()
                    continue
                record = fut.result()
                _append(episodes_path, record)
                records[task, k] = record
                successes += bool(record["success"])
                bar.set_postfix(success=f"{successes}/{bar.n + 1}", refresh=False)
                bar.update(1)
    finally:
        bar.close()
    if error is not None:
        if isinstance(error, RepwamError):
            raise RepwamError(f"{error} (finished episodes are kept in {episodes_path}; rerun to resume)") from error
        error.add_note(f"finished episodes are kept in {episodes_path}; rerun to resume")
        raise error
