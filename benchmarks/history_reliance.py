"""How much does an adapted WAM's action expert read the executed robot actions in its history (the copycat shortcut)?

    python benchmarks/history_reliance.py outputs/hard60/runs/wam_repwam_est2v_s0 ... \
        --out benchmarks/results/hard_tasks_estimator/history_reliance.json

For each run (a `repwam train wam --stage adapt` directory: its run.json rebuilds the same validation clips), the
validation robot-action loss of its last checkpoint as in training (chunk size 2, fixed noise, no drops), then the same
with the *clean* robot actions of the history taken from another clip of the batch (rolled by one), the noisy actions
to denoise unchanged. A model that predicts its next actions from the observations barely moves; one that continues
the executed actions gets worse. The ratio is the reliance; a model trained with --no-robot-history has none (1.0).
With a history, also the loss with it hidden (its keys closed): in distribution only for --robot-history-drop.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


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
    out = {}
    modes = ["as_trained", "history_from_another_clip"] + (["history_hidden"] if model.cfg.robot_history else [])
    for name in modes:
        def patched(*a, name=name, **kw):
            if name == "history_from_another_clip" and kw.get("robot") is not None:
                kw["robot"] = kw["robot"].roll(1, 0)  # the clean history only: the noisy actions are kw["noisy_robot"]
            if name == "history_hidden":  # its keys closed, as --robot-history-drop trains and robot_history=false runs
                kw["drop_robot_history"] = torch.ones(kw["noisy_robot"].shape[0], dtype=torch.bool)
            return forward(*a, **kw)

        model.forward = patched
        out[name] = round(stage.validate(model)["robot"], 4)  # the training's validation: same clips, same noise
    model.forward = forward
    out["ratio"] = round(out["history_from_another_clip"] / out["as_trained"], 3)
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
        print(f"{run}: robot loss {r['as_trained']} -> {r['history_from_another_clip']} with another clip's "
              f"executed actions (x{r['ratio']}), {r.get('history_hidden', '-')} with the history hidden")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
