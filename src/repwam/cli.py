"""The `repwam` command line. Every user-facing error is printed as one clear line (exit code 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from repwam.errors import RepwamError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="World action models on representation tokenizers.")
data_app = typer.Typer(no_args_is_help=True, help="Generate, inspect and view LeRobot v3.0 datasets.")
train_app = typer.Typer(no_args_is_help=True, help="Train a stage: tokenizer, lat.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate a stage on held-out episodes.")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
lat_app = typer.Typer(no_args_is_help=True, help="Latent action tokenizer: label datasets with latent actions.")
app.add_typer(lat_app, name="lat")


def _optim(steps, batch_size, lr, seed, workers, bf16, save_every=None):
    from repwam.train.common import OptimConfig

    o = OptimConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, num_workers=workers, bf16=bf16)
    if save_every:
        o.save_every = save_every
    return o


@data_app.command("generate")
def data_generate(
    out: Path = typer.Option(..., "--out", "-o", help="output dataset directory"),
    tasks: str = typer.Option("mt10", help="mt10, mt50/all, or comma-separated task names"),
    episodes_per_task: int = typer.Option(5, help="successful expert demonstrations kept per task"),
    seed: int = typer.Option(0, help="base seed of the layouts"),
    camera: str = typer.Option("corner3", help="Meta-World camera"),
    image_size: int = typer.Option(64, help="square image size in pixels"),
    max_steps: int = typer.Option(500, help="episode step limit"),
    workers: int = typer.Option(2, help="worker processes (one env each)"),
    overwrite: bool = typer.Option(False, help="replace a complete dataset at --out"),
):
    """Record Meta-World scripted-expert demonstrations (randomized layouts) as a LeRobot v3.0 dataset."""
    from repwam.data.generate import GenerateConfig, generate

    cfg = GenerateConfig(
        tasks=tasks.split(","),
        episodes_per_task=episodes_per_task,
        seed=seed,
        camera=camera,
        image_size=image_size,
        max_steps=max_steps,
        workers=workers,
    )
    report = generate(out, cfg, overwrite=overwrite)
    short = {t: r["short_by"] for t, r in report["tasks"].items() if "short_by" in r}
    typer.echo(
        f"wrote {report['episodes']} episodes to {out}; expert failures discarded: {report['expert_failures']}; "
        f"{report['env_steps_per_s']} env steps/s with rendering"
    )
    if short:
        typer.echo(f"WARNING: too few successful demonstrations for {short}")


@data_app.command("info")
def data_info(root: Path, as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Episodes, frames, tasks, success counts and feature shapes of a dataset."""
    from repwam.data.inspect import dataset_info, format_info

    info = dataset_info(root)
    typer.echo(json.dumps(info, indent=1) if as_json else format_info(info))


@data_app.command("view")
def data_view(
    root: Path,
    episode: int = typer.Option(0, "--episode", "-e"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help=".mp4 or .gif (default: ROOT/views/episode_N.mp4)"),
    camera: Optional[str] = typer.Option(None, help="camera key (default: the first)"),
):
    """Write an episode as a video with its instruction on it."""
    from repwam.data.inspect import view_episode

    typer.echo(str(view_episode(root, episode, out, camera)))


@train_app.command("tokenizer")
def train_tokenizer_cmd(
    data: list[Path] = typer.Option(..., "--data", "-d", help="LeRobot v3.0 dataset(s); repeat for several"),
    out: Path = typer.Option(..., "--out", "-o", help="run directory"),
    preset: str = typer.Option("tiny", help="tiny | small | base"),
    teacher: str = typer.Option("efficientnet-lite0", help="frozen teacher to align to; none = reconstruction only"),
    teacher_layer: Optional[str] = typer.Option(None, help="teacher feature map (default: the teacher's default)"),
    teacher_path: Optional[str] = typer.Option(None, help="local weights for dinov2 / siglip2 / pe-core / privileged"),
    teacher_input_size: Optional[int] = typer.Option(None, help="resize frames to this for the teacher"),
    align_weight: float = typer.Option(1.0, help="lambda_align"),
    perceptual_weight: float = typer.Option(1.0),
    gan_weight: float = typer.Option(0.0, help="0.1 in the paper; off by default at tiny scale"),
    num_frames: int = typer.Option(5, help="frames per clip, T = 1 + 4k"),
    frame_stride: int = typer.Option(1),
    steps: int = typer.Option(3000),
    batch_size: int = typer.Option(16),
    lr: float = typer.Option(4e-4),
    save_every: int = typer.Option(500),
    seed: int = typer.Option(0),
    workers: int = typer.Option(0, help="DataLoader workers"),
    bf16: bool = typer.Option(False, help="bfloat16 autocast"),
    resume: bool = typer.Option(False, help="continue the run in --out"),
):
    """Train the RepViTok visual tokenizer (aligned to a frozen teacher, or reconstruction-only with --teacher none)."""
    from repwam.train.tokenizer import TokenizerTrainConfig, train_tokenizer

    cfg = TokenizerTrainConfig(
        preset=preset, teacher=teacher, teacher_layer=teacher_layer, teacher_path=teacher_path,
        teacher_input_size=teacher_input_size,
        align_weight=align_weight if teacher != "none" else 0.0, perceptual_weight=perceptual_weight,
        gan_weight=gan_weight, num_frames=num_frames, frame_stride=frame_stride,
        optim=_optim(steps, batch_size, lr, seed, workers, bf16, save_every),
    )
    typer.echo(f"checkpoint: {train_tokenizer(cfg, data, out, resume=resume)}")


