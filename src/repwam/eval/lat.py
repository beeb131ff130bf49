"""`repwam eval lat`: latent actions on held-out episodes.

- Forward prediction: MSE of ẑ_{t+1} = K_t z_t + δ_t against the copy-last-frame baseline ẑ_{t+1} = z_t.
- Action probe (the paper's figure-4 analogue): a small MLP regressor (and a ridge regressor) from ℓ_t to the
  robot actions of the same transition (4 strided raw steps, flattened), fitted on training episodes, R² on
  held-out episodes.
- Transfer picture: the latent actions of episode A drive the FDM from episode B's first latent frame; the rollout
  is decoded with the tokenizer's decoder next to A and B themselves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from repwam.data.dataset import frames_from_model
from repwam.eval.probes import ridge_probe
from repwam.train.lat import LatentClips, forward_errors, load_lat


@torch.no_grad()
def latent_actions(model, clips: LatentClips, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ℓ (N, A), the transition's actions flattened (N, 4*stride*A_robot), and the episode of each transition."""
    ells, acts, eps = [], [], []
    for batch in torch.utils.data.DataLoader(clips, batch_size=batch_size):
        ells.append(model(batch["z"])[:, 0])
        acts.append(batch["action"][:, 0].flatten(1))
        eps.append(batch["episode"] + 100000 * batch["source"])
    return torch.cat(ells).numpy(), torch.cat(acts).numpy(), torch.cat(eps).numpy()


def mlp_probe(x_train, y_train, x_val, y_val, seed: int = 0) -> float:
    """R² (uniform average over targets) of a small MLP regressor on held-out data."""
    from sklearn.metrics import r2_score
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y_mean, y_std = y_train.mean(0), y_train.std(0) + 1e-8
    reg = make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(128, 128), alpha=1e-3, max_iter=300,
                                                       early_stopping=True, random_state=seed))
    reg.fit(x_train, (y_train - y_mean) / y_std)
    pred = reg.predict(x_val) * y_std + y_mean
    keep = y_val.std(0) > 1e-6
    return float(r2_score(y_val[:, keep], pred[:, keep]))


def evaluate_lat(checkpoint: str | Path, data: list[str | Path], *, val_fraction: float = 0.1) -> dict:
    model, cfg = load_lat(checkpoint)
    sets = {s: LatentClips(data, cfg["latents"], clip_frames=2, split=s, val_fraction=val_fraction) for s in ("train", "val")}
    result = {
        "checkpoint": str(checkpoint),
        "latents": cfg["latents"],
        "teacher": (cfg.get("teacher") or {}).get("name", "none"),
        "quantizer": cfg["lat"].get("quantizer"),
        "action_dim": cfg["lat"]["action_dim"],
        "step": cfg.get("step"),
        **forward_errors(model, sets["val"]),
    }
    if sets["train"].has_actions:
        xtr, ytr, eptr = latent_actions(model, sets["train"])
        xva, yva, _ = latent_actions(model, sets["val"])
        r2, _ = ridge_probe(xtr, ytr, xva, yva, groups=eptr)
        result["action_probe_r2_ridge"] = float(np.nanmean(r2))
        result["action_probe_r2_mlp"] = mlp_probe(xtr, ytr, xva, yva)
        result["val_transitions"] = int(len(xva))
    return result


@torch.no_grad()
def transfer_picture(checkpoint: str | Path, data: str | Path, out: str | Path, *, pairs: int = 3,
                     horizon: int = 6, seed: int = 0) -> Path:
    """Rows per pair: A (decoded), B (decoded), B driven by A's latent actions. Columns: every 4th raw frame."""
    from PIL import Image, ImageDraw

    from repwam.train.tokenizer import load_tokenizer

    model, cfg = load_lat(checkpoint)
    tok, _ = load_tokenizer(cfg["tokenizer_checkpoint"])
    clips = LatentClips([data], cfg["latents"], clip_frames=2, split="val")
    tok.cfg.attn_window = clips.meta["attn_window"]  # decode long rollouts with the context the tokenizer trained on
    lat = clips.latents[0]
    ds = clips.datasets[0]
    rng = np.random.default_rng(seed)
    by_task: dict[str, list[int]] = {}
    for _, e, _ in clips.index:
        if len(lat[e]) > horizon:
            by_task.setdefault(ds.episode_task(e), []).append(e)
    tasks = [t for t, eps in by_task.items() if len(set(eps)) >= 2]
    if not tasks:
        tasks = list(by_task)
    rows, labels = [], []
    for t in rng.choice(tasks, size=min(pairs, len(tasks)), replace=False):
        eps = sorted(set(by_task[t]))
        a, b = (eps[0], eps[1]) if len(eps) > 1 else (eps[0], eps[0])
        za, zb = lat[a][: horizon + 1][None], lat[b][: horizon + 1][None]  # (1, H+1, L, d)
        ell_a = model(za)[0]  # (H, A)
        z = [zb[0, 0]]
        for j in range(horizon):
            z.append(model.fdm(z[-1][None], ell_a[j][None])[0][0])
        driven = torch.stack(z)[None]
        for name, zz in (("A", za), ("B", zb), ("B driven by A's latent actions", driven)):
            frames = frames_from_model(tok.decode(zz)[0])[::4]  # (H+1, 3, h, w)
            rows.append(torch.cat(list(frames), 2))
            labels.append(f"{name}: {t}")
    grid = torch.cat(rows, 1).permute(1, 2, 0).numpy()
    img = Image.fromarray(np.repeat(np.repeat(grid, 2, 0), 2, 1))
    h = img.height // len(rows)
    canvas = Image.new("RGB", (img.width + 300, img.height), (255, 255, 255))
    canvas.paste(img, (300, 0))
    draw = ImageDraw.Draw(canvas)
    for i, lab in enumerate(labels):
        draw.text((4, i * h + h // 2 - 6), lab[:48], fill=(0, 0, 0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def format_table(results: list[dict]) -> str:
    lines = ["| LAT | latents from | ℓ | fwd MSE ↓ | copy-last MSE | fwd / copy ↓ | action probe R² (MLP) ↑ | action probe R² (ridge) ↑ |",
             "|" + "---|" * 8]
    for r in results:
        ell = f"{r['quantizer']} ({r['action_dim']}-d)" if r["quantizer"] else f"continuous {r['action_dim']}-d"
        lines.append(
            f"| {Path(r['checkpoint']).parent.parent.name} | {r['latents']} ({r['teacher']}) | {ell} | {r['fwd_mse']:.4f} | "
            f"{r['copy_last_mse']:.4f} | {r['fwd_over_copy']:.3f} | {r.get('action_probe_r2_mlp', float('nan')):.3f} | "
            f"{r.get('action_probe_r2_ridge', float('nan')):.3f} |"
        )
    return "\n".join(lines)
