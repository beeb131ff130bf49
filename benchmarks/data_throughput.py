"""Data throughput on this machine: demonstration generation (env steps/s with rendering) and clip loading (clips/s).

    python benchmarks/data_throughput.py [--tasks mt10] [--episodes-per-task 5] [--out benchmarks/results/data_throughput.json]

Prints and saves JSON. Generation uses `--workers` processes (one env each).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="mt10")
    p.add_argument("--episodes-per-task", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data", default=None, help="reuse this dataset for the loader part instead of generating")
    p.add_argument("--out", default="benchmarks/results/data_throughput.json")
    args = p.parse_args()

    from repwam.data.dataset import ClipDataset
    from repwam.data.generate import GenerateConfig, generate

    result: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}}
    tmp = Path(tempfile.mkdtemp())
    try:
        root = Path(args.data) if args.data else tmp / "ds"
        if not args.data:
            cfg = GenerateConfig(tasks=args.tasks.split(","), episodes_per_task=args.episodes_per_task, workers=args.workers)
            t0 = time.time()
            report = generate(root, cfg)
            wall = time.time() - t0
            result["generation"] = {
                "tasks": args.tasks,
                "episodes": report["episodes"],
                "expert_failures": report["expert_failures"],
                "env_steps": report["env_steps"],
                "workers": args.workers,
                "env_steps_per_s_with_rendering": report["env_steps_per_s"],
                "wall_s_including_writing": round(wall, 1),
            }
        for T, stride in ((9, 1), (17, 2)):
            t0 = time.time()
            ds = ClipDataset(root, num_frames=T, frame_stride=stride, progress=False)
            build = time.time() - t0
            row = {"frames_decoded": int(len(ds.frames)), "decode_s": round(build, 2),
                   "decoded_frames_per_s": round(len(ds.frames) / build, 1), "clips": len(ds)}
            for workers in (0, 2):
                loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, num_workers=workers, drop_last=True)
                n, t0 = 0, time.time()
                for i, batch in enumerate(loader):
                    n += batch["frames"].shape[0]
                    if i == 60:
                        break
                row[f"clips_per_s_workers{workers}"] = round(n / (time.time() - t0), 1)
            result[f"loader_T{T}_stride{stride}"] = row
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
