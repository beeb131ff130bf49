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

from repwam.checkpoint import run_name
from repwam.data.dataset import frames_from_model
from repwam.eval.probes import EPISODE_SOURCE_STRIDE, ridge_probe
from repwam.lat.data import LatentClips
from repwam.lat.model import LatentActionTokenizer
from repwam.tokenizer.tokenize import load_parent_tokenizer


@torch.no_grad()
def forward_errors(model: LatentActionTokenizer, clips, batch_size: int = 256) -> dict[str, float]:
    """Mean squared forward-prediction error of the FDM vs the copy-last-frame baseline on `clips`."""
    model.eval()
    device = next(model.parameters()).device
    fwd, copy, n = 0.0, 0.0, 0
    for batch in torch.utils.data.DataLoader(clips, batch_size=batch_size):
        z = batch["z"].to(device)
        losses = model.loss(z)
        fwd += float(losses["fwd"]) * len(z)
        copy += float(losses["copy_last"]) * len(z)
        n += len(z)
    return {"fwd_mse": fwd / n, "copy_last_mse": copy / n, "fwd_over_copy": fwd / max(copy, 1e-12)}


@torch.no_grad()
def latent_actions(model, clips: LatentClips, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ℓ (N, A), the transition's actions flattened (N, 4*stride*A_robot), and the episode of each transition."""
    ells, acts, eps = [], [], []
    for batch in torch.utils.data.DataLoader(clips, batch_size=batch_size):
        ells.append(model(batch["z"])[:, 0])
        acts.append(batch["action"][:, 0].flatten(1))
        eps.append(batch["episode"] + EPISODE_SOURCE_STRIDE * batch["source"])
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


def _clips(model: LatentActionTokenizer, data, split: str, val_fraction: float) -> LatentClips:
    tok = model.checkpoint_meta["parents"]["tokenizer"]
    return LatentClips(data, tok["weights_hash"], clip_frames=2, split=split, val_fraction=val_fraction,
                       split_seed=model.checkpoint_meta.get("split", {}).get("salt", 0))


def evaluate_lat(checkpoint: str | Path, data: list[str | Path], *, val_fraction: float | None = None,
                 seed: int = 0) -> dict:
    """Forward error vs copy-last and the action probe (ℓ -> the transition's robot actions) on held-out episodes.
    The split is the one stored in the checkpoint."""
    model = LatentActionTokenizer.from_pretrained(checkpoint)
    meta = model.checkpoint_meta
    vf = val_fraction if val_fraction is not None else meta.get("split", {}).get("val_fraction", 0.1)
    sets = {s: _clips(model, data, s, vf) for s in ("train", "val")}
    result = {
        "checkpoint": str(checkpoint),
        "tokenizer": meta["parents"]["tokenizer"],
        "teacher": (meta.get("teacher") or {}).get("name", "none"),
        "quantizer": model.cfg.quantizer,
        "action_dim": model.cfg.action_dim,
        "action_reg": model.cfg.action_reg,
        "seed": meta.get("seed"),
        "step": meta.get("step"),
        **forward_errors(model, sets["val"]),
    }
    if sets["train"].has_actions:
        xtr, ytr, eptr = latent_actions(model, sets["train"])
        xva, yva, _ = latent_actions(model, sets["val"])
        r2, _ = ridge_probe(xtr, ytr, xva, yva, groups=eptr)
        result["action_probe_r2_ridge"] = float(np.nanmean(r2))
        result["action_probe_r2_mlp"] = mlp_probe(xtr, ytr, xva, yva, seed=seed)
        result["val_transitions"] = int(len(xva))
        result["ell_std"] = float(xtr.std(0).mean())
    return result


@torch.no_grad()
def raw_pair_features(clips: LatentClips, dims: int = 256, batch_size: int = 512, basis=None):
    """The raw pair (z_t, z_{t+1}) of each transition, flattened and projected on the top `dims` principal
    directions of the training pairs (pass `basis` from the training split): (features, actions, episodes, basis)."""
    feats, acts, eps = [], [], []
    for batch in torch.utils.data.DataLoader(clips, batch_size=batch_size):
        feats.append(batch["z"].flatten(1).float())
        acts.append(batch["action"][:, 0].flatten(1))
        eps.append(batch["episode"] + EPISODE_SOURCE_STRIDE * batch["source"])
    x = torch.cat(feats)
    if basis is None:
        mean = x.mean(0)
        _, _, v = torch.pca_lowrank(x - mean, q=min(dims, *x.shape), center=False)
        basis = (mean, v)
    mean, v = basis
    return ((x - mean) @ v).numpy(), torch.cat(acts).numpy(), torch.cat(eps).numpy(), basis


def evaluate_raw_pair(tokenizer_hash: str, data: list[str | Path], *, val_fraction: float = 0.1, split_seed: int = 0,
                      seed: int = 0) -> dict:
    """The reference row: the same action probe on the raw latent pair instead of ℓ (how much of the latents'
    action information ℓ keeps)."""
    tr = LatentClips(data, tokenizer_hash, clip_frames=2, split="train", val_fraction=val_fraction, split_seed=split_seed)
    va = LatentClips(data, tokenizer_hash, clip_frames=2, split="val", val_fraction=val_fraction, split_seed=split_seed)
    xtr, ytr, eptr, basis = raw_pair_features(tr)
    xva, yva, _, _ = raw_pair_features(va, basis=basis)
    r2, _ = ridge_probe(xtr, ytr, xva, yva, groups=eptr)
    return {"tokenizer_hash": tokenizer_hash, "teacher": (tr.meta.get("teacher") or {}).get("name", "none"),
            "features": f"raw pair (z_t, z_t+1), top {xtr.shape[1]} PCs",
            "action_probe_r2_ridge": float(np.nanmean(r2)), "action_probe_r2_mlp": mlp_probe(xtr, ytr, xva, yva, seed=seed),
            "val_transitions": int(len(xva))}


@torch.no_grad()
def transfer_picture(checkpoint: str | Path, data: str | Path, out: str | Path, *, pairs: int = 3,
                     horizon: int = 6, seed: int = 0) -> Path:
    """Rows per pair: A (decoded), B (decoded), B driven by A's latent actions. Columns: every 4th raw frame."""
    from PIL import Image, ImageDraw

    model = LatentActionTokenizer.from_pretrained(checkpoint)
    tok = load_parent_tokenizer(model.checkpoint_meta["parents"]["tokenizer"], checkpoint)
    clips = _clips(model, [data], "val", model.checkpoint_meta.get("split", {}).get("val_fraction", 0.1))
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


def _pm(values: list[float], digits: int) -> str:
    v = np.asarray([x for x in values if x is not None], float)
    if len(v) == 0:
        return "—"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else f"{v[0]:.{digits}f}"


def format_table(results: list[dict], references: list[dict] = ()) -> str:
    """One row per (tokenizer, ℓ kind, ℓ regulariser), mean ± std over the seeds (the runs) in that row; then one
    reference row per tokenizer (the probe on the raw latent pair)."""
    rows: dict[tuple, list[dict]] = {}
    for r in results:
        rows.setdefault((r["tokenizer"]["weights_hash"], r["quantizer"], r.get("action_reg", 0.0)), []).append(r)
    lines = ["| features | latents (teacher) | ℓ | ℓ reg | seeds | ℓ std | fwd / copy-last ↓ | action R² (MLP) ↑ | "
             "action R² (ridge) ↑ |", "|" + "---|" * 9]
    for (h, quant, reg), rs in rows.items():
        ell = f"{quant} ({rs[0]['action_dim']}-d)" if quant else f"continuous {rs[0]['action_dim']}-d"
        lines.append(
            f"| ℓ from LAT | {run_name(rs[0]['tokenizer']['path'])} ({rs[0]['teacher']}) | {ell} | {reg:g} | {len(rs)} | "
            f"{_pm([r.get('ell_std') for r in rs], 2)} | {_pm([r['fwd_over_copy'] for r in rs], 3)} | {_pm([r.get('action_probe_r2_mlp') for r in rs], 3)} | "
            f"{_pm([r.get('action_probe_r2_ridge') for r in rs], 3)} |"
        )
    names = {r["tokenizer"]["weights_hash"]: run_name(r["tokenizer"]["path"]) for r in results}
    for ref in references:
        lines.append(
            f"| {ref['features']} | {names.get(ref['tokenizer_hash'], ref['tokenizer_hash'])} ({ref['teacher']}) | — | — | "
            f"— | — | — | {ref['action_probe_r2_mlp']:.3f} | {ref['action_probe_r2_ridge']:.3f} |"
        )
    return "\n".join(lines)
