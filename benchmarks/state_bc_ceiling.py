"""What does behaviour cloning from the same demonstrations reach when it is *told* the simulator state? (A ceiling.)

RepWAM and the plain policy read the goal and the objects from one 64-px camera. This script takes the camera away
and gives a policy the privileged 39-d Meta-World observation instead (hand, gripper, both objects, their previous
positions and the goal), then clones the same demonstrations with a plain MLP and runs it in the same closed-loop
harness (`repwam.eval.closed_loop.evaluate_policy`: the same evaluation layouts, seeds >= 1,000,000, success within
500 steps). If this scores far above the image policies, what they lack is perception; if it does not, behaviour
cloning from this many demonstrations is the limit whatever the encoder.

The policy: task one-hot + the normalised 39-d state -> a chunk of `--chunk` normalised actions (MSE; the scripted
expert is a deterministic function of the state), executed whole before the next call, as the image policies
execute theirs. Rows: (chunk, seed[, noise]); each saves its episodes as it goes (rerun to resume or add rows).

`--noise-cm`: how precisely must a policy perceive? Each model is also run with a perception error on the object's
and the goal's positions (a fixed offset per episode, see StateBCPolicy); `noise.png` plots success against it.

    python benchmarks/state_bc_ceiling.py --data outputs/hard60/data/reach-v3+push-v3+pick-place-v3+peg-insert-side-v3 \
        --chunks 1,4 --seeds 0,1,2 --episodes 20 --noise-cm 0,1,2,4
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from repwam.data.lerobot import LeRobotDataset
from repwam.data.sim import ACTION_NAMES, STATE_NAMES
from repwam.data.tasks import instruction
from repwam.eval.closed_loop import ENV_STATE_KEY, PolicySpec, evaluate_policy
from repwam.policy.base import INSTRUCTION_KEY

OUT = Path(__file__).parent / "results" / "state_bc_ceiling"
CAMERA_KEY = "observation.images.corner3"  # the harness renders a camera either way; this policy never reads it
OBS_NAMES = range(39)  # the goal-observable Meta-World observation the policy reads


def load_demos(root: str) -> tuple[list[str], list[dict[str, np.ndarray]]]:
    ds = LeRobotDataset(root)
    episodes, tasks = [], []
    for e in range(ds.num_episodes):
        d = ds.episode_data(e)
        task = ds.episode_task(e)
        if task not in tasks:
            tasks.append(task)
        episodes.append({"state": d[ENV_STATE_KEY].astype(np.float32), "action": d["action"].astype(np.float32),
                         "task": tasks.index(task)})
    return tasks, episodes


def make_samples(episodes: list[dict], chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 39) states, (N,) task ids, (N, chunk, 4) the next `chunk` actions (the last one repeated past the end)."""
    xs, ts, ys = [], [], []
    for ep in episodes:
        T = len(ep["action"])
        idx = np.minimum(np.arange(T)[:, None] + np.arange(chunk)[None], T - 1)  # (T, chunk)
        xs.append(ep["state"])
        ts.append(np.full(T, ep["task"]))
        ys.append(ep["action"][idx])
    return np.concatenate(xs), np.concatenate(ts), np.concatenate(ys)


class StateMLP(nn.Module):
    def __init__(self, n_tasks: int, chunk: int, width: int = 512, depth: int = 3):
        super().__init__()
        dims = [len(OBS_NAMES) + n_tasks] + [width] * depth
        self.body = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.head = nn.Linear(width, chunk * len(ACTION_NAMES))
        self.chunk = chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 39 + n_tasks) -> (B, chunk, 4)
        for layer in self.body:
            x = F.gelu(layer(x))
        return self.head(x).view(len(x), self.chunk, len(ACTION_NAMES))


