"""Would a causal filter sharpen the state estimator's reading of positions that do not move?

The goal never moves within an episode and the object sits still until the hand reaches it, so the estimator's
per-frame readings of them could be averaged over the frames seen so far. That helps only if its errors differ from
frame to frame; if they are the same on every frame of a layout (a bias of that layout), averaging changes nothing.
This reads a fitted estimator's *cross-fitted* estimates (`repwam train estimator`: each episode predicted by the
fold that never saw it) on the first dataset it was fitted on (the demonstrations) and prints and saves, per task,
the mean 3-D error (cm) of

    goal_frame   the goal read from each latent-frame boundary (every 4th frame) on its own
    goal_mean    the causal running mean of those readings (what a filter would feed the state token)
    obj_first    the object read from the first frame alone
    obj_frame    the object read from each of the first 16 frames (it has not moved yet) on its own
    obj_mean16   the mean of those readings, against the object's starting position

and `goal_toward_hand`, the least-squares slope of the goal's error on the hand's offset from the goal (0: the
reading ignores the hand; 0.1: a hand 20 cm off drags the goal 2 cm towards it). On demonstrations the hand ends at
the goal, so a map fitted on them can read the goal partly from the arm; in closed loop that reading follows the
policy's own mistakes.

    python benchmarks/estimator_filter.py --estimator outputs/hard60/runs/estimator
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from repwam.checkpoint import read_config
from repwam.data.lerobot import LeRobotDataset
from repwam.eval.probes import STATE_GROUPS
from repwam.serve import ENV_STATE_KEY

OUT = Path(__file__).parent / "results" / "estimator_filter.json"
STILL = 16  # frames in which the object has not moved yet (the hand starts away from it)


def filter_errors(estimates: np.ndarray, ds: LeRobotDataset, stride: int = 4) -> dict[str, dict[str, float]]:
    goal, obj, hand = STATE_GROUPS["goal"], STATE_GROUPS["object"], STATE_GROUPS["hand"]
    rows: dict[str, dict[str, list[float]]] = {}
    for e in range(ds.num_episodes):
        y = np.asarray(ds.episode_data(e)[ENV_STATE_KEY], np.float32)  # (T, 39)
        lo = int(ds.episodes[e]["dataset_from_index"])
        p = estimates[lo : lo + len(y)]
        r = rows.setdefault(ds.episode_task(e), {})
        g, gp = y[::stride, goal], p[::stride, goal]
        running = np.cumsum(gp, 0) / np.arange(1, len(gp) + 1)[:, None]
        r.setdefault("goal_frame", []).append(np.linalg.norm(gp - g, axis=1).mean())
        r.setdefault("goal_mean", []).append(np.linalg.norm(running - g, axis=1).mean())
        o0, op = y[0, obj], p[:STILL, obj]
        r.setdefault("obj_first", []).append(np.linalg.norm(op[0] - o0))
        r.setdefault("obj_frame", []).append(np.linalg.norm(op - o0, axis=1).mean())
        r.setdefault("obj_mean16", []).append(np.linalg.norm(op.mean(0) - o0))
        r.setdefault("_err", []).append(gp - g)
        r.setdefault("_off", []).append(y[::stride, hand] - g)
    out = {}
    for t, r in rows.items():
        err, off = np.concatenate(r.pop("_err")), np.concatenate(r.pop("_off"))
        out[t] = {k: round(100 * float(np.mean(v)), 2) for k, v in r.items()}
        out[t]["goal_toward_hand"] = round(float((err * off).sum() / (off * off).sum()), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--estimator", required=True, action="append", help="a fitted estimator (repeat to compare)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    results = {}
    for est in args.estimator:
        root = read_config(est)["fit_data"][0]["root"]  # the demonstrations (later datasets: more layouts)
        estimates = load_file(str(Path(est) / "estimates.safetensors"))["0"]
        results[est] = {"data": root, "cm": filter_errors(estimates, LeRobotDataset(root))}
        for task, r in results[est]["cm"].items():
            print(f"{est}  {task[:40]:40s}  " + "  ".join(f"{k} {v:.2f}" for k, v in r.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"still_frames": STILL, "estimators": results}, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
