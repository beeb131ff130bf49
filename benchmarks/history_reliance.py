"""How much does an adapted WAM's action expert read the executed robot actions in its history (the copycat shortcut)?

    python benchmarks/history_reliance.py outputs/hard60/runs/wam_repwam_est2v_s0 ... \
        --out benchmarks/results/hard_tasks_estimator/history_reliance.json

For each run (a `repwam train wam --stage adapt` directory: its run.json rebuilds the same validation clips), the
validation robot-action loss of its last checkpoint as in training (chunk size 2, fixed noise, no drops), then the same
with the *clean* robot actions of the history taken from another clip of the batch (rolled by one), the noisy actions
to denoise unchanged. A model that predicts its next actions from the observations barely moves; one that continues
the executed actions gets worse. The ratio is the reliance; a model trained with --no-robot-history has none (1.0).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def reliance(run: Path, items: int) -> dict:
    from repwam.train.trainer import OptimConfig, val_subset
    from repwam.train.wam import WAMStage, WAMTrainConfig
    from repwam.wam.model import WorldActionModel

    spec = json.loads((run / "run.json").read_text())
    data = spec.pop("data")
    spec.pop("command", None)
    optim = OptimConfig(**spec.pop("optim"))
    cfg = WAMTrainConfig(**spec, optim=optim)
    stage = WAMStage(cfg, data, progress=False)
    model = WorldActionModel.from_pretrained(run / "checkpoints" / "last").eval()
    clips = val_subset(stage.val_set, items, seed=1)
    loader = torch.utils.data.DataLoader(clips, batch_size=32, collate_fn=stage.collate_fn)
    forward = model.forward
    out = {}
    for name, swap in (("as_trained", False), ("history_from_another_clip", True)):
        def patched(*a, **kw):
            if swap and kw.get("robot") is not None:
                kw["robot"] = kw["robot"].roll(1, 0)
            return forward(*a, **kw)

        model.forward = patched
        losses = []
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for batch in loader:
                losses.append(float(model.loss(batch, chunk_size=2, drop_video=False, drop_ell=False)["robot"]))
        out[name] = round(float(np.mean(losses)), 4)
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
              f"executed actions (x{r['ratio']})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
