"""Tokenizer training-step speed on this machine: fp32 vs bf16 autocast, 1 vs 2 threads, perceptual term on/off,
clip length. Random frames (speed does not depend on content). Prints a table and saves JSON.

Each row also gives samples/s and the model FLOPs the step achieved, counted as nanoGPT's `estimate_mfu` does:
6 N FLOPs per token (encoder and decoder each see every token of the clip: L per latent frame) plus
12 · (2 · depth) · width · (keys per query) per token for attention, keys limited by the attention window; the
perceptual network's FLOPs are not counted. With `--peak-tflops` (a device's bf16 dense peak) the bf16 rows also
give MFU.

    python benchmarks/tokenizer_speed.py [--preset tiny] [--batch 16] [--steps 6] [--peak-tflops P]
    python benchmarks/tokenizer_speed.py --device cuda --preset small --batch 64     # MFU against 989 (H100 SXM)
    python benchmarks/tokenizer_speed.py --patch-size 4 --rows 1 --out F.json        # a 16x16 grid, first row only
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from repwam.tokenizer.losses import AlignHead, TokenizerLoss
from repwam.tokenizer.model import RepViTok, TokenizerConfig


def config(preset: str, patch_size: int | None) -> TokenizerConfig:
    return TokenizerConfig.preset(preset, **({} if patch_size is None else {"patch_size": patch_size}))


def step_time(preset: str, batch: int, num_frames: int, bf16: bool, perceptual: float, threads: int, steps: int,
              device: str = "cpu", patch_size: int | None = None) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    model = RepViTok(config(preset, patch_size)).train().to(dev)
    head = AlignHead(model.cfg.latent_dim, 112).to(dev)
    loss_fn = TokenizerLoss(perceptual=perceptual, align=1.0, perceptual_frames=1).to(dev)
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-4)
    s = model.cfg.image_size
    x = torch.rand(batch, num_frames, 3, s, s, device=dev) * 2 - 1
    h, w = model.latent_grid
    tgt = torch.randn(batch, model.num_latent_frames(num_frames), h * w, 112, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    for i in range(steps + 1):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            recon, z = model(x)
            losses = loss_fn(recon.float(), x, z.float(), tgt, head)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        sync()
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def model_flops_per_clip(preset: str, num_frames: int, patch_size: int | None = None) -> float:
    """Model FLOPs of one training step's forward + backward on one clip (see the module docstring)."""
    cfg = config(preset, patch_size)
    with torch.device("meta"):
        model = RepViTok(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    h, w = model.latent_grid
    frames = model.num_latent_frames(num_frames)
    tokens = frames * h * w
    keys = min(frames, cfg.attn_window or frames) * h * w
    return tokens * (6 * n_params + 12 * 2 * cfg.depth * cfg.width * keys)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="bf16 dense peak of the device, for MFU (CUDA default: 989, H100 SXM)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--patch-size", type=int, default=None, help="the preset's spatial patch (sets the latent grid)")
    ap.add_argument("--rows", type=int, default=None, help="time only the first N rows of the grid")
    ap.add_argument("--out", default="benchmarks/results/tokenizer_speed.json")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and args.peak_tflops is None:
        args.peak_tflops = 989.0
    rows = []
    grid = [(17, False, 1.0, 1), (17, True, 1.0, 1), (17, True, 0.0, 1), (17, False, 0.0, 1), (17, True, 1.0, 2),
            (5, False, 1.0, 1), (5, True, 1.0, 1), (9, True, 1.0, 1), (13, True, 1.0, 1)]
    if cuda:  # CPU threads do not matter there
        grid = [g for g in grid if g[3] == 1]
    grid = grid[:args.rows]
    for T, bf16, perc, threads in grid:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sec = step_time(args.preset, args.batch, T, bf16, perc, threads, args.steps, args.device, args.patch_size)
        row = {"preset": args.preset, "patch_size": config(args.preset, args.patch_size).patch_size,
               "batch": args.batch, "num_frames": T, "bf16": bf16, "perceptual": perc > 0,
               "threads": threads, "s_per_step": round(sec, 3), "frames_per_s": round(args.batch * T / sec, 1),
               "samples_per_s": round(args.batch / sec, 2)}
        tflops = args.batch * model_flops_per_clip(args.preset, T, args.patch_size) / sec / 1e12
        row["achieved_tflops"] = round(tflops, 4)
        row["mfu"] = round(tflops / args.peak_tflops, 4) if args.peak_tflops and bf16 else None
        if cuda:
            row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    Path(args.out).write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
