"""Closed-loop success along training: one line per policy, one point per evaluated checkpoint (a run's snapshots,
`checkpoints/step_N`, each evaluated with `repwam eval policy` on the same layouts), with 95% Wilson intervals.

    python benchmarks/success_curve.py \
        --curve repwam 3000=eval_snap/wam_repwam_s0_3000 4500=eval_snap/wam_repwam_s0_4500 6000=eval/wam_repwam_s0 \
        --curve plain 3000=eval_snap/plain_plain_s1_3000 6000=eval/plain_plain_s1 --out curve.png

Writes the plot and, beside it, a JSON file of the points (label -> [{step, success, successes, episodes, ci}]).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_point(spec: str) -> dict:
    """`STEP=EVAL_DIR` -> {step, success, successes, episodes, ci}, from EVAL_DIR/results.json."""
    step, sep, folder = spec.partition("=")
    if not sep or not step.isdigit():
        raise SystemExit(f"a point is STEP=EVAL_DIR (e.g. 3000=eval_snap/run_3000), got {spec!r}")
    f = Path(folder) / "results.json"
    if not f.exists():
        raise SystemExit(f"no {f}: evaluate that checkpoint first (repwam eval policy --out {folder})")
    mean = json.loads(f.read_text())["mean"]
    return {"step": int(step), "success": mean["success_rate"], "successes": mean["successes"],
            "episodes": mean["episodes"], "ci": mean["ci95"]}


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, (label, pts) in enumerate(curves.items()):
        x, y = [p["step"] for p in pts], [p["success"] for p in pts]
        err = [[p["success"] - p["ci"][0] for p in pts], [p["ci"][1] - p["success"] for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label, color="C0" if i == 0 else f"C{i + 6}")
    ax.set_ylim(0, 1)
    ax.set_xlabel("training step")
    ax.set_ylabel("closed-loop success (mean over tasks)")
    ax.set_title("Success along training (95% Wilson)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--curve", nargs="+", action="append", required=True, metavar="LABEL STEP=EVAL_DIR",
                    help="a label, then its points")
    ap.add_argument("--out", default="success_curve.png")
    a = ap.parse_args()
    curves = {}
    for label, *points in a.curve:
        if not points:
            raise SystemExit(f"--curve {label}: no STEP=EVAL_DIR points")
        curves[label] = sorted((read_point(p) for p in points), key=lambda p: p["step"])
    out = Path(a.out)
    plot(curves, out)
    out.with_suffix(".json").write_text(json.dumps(curves, indent=1) + "\n")
    for label, pts in curves.items():
        print(label + ": " + ", ".join(f"{p['step']}: {p['successes']}/{p['episodes']}" for p in pts))
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
