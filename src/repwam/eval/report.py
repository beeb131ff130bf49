"""A self-contained HTML report of a pipeline run directory (`repwam demo`, `repwam ablate`): one page with every
picture embedded (base64), no server, no internet, no JavaScript.

Sections, each present when its artefacts exist: what ran and for how long; training curves per stage (from
TensorBoard); tokenizer reconstructions, the probe table and PSNR by latent-frame index; imagined futures beside
real ones (animated GIFs); per-task closed-loop success of every evaluated policy with 95% Wilson intervals; rollout
videos; the exact configs, seeds and versions.
"""

from __future__ import annotations

import base64
import html
import json
import platform
import re
from pathlib import Path

import numpy as np

MAX_VIDEOS = 5  # rollout videos per policy (the demo records one per task)
MIME = {".png": "image/png", ".gif": "image/gif", ".mp4": "video/mp4"}


def _embed(path: Path, width: int | None = None, native: bool = False) -> str:
    """An embedded image or video; `native` keeps an image at its own pixel size, in a box that scrolls sideways
    (a wide strip of 64 x 64 frames stays readable)."""
    data = base64.b64encode(path.read_bytes()).decode()
    mime = MIME[path.suffix.lower()]
    if native:
        return (f'<div style="overflow-x:auto"><img style="max-width:none" alt="{html.escape(path.name)}" '
                f'src="data:{mime};base64,{data}"></div>')
    style = f' style="max-width:{width}px"' if width else ""
    if mime.startswith("video"):
        return f'<video controls loop muted{style} src="data:{mime};base64,{data}"></video>'
    return f'<img{style} alt="{html.escape(path.name)}" src="data:{mime};base64,{data}">'


