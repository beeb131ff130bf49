"""How many layouts does it take to read a task's goal from the first frame? (Why reach fails, measured.)

Closed-loop policies score 0-0.3 on reach, push and pick-place whatever they are; going to the *mean* goal would
already score about that on reach (its goals fill a 20 x 10 x 25 cm box, its success radius is 5 cm). This script
asks the perception half of the question alone: from the first frame of a layout, regress the goal's xyz (the
privileged `goal` of the simulator obs), trained on N demonstration layouts, scored on evaluation layouts (seeds
>= 1,000,000, as closed-loop evaluation uses).

Readers, each trained on the same N layouts:
- `mean`: always the training goals' mean (what a policy that ignores the goal does);
- `cnn`: a small CNN from scratch on the pixels (4 stride-2 convs + MLP), Adam, random-shift augmentation as the
  plain policy trains with (1/16 of the image);
- `effnet`: ridge (alpha by 5-fold CV) on frozen ImageNet EfficientNet-Lite0 stage5 features at 128 px input,
  the tokenizer's alignment teacher, whose 8 x 8 map is the latent grid: a pretrained representation's share.
- `effnet_pcaK` (`--teacher-pca K`): the same ridge on the teacher's tokens cut to their top K principal
  components (after the per-token layer norm the alignment loss applies; PCA fitted on the training layouts'
  tokens): what a K-dimensional latent aligned linearly to the teacher (the tokenizer's `W_align`) could carry at
  best, since the mean-squared alignment is best served by the top components.
- `--align-residual`: for each `--tokenizer` that saved its alignment head (`align_head.safetensors`), ridge on
  what the head predicts of the teacher from the latents, `W_align z`, and on what it misses, the per-token
  layer-normed teacher features minus that prediction: where the object's position is, in the fit or in its error.
Scores: mean 3-D error (cm) and the share of evaluation layouts read within 5 cm (reach's and push's success
radius). Prints a table and saves JSON (after every row: rerun to add sizes or layouts; finished rows are kept).

The first frame is the one rendered right after reset. Until `MetaWorldEnv.reset` ran `mj_forward` (2026-12-02)
that frame showed the *previous* layout's goal, and every reader here scored exactly as `mean` did: this script is
how that was found.

`--target object` reads the position of the object the task moves (push's and pick-place's 2-cm puck) instead.

    python benchmarks/goal_from_image.py --task reach-v3 --train 20,60,200,600 --sizes 64,128
    python benchmarks/goal_from_image.py --task push-v3 --target object --train 20,60 --sizes 64,128
    python benchmarks/goal_from_image.py --task push-v3 --target object --train 20,60 --sizes 64 --teacher-pca 8,16,32,64
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from repwam.data.generate import layout_seed
from repwam.data.sim import MetaWorldEnv

OUT = Path(__file__).parent / "results" / "goal_from_image.json"
RADIUS = 0.05  # m: reach's and push's success radius (pick-place: 0.07)


TARGETS = {"goal": slice(36, 39), "object": slice(4, 7)}  # where each sits in the 39-d Meta-World observation


def render_layouts(task: str, camera: str, size: int, seeds: list[int],
                   target: str = "goal") -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S, 3) uint8 first frames and (N, 3) positions of the target (the goal, or the object) of the layouts."""
    frames, goals = [], []
    with MetaWorldEnv(task, camera=camera, image_size=size) as env:
        for s in tqdm(seeds, desc=f"render {task} {camera} {size}px", leave=False):
            obs = env.reset(s)
            frames.append(env.render())
            goals.append(obs[TARGETS[target]].copy())
    return np.stack(frames), np.asarray(goals, np.float64)


def scores(pred: np.ndarray, goal: np.ndarray) -> dict[str, float]:
    err = np.linalg.norm(pred - goal, axis=1)
    return {"err_cm": round(100 * float(err.mean()), 2), "within_5cm": round(float((err <= RADIUS).mean()), 3),
            "axis_err_cm": [round(100 * float(v), 2) for v in np.abs(pred - goal).mean(0)]}


class GoalCNN(nn.Module):
    def __init__(self, size: int, width: int = 32):
        super().__init__()
        chans = [3, width, width, 2 * width, 2 * width]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(chans, chans[1:]))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * (size // 16) ** 2, 256), nn.GELU(),
                                  nn.Linear(256, 3))

    def forward(self, x):  # x (B, 3, S, S) in [-1, 1] -> (B, 3) normalised goal
        for conv in self.convs:
            x = F.gelu(conv(x))
        return self.head(x)


