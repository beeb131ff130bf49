"""How visible is each task's goal from each Meta-World camera? (Pick cameras by measurement, DESIGN.md.)

For every (task, camera) and N demonstration-style layouts, the frame is rendered twice, with the goal markers
drawn and with them hidden (alpha 0); the goal's pixels are those that differ. Prints and saves, per task and
camera, the mean number of goal pixels and the fraction of layouts in which the goal shows at all (>= 1 px),
and, per pair of cameras, the fraction of layouts in which both views show it (a goal seen in two views is located
in 3-D; one view leaves its depth ambiguous).

    python benchmarks/camera_visibility.py --tasks reach-v3,push-v3,pick-place-v3,peg-insert-side-v3 --layouts 10
"""

from __future__ import annotations

import argparse
import json
from itertools import combinations
from pathlib import Path

import numpy as np

from repwam.data.sim import CAMERAS, MetaWorldEnv

OUT = Path(__file__).parent / "results" / "camera_visibility.json"


def goal_pixels(env: MetaWorldEnv, cameras: list[str]) -> dict[str, int]:
    model = env.env.model
    goal_sites = [i for i in range(model.nsite) if model.site(i).name.startswith("goal")]
    alpha = model.site_rgba[goal_sites, 3].copy()
    out = {}
    for cam in cameras:
        shown = env.render(cam).astype(np.int16)
        model.site_rgba[goal_sites, 3] = 0.0
        hidden = env.render(cam).astype(np.int16)
        model.site_rgba[goal_sites, 3] = alpha
        out[cam] = int((np.abs(shown - hidden).sum(-1) > 30).sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="reach-v3,push-v3,pick-place-v3,peg-insert-side-v3")
    ap.add_argument("--cameras", default=",".join(CAMERAS))
    ap.add_argument("--layouts", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--goal-marker-scale", type=float, default=3.0)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    cameras = args.cameras.split(",")
    results = {}
    for task in args.tasks.split(","):
        with MetaWorldEnv(task, image_size=args.image_size, goal_marker_scale=args.goal_marker_scale) as env:
            px = []
            for s in range(args.layouts):
                env.reset(seed=s)
                px.append(goal_pixels(env, cameras))
        per_cam = {c: {"mean_px": float(np.mean([p[c] for p in px])), "visible": float(np.mean([p[c] > 0 for p in px]))}
                   for c in cameras}
        pairs = {f"{a}+{b}": float(np.mean([(p[a] > 0) and (p[b] > 0) for p in px])) for a, b in combinations(cameras, 2)}
        best = sorted(pairs.items(), key=lambda kv: -kv[1])[:3]
        results[task] = {"cameras": per_cam, "both_views_visible": pairs}
        row = "  ".join(f"{c} {v['mean_px']:5.1f}px/{v['visible']:.0%}" for c, v in per_cam.items())
        print(f"{task:22s} {row}\n{'':22s} best pairs (goal in both views): {best}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"image_size": args.image_size, "goal_marker_scale": args.goal_marker_scale,
                                          "layouts": args.layouts, "results": results}, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