@eval_app.command("tokenizer")
def eval_tokenizer_cmd(
    checkpoint: list[Path] = typer.Option(..., "--checkpoint", "-c", help="tokenizer checkpoint(s); repeat to compare"),
    data: list[Path] = typer.Option(..., "--data", "-d"),
    out: Path = typer.Option(Path("outputs/eval_tokenizer"), "--out", "-o", help="results directory"),
    reference_teacher: str = typer.Option(
        "efficientnet-lite0", help="teacher for the cosine column (with the layer/input size of an aligned checkpoint's)"
    ),
):
    """PSNR, SSIM, teacher cosine and state-probe R² on held-out episodes; prints a markdown table."""
    from repwam.eval import save_results
    from repwam.eval.tokenizer import evaluate_tokenizer, format_table, reference_spec

    ref = reference_spec(checkpoint, reference_teacher)
    results = [evaluate_tokenizer(c, data, reference_teacher=ref, out_dir=out) for c in checkpoint]
    save_results(results, out / "results.json")
    table = format_table(results)
    (out / "table.md").write_text(table + "\n")
    typer.echo(table)


@app.command("tokenize")
def tokenize_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c"),
    data: list[Path] = typer.Option(..., "--data", "-d"),
    name: Optional[str] = typer.Option(None, help="cache name (default: the tokenizer run's name)"),
):
    """Encode whole datasets into the latent cache (<data>/cache/latents/<name>/) used by the later stages."""
    from repwam.tokenizer.tokenize import tokenize_dataset

    for root in data:
        cache = tokenize_dataset(checkpoint, root, name=name)
        typer.echo(f"latents: {cache.path}")


@train_app.command("lat")
def train_lat_cmd(
    data: list[Path] = typer.Option(..., "--data", "-d"),
    out: Path = typer.Option(..., "--out", "-o"),
    latents: Optional[str] = typer.Option(None, help="latent cache name (written by `repwam tokenize`)"),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenizer checkpoint: tokenize the data first if not cached"),
    preset: str = typer.Option("tiny", help="tiny | paper"),
    quantizer: Optional[str] = typer.Option(None, help="fsq | vq: the quantized (LAPA-style) baseline"),
    action_dim: int = typer.Option(4),
    pool: str = typer.Option("attn", help="attn | mean | flatten"),
    steps: int = typer.Option(3000),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(1e-3),
    save_every: int = typer.Option(500),
    seed: int = typer.Option(0),
    resume: bool = typer.Option(False),
):
    """Train the latent action tokenizer (IDM + FDM) on frozen visual latents."""
    from repwam.tokenizer.tokenize import tokenize_dataset
    from repwam.train.lat import LATTrainConfig, train_lat

    if tokenizer is not None:
        latents = [tokenize_dataset(tokenizer, root, name=latents) for root in data][0].path.name
    if not latents:
        raise RepwamError("pass --latents NAME (a cache written by `repwam tokenize`) or --tokenizer CHECKPOINT")
    cfg = LATTrainConfig(preset=preset, latents=latents, quantizer=quantizer, action_dim=action_dim, pool=pool,
                         optim=_optim(steps, batch_size, lr, seed, 0, False, save_every))
    typer.echo(f"checkpoint: {train_lat(cfg, data, out, resume=resume)}")


@lat_app.command("label")
def lat_label_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c"),
    data: list[Path] = typer.Option(..., "--data", "-d"),
    latents: Optional[str] = typer.Option(None, help="latent cache (default: the one the LAT was trained on)"),
):
    """Write the latent action of every transition into <data>/cache/latent_actions/<lat run>/."""
    from repwam.train.lat import label_dataset

    for root in data:
        typer.echo(f"latent actions: {label_dataset(checkpoint, root, latents=latents).path}")


@eval_app.command("lat")
def eval_lat_cmd(
    checkpoint: list[Path] = typer.Option(..., "--checkpoint", "-c", help="LAT checkpoint(s); repeat to compare"),
    data: list[Path] = typer.Option(..., "--data", "-d"),
    out: Path = typer.Option(Path("outputs/eval_lat"), "--out", "-o"),
    picture: bool = typer.Option(True, help="save the transfer picture of each LAT"),
):
    """Forward error vs copy-last, action probe R², transfer pictures; prints a markdown table."""
    from repwam.eval import save_results
    from repwam.eval.lat import evaluate_lat, format_table, transfer_picture
    from repwam.tokenizer.tokenize import latent_cache_name

    results = []
    for c in checkpoint:
        r = evaluate_lat(c, data)
        if picture:
            r["transfer_picture"] = str(transfer_picture(c, data[0], out / f"transfer_{latent_cache_name(c)}.png"))
        results.append(r)
    save_results(results, out / "results.json")
    table = format_table(results)
    (out / "table.md").write_text(table + "\n")
    typer.echo(table)


def main() -> None:
    try:
        app(standalone_mode=False)
    except RepwamError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", fg="red", err=True)
        sys.exit(130)
    except Exception as e:  # click usage errors keep their own formatting
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise
