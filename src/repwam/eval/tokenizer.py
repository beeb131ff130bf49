"""`repwam eval tokenizer`: reconstruction, teacher agreement and a state probe on held-out episodes.

- PSNR and SSIM of the reconstructions.
- Teacher cosine: per-token cosine between a linear map of z and the reference teacher's features (layer-normed),
  the map fitted by ridge on training episodes, so aligned and reconstruction-only latents are compared alike
  (`teacher_cosine_head` is the trained W_align of an aligned tokenizer, when there is one).
- State probe: ridge regression from a latent frame (all its tokens) to the simulator state at the last raw
  frame it covers (hand position, gripper opening, object position, goal position); R² on held-out episodes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from repwam.data.dataset import ClipDataset, frames_to_model
from repwam.checkpoint import run_name
from repwam.data.lerobot import LeRobotDataset
from repwam.eval.probes import EPISODE_SOURCE_STRIDE, STATE_GROUPS, grouped_r2, ridge_probe
from repwam.tokenizer.teachers import build_teacher, build_teacher_from_spec, teacher_spec
from repwam.eval.metrics import clip_psnr, frame_psnr, recon_grid
from repwam.tokenizer.tokenize import clip_targets, encode_episode, load_align_head, load_tokenizer, teacher_cache

PROBE_COLUMNS = [c for cols in STATE_GROUPS.values() for c in cols]


def last_covered_frame(num_latent_frames: int, temporal_patch: int = 4) -> list[int]:
    """Index (within the clip) of the last raw frame each latent frame covers: 0, 4, 8, ..."""
    return [temporal_patch * j for j in range(num_latent_frames)]


@torch.no_grad()
def encode_split(model, ds: ClipDataset, grid, batch_size: int = 32, max_clips: int | None = None, progress=True):
    """Encode clips; return per-latent-frame features, state targets, teacher targets, metrics and a sample."""
    from pytorch_msssim import ssim

    if max_clips and len(ds) > max_clips:  # evenly over the whole split: episodes are stored task by task
        ds = torch.utils.data.Subset(ds, np.linspace(0, len(ds) - 1, max_clips).round().astype(int).tolist())
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    zs, states, teach, psnr, ssims, episodes = [], [], [], [], [], []
    sample = None
    for batch in tqdm(loader, desc="encoding", unit="batch", disable=not progress, leave=False):
        x = frames_to_model(batch["frames"])
        z = model.encode(x)  # (B, T', L, d): the latents later stages get (the VAE's normalised posterior mean)
        recon = model.decode(z).float().clamp(-1, 1)  # (B, T, 3, H, W)
        a, b = (recon + 1) / 2, (x + 1) / 2
        psnr.append(clip_psnr(recon, x))
        ssims.append(ssim(a.flatten(0, 1), b.flatten(0, 1), data_range=1.0, size_average=False, win_size=7))
        t_lat = z.shape[1]
        idx = last_covered_frame(t_lat)
        zs.append(z.flatten(2).reshape(-1, z.shape[2] * z.shape[3]))  # (B*T', L*d)
        states.append(batch["env_state"][:, idx].reshape(-1, batch["env_state"].shape[-1]))
        episodes.append(batch["episode"].repeat_interleave(t_lat) + EPISODE_SOURCE_STRIDE * batch["source"].repeat_interleave(t_lat))
        if "teacher" in batch:
            teach.append((z, clip_targets(batch["teacher"], grid)))
        if sample is None:
            sample = (x[:6], recon[:6])
    return {
        "z": torch.cat(zs).numpy(),
        "state": torch.cat(states).numpy(),
        "episode": torch.cat(episodes).numpy(),
        "psnr": torch.cat(psnr).numpy(),
        "ssim": torch.cat(ssims).numpy(),
        "teacher": teach,
        "sample": sample,
    }


def _token_pairs(teach, episodes: np.ndarray, max_tokens: int, seed: int = 0):
    """(z token, layer-normed teacher token, episode) triples, subsampled to max_tokens."""
    z = torch.cat([a.reshape(-1, a.shape[-1]) for a, _ in teach])
    t = torch.cat([b.reshape(-1, b.shape[-1]) for _, b in teach])
    t = F.layer_norm(t.float(), t.shape[-1:])
    ep = np.repeat(episodes, len(z) // len(episodes))  # episodes are per latent frame; tokens per frame are equal
    if len(z) > max_tokens:
        keep = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))[:max_tokens]
        z, t, ep = z[keep], t[keep], ep[keep.numpy()]
    return z.numpy(), t.numpy(), ep


def save_recon_grid(sample, path: Path) -> Path:
    from PIL import Image

    x, r = sample
    Image.fromarray(recon_grid(x, r, n=len(x))).save(path)
    return path


def reference_spec(checkpoints: list[str | Path], name: str) -> dict | str:
    """The teacher spec (layer, input size) an aligned checkpoint among `checkpoints` used, if its teacher is `name`:
    the cosine column then measures agreement with exactly the teacher that was aligned to."""
    from repwam.checkpoint import read_config

    for c in checkpoints:
        spec = read_config(c).get("teacher") or {}
        if spec.get("name") == name:
            return spec
    return name


def evaluate_tokenizer(checkpoint: str | Path, data: list[str | Path], *, reference_teacher: str | dict = "efficientnet-lite0",
                       val_fraction: float | None = None, max_train_clips: int = 1500, out_dir: str | Path | None = None,
                       progress: bool = True) -> dict:
    model, head = load_tokenizer(checkpoint), load_align_head(checkpoint)
    cfg = model.checkpoint_meta
    grid = model.latent_grid
    stored = cfg.get("split", {})
    val_fraction = val_fraction if val_fraction is not None else stored.get("val_fraction", 0.1)
    T, stride = cfg["num_frames"], cfg["frame_stride"]
    step = max(1, (T - 1) * stride)
    sets = {
        s: ClipDataset(data, num_frames=T, frame_stride=stride, split=s, val_fraction=val_fraction,
                       split_seed=stored.get("salt", 0), clip_step=step, progress=progress)
        for s in ("train", "val")
    }
    teacher = None
    if isinstance(reference_teacher, dict):
        teacher = build_teacher_from_spec(reference_teacher)
    elif reference_teacher != "none":
        teacher = build_teacher(reference_teacher)
    if teacher is not None:
        feats = [teacher_cache(root, teacher, grid) for root in data]
        for ds in sets.values():
            ds.attach("teacher", feats)
    enc = {s: encode_split(model, ds, grid, max_clips=max_train_clips if s == "train" else None, progress=progress)
           for s, ds in sets.items()}
    tr, va = enc["train"], enc["val"]
    r2, _ = ridge_probe(tr["z"], tr["state"][:, PROBE_COLUMNS], va["z"], va["state"][:, PROBE_COLUMNS], groups=tr["episode"])
    probe = grouped_r2(r2, STATE_GROUPS, PROBE_COLUMNS)
    result = {
        "checkpoint": str(checkpoint),
        "teacher": cfg["teacher"].get("name", "none"),
        "teacher_layer": cfg["teacher"].get("layer"),
        "align_weight": cfg.get("align_weight", 0.0),
        "step": cfg.get("step"),
        "val_clips": int(len(va["psnr"])),
        "psnr": float(va["psnr"].mean()),
        "ssim": float(va["ssim"].mean()),
        "state_probe_r2": probe,
    }
    if teacher is not None:
        ztr, ttr, eptr = _token_pairs(tr["teacher"], tr["episode"], 40000)
        zva, tva, _ = _token_pairs(va["teacher"], va["episode"], 40000, seed=1)
        _, pred = ridge_probe(ztr, ttr, zva, tva, groups=eptr)
        cos = (pred * tva).sum(1) / (np.linalg.norm(pred, axis=1) * np.linalg.norm(tva, axis=1) + 1e-8)
        result["reference_teacher"] = teacher_spec(teacher)
        result["teacher_cosine_linear"] = float(cos.mean())
        if head is not None and cfg["teacher"] == result["reference_teacher"]:
            from repwam.tokenizer.losses import teacher_cosine

            result["teacher_cosine_head"] = float(np.mean([float(teacher_cosine(z, t, head)) for z, t in va["teacher"]]))
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        name = run_name(checkpoint)
        result["recon_grid"] = str(save_recon_grid(va["sample"], out_dir / f"recon_{name}.png"))
    return result


def format_table(results: list[dict]) -> str:
    head = "| tokenizer | teacher (layer) | PSNR ↑ | SSIM ↑ | teacher cos (linear) ↑ | state R² mean ↑ | hand | gripper | object | goal |"
    lines = [head, "|" + "---|" * 10]
    for r in results:
        p = r["state_probe_r2"]
        teacher = r["teacher"] if r["teacher"] == "none" else f"{r['teacher']} ({r.get('teacher_layer')})"
        cos = r.get("teacher_cosine_linear", float("nan"))
        lines.append(
            f"| {run_name(r['checkpoint'])} | {teacher} | {r['psnr']:.2f} | {r['ssim']:.3f} | {cos:.3f} | "
            f"{p['mean']:.3f} | {p['hand']:.3f} | {p['gripper']:.3f} | {p['object']:.3f} | {p['goal']:.3f} |"
        )
    return "\n".join(lines)


@torch.no_grad()
def psnr_by_index(checkpoint: str | Path, data: list[str | Path], *, max_index: int = 8, max_episodes: int | None = None,
                  progress: bool = True, overrides: dict | None = None) -> dict:
    """Decoded PSNR by latent-frame index over whole held-out episodes, encoded and decoded in one causal pass each
    (the way `repwam tokenize` encodes them). Index j covers raw frame 0 (j = 0) or frames 4j-3 .. 4j; indices
    >= max_index are pooled into one bucket. Only real (unpadded) frames count. `overrides`: config fields to load
    the checkpoint with (e.g. {"context_window": None} to see the video VAE without its window)."""
    from repwam.data.dataset import split_episodes

    model = load_tokenizer(checkpoint, **(overrides or {}))
    meta = model.checkpoint_meta
    split = meta.get("split", {})
    stride, tp = int(meta.get("frame_stride", 1)), model.cfg.temporal_patch
    datasets = [LeRobotDataset(r) for r in data]
    pairs = split_episodes(datasets, "val", split.get("val_fraction", 0.1), split.get("salt", 0))
    if max_episodes:
        pairs = pairs[:: max(1, len(pairs) // max_episodes)][:max_episodes]
    sums = np.zeros(max_index + 1)
    counts = np.zeros(max_index + 1)
    for d, e in tqdm(pairs, desc="psnr by index", unit="ep", disable=not progress, leave=False):
        ds = datasets[d]
        frames = torch.from_numpy(ds.episode_frames(e, ds.camera_keys[0])[::stride]).permute(0, 3, 1, 2)
        z, n = encode_episode(model, frames)
        recon = model.decode(z[None])[0][:n].float()  # (n, 3, H, W)
        psnr = frame_psnr(recon, frames_to_model(frames)).numpy()  # (n,)
        index = np.minimum((np.arange(n) + tp - 1) // tp, max_index)  # latent frame of each raw frame
        np.add.at(sums, index, psnr)
        np.add.at(counts, index, 1)
    by_index = (sums / np.maximum(counts, 1)).tolist()
    return {"checkpoint": str(checkpoint), "teacher": (meta.get("teacher") or {}).get("name", "none"),
            "attn_window": getattr(model.cfg, "attn_window", getattr(model.cfg, "context_window", None)),
            "episodes": len(pairs),
            "psnr_by_index": by_index, "frames_by_index": counts.astype(int).tolist(),
            "max_drop_after_1_db": float(by_index[1] - min(by_index[2:])) if max_index >= 2 else None}


def plot_psnr_by_index(results: list[dict], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in results:
        y = r["psnr_by_index"]
        label = f"{run_name(r['checkpoint'])} (teacher {r['teacher']})"
        ax.plot(range(len(y)), y, marker="o", label=label)
    n = len(results[0]["psnr_by_index"])
    ax.set_xticks(range(n), [str(i) for i in range(n - 1)] + [f"{n - 1}+"])
    ax.set_xlabel("latent-frame index in the episode")
    ax.set_ylabel("decoded PSNR (dB)")
    ax.set_title("Whole held-out episodes, one causal pass each")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_index_table(results: list[dict]) -> str:
    n = len(results[0]["psnr_by_index"])
    head = "| tokenizer | window | " + " | ".join([str(i) for i in range(n - 1)] + [f"{n - 1}+"]) + " | drop after 1 (dB) |"
    lines = [head, "|" + "---|" * (n + 3)]
    for r in results:
        vals = " | ".join(f"{v:.2f}" for v in r["psnr_by_index"])
        lines.append(f"| {run_name(r['checkpoint'])} ({r['teacher']}) | {r['attn_window']} | {vals} | "
                     f"{r['max_drop_after_1_db']:.2f} |")
    return "\n".join(lines)
