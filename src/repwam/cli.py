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
app.add_typer(data_app, name="data")


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