def shift(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    S = x.shape[-1]
    padded = F.pad(x, (pad,) * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2, x.shape[0]), generator=g).tolist()
    return torch.stack([padded[i, :, b : b + S, a : a + S] for i, (a, b) in enumerate(zip(dx, dy))])


def fit_cnn(x: np.ndarray, y: np.ndarray, xv: np.ndarray, steps: int, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # noqa: E731
    xt, xvt = to_t(x), to_t(xv)
    mu, sd = y.mean(0), y.std(0) + 1e-6
    yt = torch.from_numpy((y - mu) / sd).float()
    net = GoalCNN(x.shape[1])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    pad = max(1, x.shape[1] // 16)
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (min(32, len(xt)),), generator=g)
        loss = F.mse_loss(net(shift(xt[idx], pad, g)), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(xvt[i : i + 256]) for i in range(0, len(xvt), 256)]).numpy()
    return pred * sd + mu


def effnet_features(frames: np.ndarray) -> np.ndarray:
    from repwam.tokenizer.teachers import build_teacher

    teacher = build_teacher("efficientnet-lite0", layer="stage5", input_size=128)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        feats = torch.cat([teacher(x[i : i + 64]) for i in range(0, len(x), 64)])  # (N, C, 8, 8)
    return feats.flatten(1).numpy()