def _md_table(md: str) -> str:
    """A markdown pipe table -> HTML."""
    rows = [r.strip().strip("|").split("|") for r in md.strip().splitlines() if r.strip().startswith("|")]
    rows = [r for r in rows if not all(set(c.strip()) <= set("-: ") for c in r)]
    if not rows:
        return f"<pre>{html.escape(md)}</pre>"
    head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def run_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar a training run logged to TensorBoard (`<run>/tb`): tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: [(e.step, float(e.value)) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def training_curves(runs_dir: Path, out: Path) -> list[Path]:
    """One PNG per run: its train/val scalars from TensorBoard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pictures = []
    for run in sorted(p for p in runs_dir.iterdir() if (p / "tb").is_dir()):
        scalars = run_scalars(run)
        tags = [t for t in scalars if t.split("/")[-1] in
                ("loss", "video", "action", "robot", "l1", "psnr", "fwd_mse", "teacher_cosine", "action_mse")]
        if not tags:
            continue
        fig, axes = plt.subplots(1, len(tags), figsize=(2.6 * len(tags), 2.3), squeeze=False)
        for ax, tag in zip(axes[0], tags):
            ev = scalars[tag]
            if tag in ("train/video", "train/action"):  # 0 is logged when that stream was dropped for the batch
                ev = [e for e in ev if e[1] != 0] or ev
            val = tag.startswith("val")  # a few points (one per save): markers, so a single one shows
            ax.plot([s for s, _ in ev], [v for _, v in ev], "o-" if val else "-", ms=3, color="C1" if val else "C0")
            ax.set_title(tag, fontsize=8)
            ax.tick_params(labelsize=7)
        fig.suptitle(run.name, fontsize=9)
        fig.tight_layout()
        path = out / f"curves_{run.name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        pictures.append(path)
    return pictures


def policy_label(run: str) -> str:
    """What a person reads for an evaluation directory: `wam_repwam_s0` -> "RepWAM (seed 0)", `plain_plain_s1` ->
    "plain baseline (seed 1)", `wam_recon_s0` -> "WAM, recon row (seed 0)"; other names stay as they are."""
    m = re.fullmatch(r"(?:wam|plain)_(\w+?)_s(\d+)", run)
    if m is None:
        return run
    row, seed = m.groups()
    name = {"repwam": "RepWAM", "plain": "plain baseline"}.get(row, f"WAM, {row} row")
    return f"{name} (seed {seed})"


def success_bars(results: dict[str, dict], path: Path) -> Path:
    """Per-task success with Wilson intervals, one bar group per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    tasks = list(next(iter(results.values()))["tasks"])
    x = np.arange(len(tasks) + 1)
    w = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(x)), 3.2))
    for i, name in enumerate(names):
        rows = [results[name]["tasks"][t] for t in tasks] + [results[name]["mean"]]
        rate = np.array([r["success_rate"] for r in rows])
        lo = np.clip(rate - np.array([r["ci95"][0] for r in rows]), 0, None)  # float round-off at 0 and 1
        hi = np.clip(np.array([r["ci95"][1] for r in rows]) - rate, 0, None)
        ax.bar(x + (i - (len(names) - 1) / 2) * w, rate, w, yerr=[lo, hi], capsize=2, label=policy_label(name))
    ax.set_xticks(x, [t.replace("-v3", "") for t in tasks] + ["MEAN"], rotation=40, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success (95% Wilson)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(run_dir: str | Path, *, title: str = "repwam run", timings: dict | None = None,
                 wall_seconds: float | None = None) -> Path:
    """Build `<run_dir>/report.html` from what the run directory holds; returns its path. timings: seconds per
    job; wall_seconds: the whole run's wall time (jobs run side by side, so less than their sum)."""
    run_dir = Path(run_dir)
    assets = run_dir / "report_assets"
    assets.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(title)}</h1>"]

    if timings:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v / 60:.1f} min</td></tr>" for k, v in timings.items())
        total = sum(timings.values()) / 60
        wall = (f"<tr><td><b>wall time of the run</b> (jobs side by side)</td><td><b>{wall_seconds / 60:.1f} min"
                f"</b></td></tr>") if wall_seconds else ""
        parts.append(f"<h2>What ran</h2><table><tr><th>job</th><th>wall time</th></tr>{rows}"
                     f"<tr><td>sum of jobs</td><td>{total:.1f} min</td></tr>{wall}</table>")

    evals = {p.parent.name: json.loads(p.read_text()) for p in sorted((run_dir / "eval").glob("*/results.json"))}
    if evals:
        plot = success_bars(evals, assets / "success.png")
        rows = "".join(
            f"<tr><td>{html.escape(policy_label(n))}</td><td>{r['mean']['success_rate']:.3f}</td>"
            f"<td>[{r['mean']['ci95'][0]:.2f}, {r['mean']['ci95'][1]:.2f}]</td><td>{r['mean']['episodes']}</td>"
            f"<td>{r['mean']['mean_length']:.0f}</td><td>{r['mean']['infer_ms_mean']:.1f}</td></tr>"
            for n, r in evals.items())
        parts.append("<h2>Closed-loop success (Meta-World evaluation layouts)</h2>"
                     "<table><tr><th>policy</th><th>mean success</th><th>95% Wilson</th><th>episodes</th>"
                     f"<th>mean length</th><th>ms / call</th></tr>{rows}</table>{_embed(plot, 900)}")
        videos = {n: sorted((run_dir / "eval" / n).glob("**/*.mp4"))[:MAX_VIDEOS] for n in evals}
        if any(videos.values()):  # one row per policy
            parts.append("<h2>Rollouts</h2>" + "".join(
                f"<h3>{html.escape(policy_label(n))}</h3><div>" + "".join(
                    f"<figure>{_embed(v, 180)}<figcaption>{html.escape(v.stem)}</figcaption></figure>" for v in vs)
                + "</div>" for n, vs in videos.items() if vs))

    tok = run_dir / "eval_tokenizer"
    if (tok / "table.md").exists():
        parts.append("<h2>Visual tokenizer</h2>" + "".join(_md_table(t) for t in (tok / "table.md").read_text()
                                                          .split("\n\n") if t.strip().startswith("|")))
        parts += [_embed(p, 700) for p in sorted(tok.glob("psnr_by_index*.png"))]
        recons = sorted(tok.glob("recon_*.png"))
        if recons:
            parts.append("<h3>Reconstructions of held-out clips (rows: real, decoded)</h3>")
            parts += [_embed(p, native=True) for p in recons]
    lat = run_dir / "eval_lat"
    if (lat / "table.md").exists():
        parts.append("<h2>Latent actions</h2>" + _md_table((lat / "table.md").read_text()))
        parts += [_embed(p, 700) for p in sorted(lat.glob("transfer_*.png"))[:2]]
    wam = run_dir / "eval_wam"
    if (wam / "table.md").exists():
        text = (wam / "table.md").read_text()
        parts.append("<h2>Imagined futures (top: real, bottom: imagined)</h2>" + _md_table(text))
        parts += [f"<figure>{_embed(g, 420)}</figure>" for g in sorted(wam.glob("imagined_*.gif"))[:4]]

    runs = run_dir / "runs"
    if runs.is_dir():
        curves = training_curves(runs, assets)
        if curves:
            parts.append("<h2>Training curves</h2>" + "".join(_embed(c, 900) for c in curves))
        configs = {p.parent.name: json.loads(p.read_text()) for p in sorted(runs.glob("*/run.json"))}
        parts.append("<h2>Exact configs</h2>" + "".join(
            f"<details><summary>{html.escape(n)}</summary><pre>{html.escape(json.dumps(c, indent=1))}</pre></details>"
            for n, c in configs.items()))

    import torch

    import repwam

    parts.append(f"<h2>Versions</h2><pre>repwam {repwam.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
                 f"python {platform.python_version()}, {platform.platform()}</pre>")
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
             "figure{display:inline-block;margin:4px}figcaption{font-size:11px}img,video{max-width:100%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    out = run_dir / "report.html"
    out.write_text(page)
    return out
