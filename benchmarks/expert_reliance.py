"""What does an adapted WAM's action expert read? Its executed actions (the copycat shortcut), the chunk's frames, ℓ.

    python benchmarks/expert_reliance.py outputs/hard60/runs/wam_repwam_est2v_s0 ... \
        --out benchmarks/results/hard_tasks_estimator/expert_reliance.json

For each run (a `repwam train wam --stage adapt` directory: its run.json rebuilds the same validation clips), the
validation robot-action loss of its last checkpoint as in training (chunk size 2, fixed noise, no drops: the noisy
frames and ℓ of the chunk at their own random flow times), then the same with one input changed, the noisy robot
actions to denoise always the same:
  history_from_another_clip  the *clean* robot actions of the history taken from another clip of the batch (rolled by
                             one). A model that predicts its next actions from the observations barely moves; one that
                             continues the executed actions gets worse: the ratio is the copycat reliance (a model
                             trained with --no-robot-history has none, 1.0).
  history_hidden             that history's keys closed (what --robot-history-drop trains and robot_history=false runs;
                             out of distribution for other models). Only for models with a history.
  future_frames_true         the chunk's frames given clean (flow time 1): the real future the sampler's first phase
                             imagines. Lower than as trained = the expert can act by inverse dynamics from the future.
  future_frames_dropped      the chunk's frames left out (the actions-only training mode).
  future_ell_true            the chunk's latent actions given clean (ℓ from the LAT, flow time 1) [ℓ stream].
  future_ell_dropped         the chunk's latent actions left out (what robot_only=true runs) [ℓ stream]. Higher than
                             as trained = the expert leans on the noisy ℓ it is trained beside.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def change(name: str, a: tuple, kw: dict) -> dict:
    """The forward's keyword arguments with `name`'s input changed (a: its positional z, ell)."""
    z, ell = a[0], a[1] if len(a) > 1 else None
    if name == "history_from_another_clip" and kw.get("robot") is not None:
        kw["robot"] = kw["robot"].roll(1, 0)  # the clean history only: the noisy actions are kw["noisy_robot"]
    elif name == "history_hidden":
        kw["drop_robot_history"] = torch.ones(z.shape[0], dtype=torch.bool)
    elif name == "future_frames_true":
        kw["noisy_z"], kw["alpha_z"] = z[:, 1:], torch.ones_like(kw["alpha_z"])
    elif name == "future_frames_dropped":
        kw["drop_video"] = True
    elif name == "future_ell_true":
        kw["noisy_ell"], kw["alpha_ell"] = ell, torch.ones_like(kw["alpha_ell"])
    elif name == "future_ell_dropped":
        kw["drop_ell"] = True
    return kw


def reliance(run: Path, items: int) -> dict:
    from dataclasses import replace

    from repwam.config import from_dict, load_run_config
    from repwam.train.wam import WAMStage, WAMTrainConfig
    from repwam.wam.model import WorldActionModel

    spec, data = load_run_config(run, "wam")
    cfg = from_dict(WAMTrainConfig, spec)
    cfg = replace(cfg, optim=replace(cfg.optim, val_items=items))
    stage = WAMStage(cfg, data, progress=False)
    model = WorldActionModel.from_pretrained(run / "checkpoints" / "last").eval()
    forward = model.forward
    modes = ["as_trained", "history_from_another_clip", *(["history_hidden"] if model.cfg.robot_history else []),
             "future_frames_true", "future_frames_dropped",
             *(["future_ell_true", "future_ell_dropped"] if model.cfg.use_latent_actions else [])]
    out = {}
    for name in modes:
        def patched(*a, name=name, **kw):
            result = forward(*a, **change(name, a, kw))
            if result["video"] is None:  # frames left out: the loss still scores a video velocity (unread here)
                result["video"] = torch.zeros_like(a[0][:, 1:])
            if result.get("action") is None and len(a) > 1 and a[1] is not None:  # ℓ left out: likewise
                result["action"] = torch.zeros_like(a[1])  # ℓ is (B, T'-1, A)
            return result

        model.forward = patched
        out[name] = round(stage.validate(model)["robot"], 4)  # the training's validation: same clips, same noise
    model.forward = forward
    out["ratio"] = round(out["history_from_another_clip"] / out["as_trained"], 3)  # the copycat reliance
    out["robot_history"] = model.cfg.robot_history
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="adapted WAM run directories (run.json, checkpoints/last)")
    ap.add_argument("--items", type=int, default=256, help="validation clips (the training's val_items)")
    ap.add_argument("--out", type=Path, help="JSON file to write")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = {}
    for run in args.runs:
        result[str(run)] = r = reliance(run, args.items)
        print(f"{run}: validation robot loss " + ", ".join(f"{k} {v}" for k, v in r.items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