def train(root: str, chunk: int, seed: int, steps: int, path: Path) -> None:
    tasks, episodes = load_demos(root)
    x, t, y = make_samples(episodes, chunk)
    flat = y.reshape(-1, len(ACTION_NAMES))
    stats = {"x_mean": x.mean(0), "x_std": x.std(0) + 1e-3, "y_mean": flat.mean(0), "y_std": flat.std(0) + 1e-3}
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    xin = torch.cat([torch.from_numpy((x - stats["x_mean"]) / stats["x_std"]),
                     F.one_hot(torch.from_numpy(t).long(), len(tasks)).float()], 1)
    yt = torch.from_numpy((y - stats["y_mean"]) / stats["y_std"])
    net = StateMLP(len(tasks), chunk)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    for step in range(steps):
        idx = torch.randint(0, len(xin), (256,), generator=g)
        loss = F.mse_loss(net(xin[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 1000 == 0 or step == steps - 1:
            print(f"  chunk {chunk} seed {seed} step {step}: loss {loss.item():.4f}", flush=True)
    torch.save({"state_dict": net.state_dict(), "tasks": tasks, "chunk": chunk,
                "stats": {k: v.tolist() for k, v in stats.items()}, "samples": len(x), "steps": steps}, path)


# Where the object and the goal sit in the 39-d observation (current frame, previous frame, goal): what a camera
# policy has to perceive. The hand and the gripper are proprioception, known exactly.
PERCEIVED = np.r_[4:7, 22:25, 36:39]


class StateBCPolicy:
    """The harness's Policy protocol on top of a trained StateMLP: reads only the simulator state and the prompt.

    noise_cm > 0: a perception error. At each episode's first observation an offset is drawn, N(0, σ²) per axis
    with σ = noise_cm / √3 (so its RMS 3-D length is noise_cm), seeded by that observation (the same offset on the
    same layout in every run), and added to the object's and the goal's positions for the whole episode: a
    camera-based estimate that is off by a few centimetres, and consistently so within an episode.
    """

    def __init__(self, path: str, noise_cm: float = 0.0):
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        self.tasks = ckpt["tasks"]
        self.chunk = ckpt["chunk"]
        self.stats = {k: np.asarray(v, np.float32) for k, v in ckpt["stats"].items()}
        self.net = StateMLP(len(self.tasks), self.chunk)
        self.net.load_state_dict(ckpt["state_dict"])
        self.net.eval()
        self.metadata = {"camera_keys": [CAMERA_KEY], "image_size": 64, "state_dim": len(STATE_NAMES),
                         "action_dim": len(ACTION_NAMES), "action_horizon": self.chunk,
                         "instruction_key": INSTRUCTION_KEY}
        self.queue: list[np.ndarray] = []
        self.task = -1
        self.noise_cm, self.offset = float(noise_cm), None

    def reset(self, text: str) -> None:
        if text not in self.tasks:
            raise ValueError(f"instruction {text!r} is not one of the trained tasks' {self.tasks}")
        self.task, self.queue, self.offset = self.tasks.index(text), [], None

    def infer(self, observation: dict[str, Any]) -> dict[str, np.ndarray]:
        state = observation[ENV_STATE_KEY].astype(np.float32)
        if self.noise_cm > 0:
            if self.offset is None:  # the episode's first observation
                rng = np.random.default_rng(zlib.crc32(state.tobytes()))
                xyz = rng.normal(0.0, self.noise_cm / 100 / np.sqrt(3), 3)
                self.offset = np.zeros_like(state)
                self.offset[PERCEIVED] = np.tile(xyz, 3)
            state = state + self.offset
        if not self.queue:
            s = (state - self.stats["x_mean"]) / self.stats["x_std"]
            x = torch.cat([torch.from_numpy(s), F.one_hot(torch.tensor(self.task), len(self.tasks)).float()])
            with torch.no_grad():
                a = self.net(x[None])[0].numpy() * self.stats["y_std"] + self.stats["y_mean"]
            self.queue = list(np.clip(a, -1.0, 1.0))
        plan = np.stack(self.queue).astype(np.float32)  # the rest of the chunk; the caller executes plan[0]
        self.queue.pop(0)
        return {"actions": plan}


def load_policy(path: str, noise_cm: float = 0.0) -> StateBCPolicy:
    return StateBCPolicy(path, noise_cm)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a generated dataset (the demonstrations the image policies saw)")
    ap.add_argument("--chunks", default="1,4")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=6000, help="optimiser steps (batch 256)")
    ap.add_argument("--episodes", type=int, default=20, help="evaluation layouts per task")
    ap.add_argument("--eval-seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--noise-cm", default="0", help="perception errors to evaluate each model under (comma-separated, "
                                                     "cm; see StateBCPolicy)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task_names = None
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text())["rows"] if summary_path.exists() else {}  # rows of earlier runs
    for chunk in [int(c) for c in args.chunks.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            name = f"chunk{chunk}_s{seed}"
            model = out / f"{name}.pt"
            if not model.exists():
                train(args.data, chunk, seed, args.steps, model)
            if task_names is None:
                prompts = torch.load(model, weights_only=False)["tasks"]
                names = {instruction(t): t for t in _known_tasks()}
                task_names = [names[p] for p in prompts]
            for noise in [float(n) for n in args.noise_cm.split(",")]:
                row = name if noise == 0 else f"{name}_noise{noise:g}cm"
                kwargs = {"path": str(model.resolve()), **({"noise_cm": noise} if noise else {})}
                spec = PolicySpec(f"{Path(__file__).stem}:load_policy", kwargs)
                res = evaluate_policy(spec, tasks=task_names, episodes_per_task=args.episodes, seed=args.eval_seed,
                                      out_dir=out / row, workers=args.workers, videos_per_task=1)
                summary[row] = {"mean": res["mean"]["success_rate"], "noise_cm": noise,
                                "per_task": {t: r["success_rate"] for t, r in res["tasks"].items()}}
                print(row, json.dumps(summary[row]), flush=True)
                rates = [r["mean"] for r in summary.values() if not r.get("noise_cm")]
                summary_path.write_text(json.dumps({"data": args.data, "steps": args.steps, "rows": summary,
                                                    "mean_over_noise_free_rows": float(np.mean(rates)),
                                                    "std_over_noise_free_rows": float(np.std(rates))}, indent=1))

    plot_noise(summary, out / "noise.png")


def plot_noise(rows: dict, path: Path) -> None:
    """Mean success against the perception error, one line per trained model (rows evaluated under noise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[float, float]]] = {}
    for name, r in rows.items():
        lines.setdefault(name.split("_noise")[0], []).append((r.get("noise_cm") or 0.0, r["mean"]))
    lines = {k: sorted(v) for k, v in lines.items() if len(v) > 1}
    if not lines:
        return
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, pts in lines.items():
        ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xlabel("object and goal position error (cm RMS, per episode)")
    ax.set_ylabel("mean success (4 tasks)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def _known_tasks() -> list[str]:
    from repwam.data.tasks import resolve_tasks

    return resolve_tasks("mt50")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))  # the harness's workers import this file by name
    main()
