"""How much of the next action chunk the last executed action predicts (the "copycat" shortcut of behaviour cloning
with history: Wen et al., 2020). A policy that sees the states at t-1 and t sees the hand's last displacement, i.e.
roughly a_{t-1}; if repeating a_{t-1} already explains most of the next actions, it can reach a low loss without
reading the goal from the image.

    python benchmarks/copycat_shortcut.py DATASET [DATASET ...] [--horizon 16] [--out results.json]

Per dataset and task: the variance of the hand actions (x, y, z) explained (R², over the next `horizon` actions) by
(a) repeating a_{t-1}, (b) the displacement of the hand between t-1 and t scaled by least squares, (c) the mean action.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from repwam.data.lerobot import LeRobotDataset


def r2(pred: np.ndarray, target: np.ndarray) -> float:
    return float(1 - ((pred - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--horizon", type=int, default=16)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    results = {}
    for path in a.datasets:
        ds = LeRobotDataset(path)
        rows = defaultdict(lambda: {"target": [], "prev": [], "disp": []})
        for i, ep in enumerate(ds.episodes):
            d = ds.episode_data(i)
            act, hand = np.asarray(d["action"])[:, :3], np.asarray(d["observation.state"])[:, :3]
            for t in range(1, len(act)):
                for h in range(a.horizon):
                    if t + h >= len(act):
                        break
                    r = rows[ep["env_task"]]
                    r["target"].append(act[t + h])
                    r["prev"].append(act[t - 1])
                    r["disp"].append(hand[t] - hand[t - 1])
        out = {}
        for task, r in sorted(rows.items()):
            y, prev, disp = (np.asarray(r[k]) for k in ("target", "prev", "disp"))
            scale = (disp * y).sum(0) / np.maximum((disp * disp).sum(0), 1e-12)  # per-axis least squares
            out[task] = {"repeat_last_action": round(r2(prev, y), 3), "scaled_hand_displacement": round(r2(disp * scale, y), 3),
                         "mean_action": round(r2(np.broadcast_to(y.mean(0), y.shape), y), 3), "pairs": len(y)}
        results[path] = out
        print(path)
        print("| task | R² repeat a(t-1) | R² scaled hand displacement | pairs |")
        print("|---|---|---|---|")
        for task, v in out.items():
            print(f"| {task} | {v['repeat_last_action']:.2f} | {v['scaled_hand_displacement']:.2f} | {v['pairs']} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"horizon": a.horizon, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
