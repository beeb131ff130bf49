"""Validation losses of training runs at every save, side by side: does a stream overfit, and where?

    python benchmarks/val_losses.py outputs/hard60/runs/wam_repwam_s0 outputs/hard60/runs/wam_repwam_s1 \
        --out benchmarks/results/hard_tasks_60passes/val_losses.json

Reads the `val/*` scalars each run logged to TensorBoard (`<run>/tb`, one point per save) and prints, per run, one
row per tag: the value at each step, the step of the minimum and how far the last value is above it. `--update`
adds runs to an existing --out, keeping those whose outputs are gone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def val_losses(run: Path) -> dict[str, list[tuple[int, float]]]:
    from repwam.eval.report import run_scalars

    if not (run / "tb").is_dir():
        raise SystemExit(f"{run} has no tb/ folder (a run directory of `repwam train ...`)")
    return {tag: [(step, round(value, 4)) for step, value in points]
            for tag, points in run_scalars(run).items() if tag.startswith("val/")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories (with tb/)")
    ap.add_argument("--out", type=Path, help="JSON file to write")
    ap.add_argument("--update", action="store_true",
                    help="keep the runs already in --out (their run directories may be gone); add or replace these")
    args = ap.parse_args()
    result = {}
    for run in args.runs:
        curves = val_losses(run)
        result[str(run)] = {}
        print(f"\n{run}")
        for tag, points in curves.items():
            step_min, v_min = min(points, key=lambda p: p[1])
            last = points[-1][1]
            result[str(run)][tag] = {"points": points, "min_step": step_min, "min": v_min, "last": last,
                                     "last_over_min": round(last / v_min - 1, 3) if v_min else None}
            shown = " ".join(f"{s}:{v:.3f}" for s, v in points)
            over = f"{last / v_min - 1:+.0%}" if v_min else "a loss never trained"  # val/video of --video-drop 1
            print(f"  {tag:<14} min {v_min:.3f} at {step_min}, last {last:.3f} ({over})  [{shown}]")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.update and args.out.exists():
            result = {**json.loads(args.out.read_text()), **result}
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
