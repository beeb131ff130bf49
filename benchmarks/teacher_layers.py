"""Which teacher feature map to align to: a state probe on the teacher's own features, per layer and input size.

    python benchmarks/teacher_layers.py --data outputs/mt10 [--teacher efficientnet-lite0] [--every 4]

For each (layer, input size): teacher features of every `--every`-th frame, pooled to the tokenizer's 8x8 latent
grid, flattened; ridge regression to the simulator state (hand, gripper, object, goal); R² on held-out episodes
(the same split and probe as `repwam eval tokenizer`). Also the time per frame. Prints and saves JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from repwam.data.dataset import frames_to_model, split_episodes
from repwam.data.lerobot import LeRobotDataset
from repwam.eval.probes import STATE_GROUPS, grouped_r2, ridge_probe
from repwam.eval.tokenizer import PROBE_COLUMNS
from repwam.tokenizer.teachers import build_teacher, teacher_targets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--teacher", default="efficientnet-lite0")
    p.add_argument("--layers", default="stage3,stage4,stage5,stage6,stage7")
    p.add_argument("--input-sizes", default="128,224")
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--grid", type=int, default=8)
    p.add_argument("--out", default="benchmarks/results/teacher_layers.json")
    args = p.parse_args()

    ds = LeRobotDataset(args.data)
    cam = ds.camera_keys[0]
    split = {s: split_episodes([ds], s, 0.1, seed=0) for s in ("train", "val")}
    frames, states = {}, {}
    for s, pairs in split.items():
        fr, st = [], []
        for _, e in pairs:
            fr.append(ds.episode_frames(e, cam)[:: args.every])
            st.append(ds.episode_data(e)["observation.environment_state"][:: args.every])
        frames[s] = torch.from_numpy(np.concatenate(fr)).permute(0, 3, 1, 2)
        states[s] = np.concatenate(st)[:, PROBE_COLUMNS]
    print({s: len(f) for s, f in frames.items()}, "frames")
    rows = []
    # the raw pixels pooled to the same grid, as a floor
    for size in [int(x) for x in args.input_sizes.split(",")]:
        for layer in args.layers.split(","):
            teacher = build_teacher(args.teacher, layer=layer, input_size=size)
            feats, t0 = {}, time.time()
            with torch.no_grad():
                for s, fr in frames.items():
                    out = [teacher_targets(teacher(frames_to_model(fr[i : i + 64]))[:, None], (args.grid, args.grid))[:, 0]
                           for i in range(0, len(fr), 64)]
                    feats[s] = torch.cat(out).flatten(1).numpy()
            ms = 1000 * (time.time() - t0) / sum(len(f) for f in frames.values())
            r2, _ = ridge_probe(feats["train"], states["train"], feats["val"], states["val"])
            g = grouped_r2(r2, STATE_GROUPS, PROBE_COLUMNS)
            row = {"layer": layer, "input_size": size, "dim": teacher.dim, "ms_per_frame": round(ms, 2), **{f"r2_{k}": round(v, 4) for k, v in g.items()}}
            print(row, flush=True)
            rows.append(row)
    pix = {s: torch.nn.functional.adaptive_avg_pool2d(frames_to_model(f), args.grid).flatten(1).numpy() for s, f in frames.items()}
    r2, _ = ridge_probe(pix["train"], states["train"], pix["val"], states["val"])
    g = grouped_r2(r2, STATE_GROUPS, PROBE_COLUMNS)
    rows.append({"layer": "pixels (8x8 avg-pooled RGB)", "input_size": 64, "dim": 3, **{f"r2_{k}": round(v, 4) for k, v in g.items()}})
    print(rows[-1])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"data": args.data, "every": args.every, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
