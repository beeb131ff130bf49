"""World action model speed on this machine: training steps/s and tokens/s (fp32 vs bf16 autocast), and sampling
milliseconds per chunk with the KV cache vs full recomputation of the history (5 video + 10 action Euler steps,
actions-only, robot-only). Random inputs of the real shapes; prints and saves JSON.

Training rows also give model FLOPs utilisation, computed as nanoGPT's `estimate_mfu` does: 6 N FLOPs per token for
the weights plus 12 · depth · width · (keys per query) per token for attention (dense: SDPA with a boolean mask
computes every pair), divided by the step time and the device's bf16 dense peak (`--peak-tflops`; 989 for an H100
SXM, the default on CUDA; none on the CPU, where only achieved TFLOP/s are printed). Peak memory: CUDA's
max_memory_allocated, or the process's max RSS on the CPU.

    python benchmarks/wam_speed.py [--preset tiny] [--threads 1] [--device cuda] [--compile] [--batch 16]
                                   [--attn-backend sdpa|flex|auto] [--no-train] [--no-sample] [--bf16-only]
                                   [--sample-reps 30]

--no-train times sampling only. Sampling rows are medians over --sample-reps chunks (after a warm-up one).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from repwam.wam.model import WAMConfig, WorldActionModel


def median_time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--frames", type=int, default=6, help="latent frames per training clip")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile every block (as --optim.compile)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak for MFU (CUDA default: 989)")
    ap.add_argument("--attn-backend", default="sdpa", choices=("sdpa", "flex", "auto"),
                    help="WAMConfig.attn_backend (flex needs CUDA for training)")
    ap.add_argument("--no-train", action="store_true", help="sampling rows only")
    ap.add_argument("--sample-bf16", action="store_true", help="sample under bf16 autocast")
    ap.add_argument("--no-sample", action="store_true", help="training rows only")
    ap.add_argument("--bf16-only", action="store_true", help="skip the fp32 training row (compiling it twice is slow)")
    ap.add_argument("--sample-reps", type=int, default=None, help="chunks per sampling row (default: --reps)")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/wam_speed.json (wam_sampling.json with "
                    "--no-train, so a sampling-only run keeps the training rows)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    peak = args.peak_tflops or (989.0 if dev.type == "cuda" else None)
    cfg = WAMConfig.preset(args.preset, robot_action_dim=4, state_dim=4, attn_window=4,
                           **({} if args.attn_backend == "sdpa" else {"attn_backend": args.attn_backend}))
    model = WorldActionModel(cfg).to(dev)
    if args.compile:
        for blk in model.blocks:
            blk.compile()
    L, d, B, T = cfg.tokens_per_frame, cfg.latent_dim, args.batch, args.frames
    batch = {"z": torch.randn(B, T, L, d), "ell": torch.randn(B, T - 1, cfg.action_dim),
             "action": torch.randn(B, T - 1, cfg.robot_per_frame, 4), "state": torch.randn(B, T, 4),
             "text": torch.randn(B, 12, cfg.text_dim), "text_mask": torch.ones(B, 12, dtype=torch.bool)}
    batch = {k: v.to(dev) for k, v in batch.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows = []
    model.train()
    n_params = model.num_params()
    per_clip = T * (L // cfg.patch_size**2 + 3) * 2  # clean + noisy copies; video, ℓ, robot and state tokens per frame
    flops_per_token = 6 * n_params + 12 * cfg.depth * cfg.width * per_clip

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for bf16 in () if args.no_train else (True,) if args.bf16_only else (False, True):
        def step():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model.loss(batch, chunk_size=2, drop_video=False, drop_ell=False)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            sync()

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sec = median_time(step, args.reps)
        tokens = B * per_clip
        tflops = flops_per_token * tokens / sec / 1e12
        mem = (torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
        rows.append({"what": "train step", "bf16": bf16, "batch": B, "latent_frames": T, "s_per_step": round(sec, 4),
                     "steps_per_s": round(1 / sec, 2), "samples_per_s": round(B / sec, 1),
                     "tokens_per_s": round(tokens / sec), "achieved_tflops": round(tflops, 4),
                     "mfu": round(tflops / peak, 4) if peak and bf16 else None, "peak_mem_gib": round(mem, 2)})
        print(json.dumps(rows[-1]), flush=True)

    model.eval()
    text = torch.randn(1, 12, cfg.text_dim, device=dev)
    history = 8  # latent frames already observed

    def fresh_cache():
        r = lambda *shape: torch.randn(*shape, device=dev)  # noqa: E731
        cache = model.new_cache(text, torch.ones(1, 12, dtype=torch.bool, device=dev))
        model.append(cache, r(1, 1, L, d), state=r(1, 1, 4))
        for _ in range(history - 1):
            model.append(cache, r(1, 1, L, d), ell=r(1, 1, cfg.action_dim), robot=r(1, 1, cfg.robot_per_frame, 4),
                         state=r(1, 1, 4))
        return cache

    def sample(cache, **kw):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.sample_bf16):
            out = model.sample_chunk(cache, 1, **kw)
        sync()
        return out

    cache = fresh_cache()
    modes = (("video + actions (5 + 10 steps)", {}), ("actions only (10 steps)", {"actions_only": True}),
             ("robot actions only (10 steps)", {"robot_only": True}))
    for mode, kw in () if args.no_sample else modes:
        sec = median_time(lambda: sample(cache, **kw), args.sample_reps or args.reps)
        rows.append({"what": "sample chunk (k=1) with KV cache", "mode": mode, "ms": round(1000 * sec, 2)})
        print(json.dumps(rows[-1]), flush=True)
        sec = median_time(lambda: sample(fresh_cache(), **kw), max(3, args.reps // 3))
        rows.append({"what": f"sample chunk (k=1) recomputing the {history}-frame history", "mode": mode,
                     "ms": round(1000 * sec, 2)})
        print(json.dumps(rows[-1]), flush=True)
    args.out = args.out or f"benchmarks/results/{'wam_sampling' if args.no_train else 'wam_speed'}.json"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"preset": args.preset, "threads": args.threads, "device": str(dev),
                                          "attn_backend": args.attn_backend,
                                          "compile": args.compile, "peak_tflops": peak, "torch": torch.__version__,
                                          "params": n_params, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
