"""Muon's step on this machine: torch.optim.Muon (Newton–Schulz in bfloat16) against repwam.train.muon.Muon (float32
on the CPU), on the matrices Muon trains in a WAM with the robot stream (the adaptation's); prints and saves JSON.

    python benchmarks/muon_speed.py [--preset tiny] [--threads 1] [--reps 10] [--out benchmarks/results/muon_speed.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from repwam.train.muon import Muon
from repwam.train.trainer import param_groups
from repwam.wam.model import WAMConfig, WorldActionModel


def seconds_per_step(opt, params, grads, reps: int) -> float:
    times = []
    for i in range(reps + 1):  # the first builds the momentum buffers
        for p, g in zip(params, grads):
            p.grad = g
        t0 = time.perf_counter()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/muon_speed.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = WorldActionModel(WAMConfig.preset(a.preset, robot_action_dim=4, robot_per_frame=4, state_dim=4))
    params, _ = param_groups(model, 0.01, muon=True)
    grads = [torch.randn_like(p) for p in params]
    kw = dict(lr=0.01, weight_decay=0.01, adjust_lr_fn="match_rms_adamw")
    rows = {name: seconds_per_step(make(params, **kw), params, grads, a.reps)
            for name, make in (("torch.optim.Muon (bfloat16)", torch.optim.Muon),
                               ("repwam Muon (float32 on the CPU)", Muon))}
    result = {"preset": a.preset, "threads": a.threads, "torch": torch.__version__, "matrices": len(params),
              "muon_params": sum(p.numel() for p in params), "seconds_per_step": rows}
    for name, s in rows.items():
        print(f"{name:34s} {1000 * s:8.1f} ms per step")
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
