"""`repwam data generate`: Meta-World expert demonstrations written as a LeRobot v3.0 dataset.

How it runs
- Each (task, k) attempt has its own layout seed, drawn from (base seed, task, k) so tasks do not share layouts;
  demonstration seeds are < EVAL_SEED_OFFSET, evaluation seeds >= it.
- Attempts run in worker processes (one env and one renderer per process at a time: the safe pattern for
  offscreen GL). For each task, attempts continue until `episodes_per_task` successes (or `max_attempts_factor`
  times that many attempts); failed expert episodes are not kept and are counted in the report.
- Every finished attempt is staged at once in `<out>.partial/` (an .npz per success, a marker per failure),
  so an interrupted run resumes where it stopped. The dataset is then assembled into `<out>/` and
  `meta/info.json` is written last: a directory without it is never mistaken for a complete dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from repwam.data.sim import (
    ACTION_NAMES,
    DEFAULT_CAMERA,
    DEFAULT_IMAGE_SIZE,
    EVAL_SEED_OFFSET,
    FPS,
    OBS_NAMES,
    STATE_NAMES,
    check_cameras,
)
from repwam.data.tasks import instruction, resolve_tasks
from repwam.errors import RepwamError

GENERATION_META = "meta/repwam_generation.json"


@dataclass
class GenerateConfig:
    tasks: list[str]
    episodes_per_task: int = 5
    seed: int = 0
    cameras: tuple[str, ...] = (DEFAULT_CAMERA,)  # one video feature each, rendered at the same steps
    image_size: int = DEFAULT_IMAGE_SIZE
    max_steps: int = 500
    steps_after_success: int = 8
    goal_marker_scale: float = 3.0
    max_attempts_factor: int = 3
    action_noise: float = 0.0  # DART: std of the noise added to the executed hand action (see rollout_expert)
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))


def layout_seed(base_seed: int, task: str, k: int, *, eval: bool = False) -> int:
    """Seed of attempt k of `task`. Disjoint ranges for demonstrations and evaluation."""
    from repwam.data.tasks import ALL_TASKS

    state = np.random.SeedSequence([base_seed, ALL_TASKS.index(task), k]).generate_state(1)[0]
    return int(state % EVAL_SEED_OFFSET) + (EVAL_SEED_OFFSET if eval else 0)


def features(cameras: tuple[str, ...] | str, image_size: int, *, executed: bool = False) -> dict[str, dict]:
    """LeRobot feature spec of a generated dataset: one video per camera, then state, simulator state, action (and,
    with `executed`, the action the env executed: noisy demonstrations)."""
    cameras = (cameras,) if isinstance(cameras, str) else cameras
    video = {"dtype": "video", "shape": (image_size, image_size, 3), "names": ["height", "width", "channels"]}
    extra = {"action.executed": {"dtype": "float32", "shape": (len(ACTION_NAMES),), "names": ACTION_NAMES}}
    return {
        **{f"observation.images.{cam}": dict(video) for cam in cameras},
        "observation.state": {"dtype": "float32", "shape": (len(STATE_NAMES),), "names": STATE_NAMES},
        "observation.environment_state": {"dtype": "float32", "shape": (len(OBS_NAMES),), "names": OBS_NAMES},
        "action": {"dtype": "float32", "shape": (len(ACTION_NAMES),), "names": ACTION_NAMES},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.success": {"dtype": "bool", "shape": (1,), "names": None},
        **(extra if executed else {}),
    }


# ---------------------------------------------------------------- worker side (one env per process)
_ENV = None


def _attempt(cfg: dict, task: str, k: int, seed: int, staging: str) -> tuple[str, int, int, bool, int]:
    global _ENV
    from repwam.data.sim import MetaWorldEnv, rollout_expert

    if _ENV is None or _ENV.task != task:
        if _ENV is not None:
            _ENV.close()
        _ENV = MetaWorldEnv(
            task,
            cameras=tuple(cfg["cameras"]),
            image_size=cfg["image_size"],
            goal_marker_scale=cfg["goal_marker_scale"],
            max_steps=cfg["max_steps"],
        )
    ep = rollout_expert(_ENV, seed, steps_after_success=cfg["steps_after_success"], action_noise=cfg["action_noise"])
    path = Path(staging) / task / f"{k:05d}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if ep["episode_success"]:
        tmp = path.with_suffix(".tmp.npz")
        arrays = {key: v for key, v in ep.items() if key not in ("episode_success", "images", "image")}
        np.savez(tmp, **arrays, **{f"image.{cam}": v for cam, v in ep["images"].items()}, seed=seed)
        os.replace(tmp, path.with_suffix(".npz"))
    else:
        path.with_suffix(".failed").write_text(json.dumps({"seed": seed, "length": len(ep["action"])}))
    return task, k, seed, bool(ep["episode_success"]), len(ep["action"])


# ---------------------------------------------------------------- driver
def _staged(staging: Path, task: str) -> dict[int, bool]:
    """k -> success for the attempts of `task` already staged."""
    done: dict[int, bool] = {}
    for p in (staging / task).glob("*"):
        if p.suffix == ".npz" and not p.name.endswith(".tmp.npz"):
            done[int(p.stem)] = True
        elif p.suffix == ".failed":
            done[int(p.stem)] = False
    return done


def generate(out: str | Path, cfg: GenerateConfig, *, overwrite: bool = False) -> dict:
    """Generate demonstrations into `out` (a LeRobot v3.0 dataset). Returns the generation report."""
    from repwam.data.lerobot import LeRobotWriter

    out = Path(out)
    tasks = resolve_tasks(cfg.tasks)
    cfg.cameras = check_cameras(cfg.cameras)
    if cfg.episodes_per_task < 1:
        raise RepwamError(f"--episodes-per-task must be >= 1, got {cfg.episodes_per_task}")
    if not 0 <= cfg.action_noise <= 1:
        raise RepwamError(f"--action-noise must be in [0, 1] (a std in action units), got {cfg.action_noise}")
    staging = out.parent / f"{out.name}.partial"
    if (out / "meta" / "info.json").exists():
        if not overwrite:
            raise RepwamError(f"{out} already holds a complete dataset; pass --overwrite to replace it")
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()) and not staging.exists():
        raise RepwamError(f"{out} exists, is not empty and is not an interrupted `repwam data generate`; choose another --out")
    try:
        staging.mkdir(parents=True, exist_ok=True)
        (staging / ".write-test").touch()
    except OSError as e:
        raise RepwamError(f"cannot write to {staging.parent}: {e.strerror}") from None
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items() if k not in ("workers", "tasks")}
    settings_file = staging / "settings.json"
    if settings_file.exists():
        previous = json.loads(settings_file.read_text())
        if previous != settings:
            raise RepwamError(
                f"{staging} holds an interrupted run with other settings {previous}; "
                f"rerun with those settings or delete {staging}"
            )
    settings_file.write_text(json.dumps(settings, indent=1))

    wcfg = {k: settings[k] for k in ("cameras", "image_size", "goal_marker_scale", "max_steps", "steps_after_success",
                                      "action_noise")}
    n, max_attempts = cfg.episodes_per_task, cfg.episodes_per_task * cfg.max_attempts_factor
    state = {t: _staged(staging, t) for t in tasks}
    resumed = sum(v for s in state.values() for v in s.values())
    next_k = {t: max(state[t], default=-1) + 1 for t in tasks}

    def needs_more(t: str, in_flight: int) -> bool:
        ok = sum(state[t].values())
        return ok + in_flight < n and next_k[t] < max_attempts

    t0, steps = time.time(), 0
    bar = tqdm(total=n * len(tasks), initial=min(resumed, n * len(tasks)), desc="demonstrations", unit="ep")
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx) as pool:
        pending: dict = {}
        while True:
            # keep up to 2 attempts per worker in flight, task-major so workers mostly reuse their env
            for t in tasks:
                while len(pending) < 2 * cfg.workers and needs_more(t, sum(1 for v in pending.values() if v == t)):
                    k = next_k[t]
                    next_k[t] += 1
                    fut = pool.submit(_attempt, wcfg, t, k, layout_seed(cfg.seed, t, k), str(staging))
                    pending[fut] = t
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                pending.pop(fut)
                t, k, _seed, ok, length = fut.result()
                state[t][k] = ok
                steps += length
                if ok and sum(state[t].values()) <= n:
                    bar.update(1)
                bar.set_postfix(steps_per_s=f"{steps / (time.time() - t0):.0f}")
    bar.close()
    gen_seconds = time.time() - t0

    # ---- assemble: first n successes of each task, in attempt order
    report = {"tasks": {}, "settings": settings, "generation_seconds": round(gen_seconds, 1)}
    writer = LeRobotWriter(
        out, fps=FPS, features=features(cfg.cameras, cfg.image_size, executed=cfg.action_noise > 0), robot_type="sawyer", overwrite=True
    )
    for t in tqdm(tasks, desc="writing LeRobot v3.0", unit="task"):
        kept = [k for k in sorted(state[t]) if state[t][k]][:n]
        failed = [k for k in sorted(state[t]) if not state[t][k] and (not kept or k < kept[-1])]
        report["tasks"][t] = {"kept": len(kept), "expert_failures": len(failed)}
        if len(kept) < n:
            report["tasks"][t]["short_by"] = n - len(kept)
        for k in kept:
            with np.load(staging / t / f"{k:05d}.npz") as ep:
                frames = {
                    **{f"observation.images.{cam}": ep[f"image.{cam}"] for cam in cfg.cameras},
                    "observation.state": ep["state"],
                    "observation.environment_state": ep["env_state"],
                    "action": ep["action"],
                    "next.reward": ep["reward"][:, None],
                    "next.success": ep["success"][:, None],
                    **({"action.executed": ep["executed_action"]} if cfg.action_noise > 0 else {}),
                }
                writer.add_episode(
                    frames, instruction(t), extra_episode_meta={"success": True, "seed": int(ep["seed"]), "env_task": t}
                )
    report["episodes"] = sum(r["kept"] for r in report["tasks"].values())
    report["expert_failures"] = sum(r["expert_failures"] for r in report["tasks"].values())
    report["env_steps"] = steps  # of the attempts run now (a resumed run does not repeat staged ones)
    report["resumed_episodes"] = resumed  # staged successes of an interrupted run, reused
    report["env_steps_per_s"] = round(steps / max(gen_seconds, 1e-9), 1)
    (out / "meta").mkdir(parents=True, exist_ok=True)
    (out / GENERATION_META).write_text(json.dumps(report, indent=1))
    writer.finalize()  # writes meta/info.json last
    shutil.rmtree(staging)
    return report
