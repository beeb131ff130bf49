"""How far off is a fitted state estimator on episodes unlike the ones it was fitted on?

The estimator's cross-validated error is measured on held-out *demonstrations*: the expert's arm poses and object
motions. In closed loop the policy leaves that distribution (its failures push the puck off, wander, hover), and the
evaluation's `estimate_err_cm` shows the reading degrading there. This applies saved estimators to the frames of
another dataset (never fitted on: e.g. DART demonstrations with noise on the executed actions, `repwam data
generate --action-noise 0.5 --seed 2`) and prints and saves, per task, the mean 3-D error (cm) of the object and the
goal over every frame (beside the same on the estimator's own demonstrations, cross-fitted), and over the frames where the hand is farther than 10 cm from where the expert's would be
heading (the object for push/pick-place/peg, the goal for reach): the off-path states a policy's mistakes lead to;
and over each episode's first frames. On a policy's recorded closed-loop rollouts (`repwam eval policy --record`,
`OUT/rollouts`) each task is also split by the episodes' outcome: a failure read badly from its first frames was
caused by perception; one read well at first and badly later went wrong first and was misread after.

    python benchmarks/estimator_shift.py --data outputs/estview/dart05_seed2 \
        --estimator outputs/hard60/runs/estimator --estimator outputs/estview/est2v_l80
    python benchmarks/estimator_shift.py --data outputs/dagger/rec_s2/rollouts --estimator outputs/estview/est2v_l80 \
        --out benchmarks/results/hard_tasks_estimator/dagger/estimator_on_rollouts.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from repwam.data.lerobot import LeRobotDataset
from repwam.eval.probes import STATE_GROUPS
from repwam.policy.estimator import StateEstimator
from repwam.serve import ENV_STATE_KEY
from repwam.tokenizer.teachers import build_teacher, teacher_options
from repwam.train.estimator import cached_features

OUT = Path(__file__).parent / "results" / "estimator_shift.json"
OFF_PATH_M = 0.10


def estimate(model: StateEstimator, ds: LeRobotDataset) -> np.ndarray:
    """(num_frames, D): the estimator on every frame of `ds`, from the teacher features cached in its folder."""
    c = model.cfg
    teacher = build_teacher(c.teacher, **teacher_options(c.teacher_layer, c.teacher_input_size))
    feats = cached_features(ds.root, teacher, c.grid, c.cameras, progress=True)  # (N, V·L·C)
    out = np.zeros((ds.num_frames, c.target_dim), np.float32)
    for e in range(ds.num_episodes):
        lo = int(ds.episodes[e]["dataset_from_index"])
        hi = lo + ds.episode_length(e)
        out[lo:hi] = model.predict(feats[lo:hi], ds.episode_task(e)).numpy()
    return out


FIRST_FRAMES = (0, 4, 8)  # the first frames whose state a WAM reads (one latent frame = 4 control steps)


def shift_errors(est: np.ndarray, ds: LeRobotDataset) -> dict[str, dict[str, float]]:
    """Per task (and, for recorded closed-loop rollouts, per task and outcome: "<task> | success" / "| failure"):
    the mean error over every frame, over the off-path frames, and over the episodes' first frames (FIRST_FRAMES:
    was the scene misread from the start, or only once the policy had gone wrong?)."""
    hand, obj, goal = STATE_GROUPS["hand"], STATE_GROUPS["object"], STATE_GROUPS["goal"]
    rows: dict[str, dict[str, list]] = {}
    for e in range(ds.num_episodes):
        y = np.asarray(ds.episode_data(e)[ENV_STATE_KEY], np.float32)
        lo = int(ds.episodes[e]["dataset_from_index"])
        p, task = est[lo : lo + len(y)], ds.episode_task(e)
        target = goal if "gripper to the" in task else obj  # what the hand heads for first
        off = np.linalg.norm(y[:, hand] - y[:, target], axis=1) > OFF_PATH_M
        first = np.zeros(len(y), bool)
        first[[f for f in FIRST_FRAMES if f < len(y)]] = True
        outcome = ds.episodes[e].get("success")  # closed-loop rollouts (`repwam eval policy --record`) carry it
        keys = [task] + ([f"{task} | {'success' if outcome else 'failure'}"] if outcome is not None else [])
        for key in keys:
            r = rows.setdefault(key, {"object": [], "goal": [], "off": [], "first": [], "episodes": 0})
            r["object"].append(np.linalg.norm(p[:, obj] - y[:, obj], axis=1))
            r["goal"].append(np.linalg.norm(p[:, goal] - y[:, goal], axis=1))
            r["off"].append(off)
            r["first"].append(first)
            r["episodes"] += 1
    out = {}
    for key, r in sorted(rows.items()):
        o, g, off, first = (np.concatenate(r[k]) for k in ("object", "goal", "off", "first"))
        out[key] = {"episodes": r["episodes"], "object": round(100 * float(o.mean()), 2),
                    "goal": round(100 * float(g.mean()), 2),
                    "object_off_path": round(100 * float(o[off].mean()), 2) if off.any() else None,
                    "goal_off_path": round(100 * float(g[off].mean()), 2) if off.any() else None,
                    "off_path_fraction": round(float(off.mean()), 3),
                    "object_first_frames": round(100 * float(o[first].mean()), 2),
                    "goal_first_frames": round(100 * float(g[first].mean()), 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--estimator", required=True, action="append", help="a fitted estimator (repeat to compare)")
    ap.add_argument("--data", required=True, help="a dataset the estimators were not fitted on")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    ds = LeRobotDataset(args.data)
    results = {}
    for path in args.estimator:
        model = StateEstimator.from_pretrained(path).eval()
        fitted = [f["root"] for f in model.checkpoint_meta.get("fit_data", [])]
        if str(Path(args.data).resolve()) in fitted:
            raise SystemExit(f"{path} was fitted on {args.data}: pick data it has not seen")
        demos = LeRobotDataset(fitted[0])  # the same numbers on its own demonstrations, cross-fitted
        crossfit = load_file(str(Path(path) / "estimates.safetensors"))["0"]
        results[path] = {"shifted": shift_errors(estimate(model, ds), ds),
                         "demonstrations_crossfit": shift_errors(crossfit, demos)}
        for which, res in results[path].items():
            for task, r in res.items():
                print(f"{path} {which:24s} {task[:32]:32s} " + "  ".join(f"{k} {v}" for k, v in r.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"data": str(Path(args.data).resolve()), "off_path_m": OFF_PATH_M,
                                          "cm": results}, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
