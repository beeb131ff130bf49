"""`repwam eval wam`: imagined futures on held-out episodes.

From each held-out episode's first latent frame and its instruction, the world action model rolls forward chunk by
chunk (its inference chunk size, Euler steps and KV cache), appending its own predictions to the history. Per
horizon step h = 1..H (latent frames; one latent frame = 4 raw steps) against the real episode:

- latent MSE of the imagined z_h vs the real z_h; the copy-last baseline repeats z_0;
- decoded PSNR of the frames latent frame h covers (tokenizer decoder, one causal pass over the imagined sequence);
- state-probe error: a ridge probe from one latent frame to the simulator state (hand, object), fitted on the
  training episodes' real latents, applied to the imagined latents and to the real ones: does the imagined future
  put the arm and the object where they really go? Mean absolute position error in metres.

Saves per-episode strips (real row over imagined row, decoded) and side-by-side GIFs, a table, and JSON.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from repwam.checkpoint import run_name
from repwam.data.dataset import frames_from_model, frames_to_model, split_episodes
from repwam.data.lerobot import LeRobotDataset
from repwam.errors import RepwamError
from repwam.eval.metrics import frame_psnr
from repwam.eval.probes import STATE_GROUPS
from repwam.lat.data import valid_latent_frames
from repwam.tokenizer.tokenize import load_latents, load_parent_tokenizer
from repwam.wam.model import WorldActionModel
from repwam.wam.text import TextEncoder

PROBED = {"hand": STATE_GROUPS["hand"], "object": STATE_GROUPS["object"]}


def fit_state_probe(zs, valid, datasets, pairs, tp: int, stride: int, max_samples: int = 6000, seed: int = 0):
    """Ridge probe: one latent frame (flattened) -> simulator hand and object position, on the given episodes."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cols = [c for cs in PROBED.values() for c in cs]
    xs, ys = [], []
    for d, e in pairs:
        env = np.asarray(datasets[d].episode_data(e)["observation.environment_state"], np.float32)
        n = valid_latent_frames(valid[d][e], tp)
        z = zs[d][e][:n]
        last = np.minimum(stride * tp * np.arange(n), len(env) - 1)  # last raw frame of each latent frame
        xs.append(z.flatten(1).numpy())
        ys.append(env[last][:, cols])
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(x) > max_samples:
        keep = np.random.default_rng(seed).choice(len(x), max_samples, replace=False)
        x, y = x[keep], y[keep]
    return make_pipeline(StandardScaler(), RidgeCV(alphas=10.0 ** np.arange(0, 6))).fit(x, y)


def probe_error(probe, z: torch.Tensor, target: np.ndarray) -> dict[str, np.ndarray]:
    """Per latent frame, mean absolute error (m) of the probe's hand and object positions: z (n, L, d), target (n, 6)."""
    pred = probe.predict(z.flatten(1).numpy())
    err = np.abs(pred - target)
    return {"hand": err[:, :3].mean(1), "object": err[:, 3:].mean(1)}


