"""Meta-World v3 environments with offscreen rendering, per-seed layouts and the scripted experts.

Rendering (measured on a 2-core machine with no GPU and no display, see DESIGN.md):
- `MUJOCO_GL=osmesa` (Debian `libosmesa6`) is the default when nothing else is set; EGL needs a GPU/DRI device.
  Set `MUJOCO_GL=egl` yourself on a GPU machine.
- Each env owns one `mujoco.Renderer`, which makes its own GL context current on every render, and closes it
  with the env: several live renderers in one process otherwise give garbled frames.
- Shadows/reflections/anti-aliasing off (`offsamples = 0`) before the first render: ~10x faster.
- The `corner*` cameras render upside down: frames are rotated by 180 degrees.
- Goal markers (`goal*` sites: purely visual, they never collide) are drawn `goal_marker_scale` times larger,
  so that at 64x64 the goal that the instruction refers to is a few pixels wide, not one.

Layouts: in metaworld 3.1.1 `env.reset(seed=...)` does not move objects or goals. A per-seed layout needs
`_freeze_rand_vec = False; seeded_rand_vec = True; env.seed(s); env.reset()`, then `mj_forward`: reset places the
goal sites after its last forward pass, and the first frame would otherwise show the previous layout's goal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from repwam.data.tasks import instruction
from repwam.errors import RepwamError

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
DEFAULT_CAMERA = "corner3"
DEFAULT_IMAGE_SIZE = 64
# Seeds below this offset are for demonstrations, seeds at or above it for evaluation: the two never overlap.
EVAL_SEED_OFFSET = 1_000_000

# Names of the 39-d Meta-World observation (goal-observable variant): current and previous frame, then goal.
_FRAME = ["hand_x", "hand_y", "hand_z", "gripper_open"] + [
    f"obj{i}_{c}" for i in (0, 1) for c in ("x", "y", "z", "qw", "qx", "qy", "qz")
]
OBS_NAMES = _FRAME + [f"prev_{n}" for n in _FRAME] + ["goal_x", "goal_y", "goal_z"]
STATE_NAMES = ["hand_x", "hand_y", "hand_z", "gripper_open"]
ACTION_NAMES = ["dx", "dy", "dz", "grip"]
FPS = 80  # Meta-World control rate: timestep 2.5 ms x frame_skip 5


def _import_metaworld():
    try:
        import metaworld  # noqa: F401
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
        from metaworld.policies import ENV_POLICY_MAP
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RepwamError(f"Meta-World is not installed ({e}); install the extra: pip install 'repwam[sim]'") from e
    return ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE, ENV_POLICY_MAP


@dataclass
class StepResult:
    obs: np.ndarray  # (39,) float64
    reward: float
    success: bool
    truncated: bool
    # Meta-World's own distance (m) from what the task moves to its target: the hand for reach-like tasks, the
    # object for push / pick-place / peg-insert-side (`info["obj_to_target"]`); None where a task reports none.
    goal_dist: float | None = None


def check_cameras(cameras) -> tuple[str, ...]:
    """A non-empty tuple of distinct Meta-World camera names (a comma-separated string is split)."""
    if isinstance(cameras, str):
        cameras = [c.strip() for c in cameras.split(",") if c.strip()]
    cameras = tuple(cameras)
    bad = [c for c in cameras if c not in CAMERAS]
    if not cameras or bad:
        raise RepwamError(f"unknown camera(s) {bad or cameras!r}; Meta-World cameras: {', '.join(CAMERAS)}")
    if len(set(cameras)) != len(cameras):
        raise RepwamError(f"cameras {cameras} name one camera twice")
    return cameras


class MetaWorldEnv:
    """One Meta-World task seen by fixed cameras (the first is `camera`). `reset(seed)` gives that seed's layout."""

    def __init__(
        self,
        task: str,
        *,
        camera: str = DEFAULT_CAMERA,
        cameras: tuple[str, ...] | None = None,
        image_size: int = DEFAULT_IMAGE_SIZE,
        goal_marker_scale: float = 3.0,
        max_steps: int = 500,
    ):
        import mujoco

        envs, policies = _import_metaworld()
        self.cameras = check_cameras(cameras or (camera,))
        if f"{task}-goal-observable" not in envs:
            raise RepwamError(f"unknown Meta-World task {task!r}")
        self.task, self.camera, self.image_size = task, self.cameras[0], image_size
        self.instruction = instruction(task)
        self.env = envs[f"{task}-goal-observable"]()
        self.env.max_path_length = max_steps
        self.max_steps = max_steps
        self.expert = policies[task]()
        model = self.env.model
        model.vis.quality.offsamples = 0
        for i in range(model.nsite):
            if model.site(i).name.startswith("goal"):
                model.site_size[i] *= goal_marker_scale
        self._renderer = mujoco.Renderer(model, image_size, image_size)
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX):
            self._renderer.scene.flags[flag] = False
        self._obs: np.ndarray | None = None

    def reset(self, seed: int) -> np.ndarray:
        import mujoco

        env = self.env
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env.seed(int(seed))
        obs, _ = env.reset()
        # Meta-World's reset moves the goal sites (and some bodies: peg-insert-side's box, drawer-open's drawer)
        # after its last forward pass, so without this the first frame rendered would show the previous layout's
        # goal. Kinematics only: the obs and the dynamics are unchanged.
        mujoco.mj_forward(env.model, env.data)
        self._obs = obs
        return obs

    def render(self, camera: str | None = None) -> np.ndarray:
        """(H, W, 3) uint8 from `camera` (default: the first), the right way up."""
        camera = camera or self.camera
        if camera not in CAMERAS:
            raise RepwamError(f"unknown camera {camera!r}; Meta-World cameras: {', '.join(CAMERAS)}")
        self._renderer.update_scene(self.env.data, camera=camera)
        frame = self._renderer.render()
        if camera.startswith("corner"):
            frame = frame[::-1, ::-1]
        return np.ascontiguousarray(frame)

    def render_all(self) -> dict[str, np.ndarray]:
        """{camera: (H, W, 3) uint8} for every camera of the env."""
        return {cam: self.render(cam) for cam in self.cameras}

    def expert_action(self) -> np.ndarray:
        assert self._obs is not None, "call reset() first"
        return np.clip(self.expert.get_action(self._obs), -1.0, 1.0).astype(np.float32)

    def step(self, action: np.ndarray) -> StepResult:
        obs, reward, _, truncated, info = self.env.step(np.asarray(action, dtype=np.float32))
        self._obs = obs
        dist = info.get("obj_to_target")
        return StepResult(obs=obs, reward=float(reward), success=bool(info["success"]), truncated=bool(truncated),
                          goal_dist=None if dist is None else float(dist))

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def rollout_expert(env: MetaWorldEnv, seed: int, *, steps_after_success: int = 8,
                   action_noise: float = 0.0) -> dict[str, np.ndarray | bool]:
    """Run the scripted expert from `seed`'s layout. Frame t is observed before action t is taken.

    `action_noise` > 0 collects DART-style demonstrations (Laskey et al., 2017): the env executes the expert's action
    plus Gaussian noise of that std on the hand's x, y, z (the gripper is left alone), clipped to [-1, 1], while
    "action" records the expert's own action at the state reached. The expert is closed-loop, so the episodes show it
    recovering from the small deviations a learned policy makes; "executed_action" records what was executed. The
    noise is seeded by `seed`, so the same layout gives the same episode.
    Stops `steps_after_success` steps after the first success, or at `env.max_steps`.
    Returns arrays with leading dim T and `success`; "images" holds one (T, H, W, 3) array per camera of the env,
    "image" the first camera's.
    """
    if not action_noise >= 0:
        raise RepwamError(f"action_noise must be >= 0, got {action_noise}")
    rng = np.random.default_rng([seed, 1])
    obs = env.reset(seed)
    frames, states, full, actions, executed, rewards, successes = [], [], [], [], [], [], []
    first_success = None
    for t in range(env.max_steps):
        frames.append(env.render_all())
        states.append(obs[:4])
        full.append(obs)
        action = env.expert_action()
        act = action
        if action_noise > 0:
            act = action.copy()
            act[:3] = np.clip(act[:3] + rng.normal(0.0, action_noise, 3), -1.0, 1.0)
        res = env.step(act)
        actions.append(action)
        executed.append(act)
        rewards.append(res.reward)
        successes.append(res.success)
        obs = res.obs
        if res.success and first_success is None:
            first_success = t
        if first_success is not None and t - first_success >= steps_after_success:
            break
        if res.truncated:
            break
    images = {cam: np.stack([f[cam] for f in frames]) for cam in env.cameras}  # each (T, H, W, 3) uint8
    return {
        "images": images,
        "image": images[env.camera],  # the first camera's (the same array)
        "state": np.asarray(states, np.float32),  # (T, 4)
        "env_state": np.asarray(full, np.float32),  # (T, 39)
        "action": np.asarray(actions, np.float32),  # (T, 4) the expert's
        "executed_action": np.asarray(executed, np.float32),  # (T, 4) what the env executed (action + noise)
        "reward": np.asarray(rewards, np.float32),  # (T,)
        "success": np.asarray(successes, bool),  # (T,) success after taking action t
        "episode_success": first_success is not None,
    }
