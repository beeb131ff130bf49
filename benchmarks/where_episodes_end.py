"""Where do a policy's episodes end relative to the goal? A systematic offset, or a goal ignored?

Reads the `episodes.jsonl` of closed-loop evaluations (`repwam eval policy`, which records per episode the goal,
the final hand and object positions, and Meta-World's distance from what the task moves to its target). Per task:
- success, mean final and minimum distance to the target (cm);
- `tracks goal`: per axis, the slope of a least-squares fit of the final position of what the task moves (the hand
  for reach, the object otherwise) on the goal's coordinate, over the episodes: 1 when the policy goes where the
  goal is, 0 when it goes to the same place whatever the goal;
- `offset`: the mean final position minus the goal (cm, per axis): a systematic error shows here.

    python benchmarks/where_episodes_end.py outputs/hard20/eval/plain_plain_s0 [more eval dirs] --out results.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

MOVED_BY_HAND = {"reach-v3"}  # tasks whose target is reached by the hand itself; otherwise an object is moved


def analyse(records: list[dict]) -> dict:
    goal = np.array([r["goal"] for r in records])
    key = "final_hand" if records[0]["task"] in MOVED_BY_HAND else "final_obj"
    end = np.array([r[key] for r in records])
    slopes = []
    for a in range(3):
        g = goal[:, a] - goal[:, a].mean()
        varies = goal[:, a].std() > 0.005  # an axis the goal barely moves along (< 5 mm) says nothing
        slopes.append(float((g * (end[:, a] - end[:, a].mean())).sum() / (g * g).sum()) if varies else None)
    return {
        "episodes": len(records),
        "success": float(np.mean([r["success"] for r in records])),
        "final_dist_cm": round(100 * float(np.mean([r["goal_dist_final"] for r in records])), 1),
        "min_dist_cm": round(100 * float(np.mean([r["goal_dist_min"] for r in records])), 1),
        "moved": key.removeprefix("final_"),
        "tracks_goal": [None if s is None else round(s, 2) for s in slopes],
        "offset_cm": [round(100 * float(v), 1) for v in (end - goal).mean(0)],
        "goal_spread_cm": [round(100 * float(v), 1) for v in goal.std(0)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evals", nargs="+", help="evaluation output directories (with episodes.jsonl)")
    ap.add_argument("--out", default=None, help="JSON file to write")
    args = ap.parse_args()
    results = {}
    for d in args.evals:
        lines = [json.loads(x) for x in (Path(d) / "episodes.jsonl").read_text().splitlines() if x.strip()]
        lines = [r for r in lines if r.get("goal") is not None]
        if not lines:
            raise SystemExit(f"{d}: no episode records the goal (evaluated before repwam recorded it)")
        per = {t: analyse([r for r in lines if r["task"] == t]) for t in sorted({r["task"] for r in lines})}
        results[str(d)] = per
        print(f"\n{d}")
        print("| task | success | final / min distance (cm) | moved | tracks goal (x, y, z) | offset (cm) | goal spread (cm) |")
        print("|---|---|---|---|---|---|---|")
        for t, r in per.items():
            print(f"| {t} | {r['success']:.2f} | {r['final_dist_cm']} / {r['min_dist_cm']} | {r['moved']} | "
                  f"{r['tracks_goal']} | {r['offset_cm']} | {r['goal_spread_cm']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