@torch.no_grad()
def imagine(model: WorldActionModel, z0: torch.Tensor, text_emb, text_mask, horizon: int, *, chunk: int | None = None,
            seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll the model forward `horizon` latent frames from z0 (B, L, d): (imagined z (B, H, L, d), ℓ (B, H, A))."""
    g = torch.Generator().manual_seed(seed)
    cache = model.new_cache(text_emb, text_mask, first=z0)  # z0 is the episode's first frame
    model.append(cache, z0[:, None])
    zs, ells, done = [], [], 0
    k = chunk or model.cfg.chunk_size
    while done < horizon:
        n = min(k, horizon - done)
        noise = {"z": torch.randn(z0.shape[0], n, *z0.shape[1:], generator=g),
                 "ell": torch.randn(z0.shape[0], n, model.cfg.action_dim, generator=g)}
        out = model.sample_chunk(cache, n, noise=noise)
        model.append(cache, out["z"])
        zs.append(out["z"])
        ells.append(out["ell"])
        done += n
    return torch.cat(zs, 1), torch.cat(ells, 1)


@torch.no_grad()
def evaluate_wam(checkpoint: str | Path, data: list[str | Path], *, horizon: int = 8, max_episodes: int = 40,
                 out_dir: str | Path | None = None, strips: int = 4, seed: int = 0, progress: bool = True) -> dict:
    model = WorldActionModel.from_pretrained(checkpoint)
    meta = model.checkpoint_meta
    tok_ref = meta["parents"]["tokenizer"]
    tokenizer = load_parent_tokenizer(tok_ref, checkpoint)
    encoder = TextEncoder(meta["text_encoder"]["name"], cache_dir=Path(data[0]) / "cache" / "text",
                          max_length=meta["text_encoder"].get("max_length"))
    datasets = [LeRobotDataset(r) for r in data]
    zs, valid = [], []
    for r in data:
        z, v, zmeta = load_latents(r, tok_ref["weights_hash"], what="the WAM evaluation", expected_from=tok_ref["path"])
        zs.append(z)
        valid.append(v)
    tp, stride = int(zmeta["temporal_patch"]), int(zmeta["frame_stride"])
    split = meta.get("split", {})
    vf, salt = split.get("val_fraction", 0.1), split.get("salt", 0)
    probe = fit_state_probe(zs, valid, datasets, split_episodes(datasets, "train", vf, salt), tp, stride)
    val = [(d, e) for d, e in split_episodes(datasets, "val", vf, salt)
           if valid_latent_frames(valid[d][e], tp) > horizon]
    if not val:
        raise RepwamError(f"no held-out episode has more than {horizon} latent frames; lower --horizon")
    if len(val) > max_episodes:
        val = [val[i] for i in np.linspace(0, len(val) - 1, max_episodes).round().astype(int)]

    keys = ("latent_mse", "copy_latent_mse", "psnr", "copy_psnr", "probe_hand", "probe_object", "real_probe_hand",
            "real_probe_object", "copy_probe_hand", "copy_probe_object")
    per_h = {k: np.zeros((len(val), horizon)) for k in keys}
    out_dir = Path(out_dir) if out_dir is not None else None
    pictures = []
    for i, (d, e) in enumerate(tqdm(val, desc="imagine", unit="ep", disable=not progress)):
        ds = datasets[d]
        real = zs[d][e][: horizon + 1]  # (H+1, L, d)
        emb, mask = encoder.encode(ds.episode_task(e))
        imagined, _ = imagine(model, real[:1], emb[None], mask[None], horizon, seed=seed + i)
        imagined = imagined[0]
        copy = real[:1].expand(horizon, -1, -1)
        per_h["latent_mse"][i] = (imagined - real[1:]).square().mean((1, 2)).numpy()
        per_h["copy_latent_mse"][i] = (copy - real[1:]).square().mean((1, 2)).numpy()
        env = np.asarray(ds.episode_data(e)["observation.environment_state"], np.float32)
        last = np.minimum(stride * tp * np.arange(1, horizon + 1), len(env) - 1)
        target = env[last][:, [c for cs in PROBED.values() for c in cs]]
        for name, zz in (("probe", imagined), ("real_probe", real[1:]), ("copy_probe", copy)):
            err = probe_error(probe, zz, target)
            per_h[f"{name}_hand"][i], per_h[f"{name}_object"][i] = err["hand"], err["object"]
        frames = torch.from_numpy(ds.episode_frames(e, ds.camera_keys[0])[:: stride][: 1 + tp * horizon])
        frames = frames_to_model(frames.permute(0, 3, 1, 2))  # (1 + tp H, 3, h, w)
        Lv = tokenizer.tokens_per_frame  # several views: the pictures and PSNR are of the first view's tokens
        dec = tokenizer.decode(torch.cat([real[:1], imagined])[None][:, :, :Lv])[0].float()
        dec_copy = tokenizer.decode(real[:1][None][:, :, :Lv])[0].float().expand_as(frames)
        p, pc = frame_psnr(dec[: len(frames)], frames).numpy(), frame_psnr(dec_copy, frames).numpy()
        for h in range(1, horizon + 1):
            covered = slice(tp * (h - 1) + 1, tp * h + 1)
            per_h["psnr"][i, h - 1], per_h["copy_psnr"][i, h - 1] = p[covered].mean(), pc[covered].mean()
        if out_dir is not None and len(pictures) < strips:
            pictures.append(save_strip(frames, dec, ds.episode_task(e), out_dir / f"imagined_{len(pictures)}", tp))
    table = {k: v.mean(0).tolist() for k, v in per_h.items()}
    result = {"checkpoint": str(checkpoint), "episodes": len(val), "horizon": horizon, "per_horizon": table,
              "pictures": [str(p) for p in pictures]}
    return result


def save_strip(frames: torch.Tensor, decoded: torch.Tensor, instruction: str, stem: Path, tp: int) -> Path:
    """Real frames over imagined (decoded) frames at every latent frame's last raw frame (PNG), and a side-by-side
    animation of every frame (GIF)."""
    from PIL import Image, ImageDraw

    stem.parent.mkdir(parents=True, exist_ok=True)
    real, imag = frames_from_model(frames), frames_from_model(decoded[: len(frames)])  # (n, 3, h, w) uint8
    idx = list(range(0, len(frames), tp))
    rows = [torch.cat([real[i] for i in idx], 2), torch.cat([imag[i] for i in idx], 2)]
    strip = torch.cat(rows, 1).permute(1, 2, 0).numpy()
    img = Image.fromarray(np.repeat(np.repeat(strip, 2, 0), 2, 1))
    canvas = Image.new("RGB", (img.width, img.height + 16), (255, 255, 255))
    canvas.paste(img, (0, 16))
    ImageDraw.Draw(canvas).text((2, 2), f"{instruction[:70]}  (top: real, bottom: imagined)", fill=(0, 0, 0))
    png = stem.with_suffix(".png")
    canvas.save(png)
    pair = torch.cat([real, imag], 3).permute(0, 2, 3, 1).numpy()  # (n, h, 2w, 3)
    gif = [Image.fromarray(np.repeat(np.repeat(f, 2, 0), 2, 1)) for f in pair]
    gif[0].save(stem.with_suffix(".gif"), save_all=True, append_images=gif[1:], duration=100, loop=0)
    return png


def format_table(result: dict) -> str:
    t = result["per_horizon"]
    H = result["horizon"]
    lines = ["| horizon (latent frames) | " + " | ".join(str(h) for h in range(1, H + 1)) + " |", "|---" * (H + 1) + "|"]
    rows = [("latent MSE ↓", "latent_mse", 4), ("  copy-last", "copy_latent_mse", 4), ("decoded PSNR ↑", "psnr", 2),
            ("  copy-last", "copy_psnr", 2), ("hand probe error (cm) ↓", "probe_hand", 2),
            ("  real latents", "real_probe_hand", 2), ("  copy-last", "copy_probe_hand", 2),
            ("object probe error (cm) ↓", "probe_object", 2), ("  real latents", "real_probe_object", 2),
            ("  copy-last", "copy_probe_object", 2)]
    for label, key, digits in rows:
        scale = 100.0 if "probe" in key else 1.0
        lines.append(f"| {label} | " + " | ".join(f"{scale * v:.{digits}f}" for v in t[key]) + " |")
    return f"{run_name(result['checkpoint'])}, {result['episodes']} held-out episodes\n\n" + "\n".join(lines)