def teacher_pca(fx: np.ndarray, fv: np.ndarray, k: int, fit_n: int) -> tuple[np.ndarray, np.ndarray]:
    """effnet_features cut per token to the top k principal components of the layer-normed tokens of fx[:fit_n]."""
    from sklearn.decomposition import PCA

    def tokens(f):  # (N, C·64) channel-major -> (N·64, C), layer-normed over channels as the alignment target is
        t = f.reshape(len(f), -1, 64).transpose(0, 2, 1).reshape(-1, f.shape[1] // 64)
        return (t - t.mean(1, keepdims=True)) / np.sqrt(t.var(1, keepdims=True) + 1e-5)

    pca = PCA(k, random_state=0).fit(tokens(fx[:fit_n]))
    return tuple(pca.transform(tokens(f)).reshape(len(f), -1) for f in (fx, fv))


def align_split(checkpoint: str, z: np.ndarray, teacher: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W_align z, layer-normed teacher tokens - W_align z), each (N, L·C): the alignment's fit and its error. The
    teacher's 8 x 8 map is brought to the latent grid as in training (`teacher_targets`: bilinear up to 16 x 16)."""
    from safetensors.torch import load_file

    from repwam.tokenizer.losses import normalize_targets
    from repwam.tokenizer.teachers.base import teacher_targets

    w = load_file(str(Path(checkpoint) / "align_head.safetensors"))
    w = {k.removeprefix("proj."): v for k, v in w.items()}
    with torch.no_grad():
        zt = torch.from_numpy(z).reshape(len(z), -1, w["weight"].shape[1])  # (N, L, d_v): the first latent frame
        pred = torch.nn.functional.linear(zt, w["weight"], w["bias"])  # (N, L, C)
        side = round(zt.shape[1] ** 0.5)
        t = torch.from_numpy(teacher).reshape(len(teacher), w["weight"].shape[0], 8, 8)  # channel-major (N, C, 8, 8)
        t = teacher_targets(t[:, None], (side, side))[:, 0]  # (N, L, C)
        resid = normalize_targets(t) - pred
    return pred.flatten(1).numpy(), resid.flatten(1).numpy()


def tokenizer_features(checkpoint: str, *frame_sets: np.ndarray) -> list[np.ndarray]:
    """The first latent frame a repwam tokenizer makes of each frame (the WAM's input), flattened: (N, L·d) per set."""
    from repwam.data.transforms import frames_to_model
    from repwam.tokenizer.tokenize import load_tokenizer

    tok = load_tokenizer(checkpoint)
    feats = []
    for frames in frame_sets:
        x = frames_to_model(torch.from_numpy(frames).permute(0, 3, 1, 2))  # (N, 3, S, S)
        with torch.no_grad():
            z = torch.cat([tok.encode(x[i : i + 64, None]) for i in range(0, len(x), 64)])  # (N, 1, L, d)
        feats.append(z.flatten(1).numpy())
    return feats


def fit_ridge(f: np.ndarray, y: np.ndarray, fv: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(f)
    cv = min(5, len(f))
    model = RidgeCV(alphas=np.logspace(-1, 5, 13), cv=cv).fit(scaler.transform(f), y)
    return model.predict(scaler.transform(fv))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="reach-v3")
    ap.add_argument("--camera", default="corner3")
    ap.add_argument("--target", default="goal", choices=sorted(TARGETS),
                    help="what to read from the first frame: the goal, or the object the task moves")
    ap.add_argument("--train", default="20,60,200,600", help="numbers of training layouts")
    ap.add_argument("--val", type=int, default=200, help="evaluation layouts")
    ap.add_argument("--sizes", default="64,128")
    ap.add_argument("--steps", type=int, default=1500, help="CNN optimiser steps (batch 32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", action="append", default=[], metavar="SIZE=CKPT",
                    help="also ridge on a repwam tokenizer's latents of the first frame, at that image size "
                         "(repeatable), e.g. 64=outputs/hard60/runs/tok_default/checkpoints/last")
    ap.add_argument("--teacher-pca", default="", help="comma-separated K: ridge on the teacher's top-K principal "
                    "components per token as well (64 px rows)")
    ap.add_argument("--align-residual", action="store_true",
                    help="ridge on each tokenizer's W_align z and on the teacher minus it as well (64 px rows)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(1)
    ns = [int(n) for n in args.train.split(",")]
    train_seeds = [layout_seed(0, args.task, k) for k in range(max(ns))]
    val_seeds = [layout_seed(0, args.task, k, eval=True) for k in range(args.val)]
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    key = f"{args.task}@{args.camera}" + ("" if args.target == "goal" else f"/{args.target}")
    results.setdefault("_settings", {}).update({"val_layouts": args.val, "cnn_steps": args.steps, "seed": args.seed,
                                                "train_layouts": "demonstration seeds (layout_seed(0, task, k))",
                                                "val_layouts_from": "evaluation seeds (>= 1,000,000)"})
    rows = results.setdefault(key, {})
    for size in [int(s) for s in args.sizes.split(",")]:
        x, y = render_layouts(args.task, args.camera, size, train_seeds, args.target)
        xv, yv = render_layouts(args.task, args.camera, size, val_seeds, args.target)
        memo: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # features of (train, evaluation) frames, made once

        def teacher() -> tuple[np.ndarray, np.ndarray]:
            if "teacher" not in memo:
                memo["teacher"] = effnet_features(x), effnet_features(xv)
            return memo["teacher"]

        def latents(ckpt: str) -> tuple[np.ndarray, np.ndarray]:
            if ckpt not in memo:
                memo[ckpt] = tuple(tokenizer_features(ckpt, x, xv))
            return memo[ckpt]

        for n in ns:
            row = rows.setdefault(f"{size}px/n{n}", {})
            row["mean"] = scores(np.repeat(y[:n].mean(0, keepdims=True), len(yv), 0), yv)
            if "cnn" not in row:
                t0 = time.perf_counter()
                row["cnn"] = scores(fit_cnn(x[:n], y[:n], xv, args.steps, args.seed), yv)
                row["cnn"]["train_s"] = round(time.perf_counter() - t0, 1)
            if size == 64 and "effnet" not in row:  # the teacher resizes to 128 px either way
                fx, fv = teacher()
                row["effnet"] = scores(fit_ridge(fx[:n], y[:n], fv), yv)
            for k in [int(k) for k in args.teacher_pca.split(",") if k] if size == 64 else []:
                if f"effnet_pca{k}" not in row:
                    px, pv = teacher_pca(*teacher(), k, fit_n=n)
                    row[f"effnet_pca{k}"] = scores(fit_ridge(px[:n], y[:n], pv), yv)
            for spec in args.tokenizer:
                tok_size, ckpt = spec.split("=", 1)
                name = f"tokenizer:{ckpt}"
                if int(tok_size) != size:
                    continue
                if name not in row:
                    fx_t, fv_t = latents(ckpt)
                    row[name] = scores(fit_ridge(fx_t[:n], y[:n], fv_t), yv)
                if args.align_residual and size == 64 and (Path(ckpt) / "align_head.safetensors").exists() \
                        and f"{name}:fit" not in row:
                    (px, rx), (pv, rv) = (align_split(ckpt, z, t) for z, t in zip(latents(ckpt), teacher()))
                    row[f"{name}:fit"] = scores(fit_ridge(px[:n], y[:n], pv), yv)
                    row[f"{name}:error"] = scores(fit_ridge(rx[:n], y[:n], rv), yv)
            print(f"{key} {size}px n={n}: " + "  ".join(f"{k} {v['err_cm']} cm / {v['within_5cm']:.0%}"
                                                          for k, v in row.items()), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1))  # after every row: a crash loses at most one
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
