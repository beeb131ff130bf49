"""The `repwam` command line. Every user-facing error is printed as one clear line (exit code 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from repwam.config import parse_cli as _parse
from repwam.errors import RepwamError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="World action models on representation tokenizers.")
data_app = typer.Typer(no_args_is_help=True, help="Generate, inspect and view LeRobot v3.0 datasets.")
train_app = typer.Typer(no_args_is_help=True, help="Train a stage: tokenizer, lat, wam.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate a stage on held-out episodes.")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
lat_app = typer.Typer(no_args_is_help=True, help="Latent action tokenizer: label datasets with latent actions.")
app.add_typer(lat_app, name="lat")


TRAIN_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


STATUS_HELP = ("print where every job stands (done, to run, skipped; a training run's step and minutes so far, over "
               "every sitting) and run nothing")


def _train(stage: str, args: list[str]) -> None:
    """Parse `repwam train <stage>` options from the stage's config dataclass (tyro) and train."""
    from repwam.train.args import train_args

    cfg, data, out, resume, train = train_args(stage, args)
    typer.echo(f"checkpoint: {train(cfg, data, out, resume=resume)}")


@data_app.command("generate")
def data_generate(
    out: Path = typer.Option(..., "--out", "-o", help="output dataset directory"),
    tasks: str = typer.Option("mt10", help="mt10, mt50/all, or comma-separated task names"),
    episodes_per_task: int = typer.Option(5, help="successful expert demonstrations kept per task"),
    seed: int = typer.Option(0, help="base seed of the layouts"),
    camera: str = typer.Option("corner3", help="Meta-World camera(s), comma-separated: corner3,topview records both"),
    image_size: int = typer.Option(64, help="square image size in pixels"),
    max_steps: int = typer.Option(500, help="episode step limit"),
    workers: int = typer.Option(2, help="worker processes (one env each)"),
    action_noise: float = typer.Option(0.0, help="DART: std of Gaussian noise on the executed hand action (the "
                                       "expert's own action is recorded); 0 records the clean expert"),
    overwrite: bool = typer.Option(False, help="replace a complete dataset at --out"),
):
    """Record Meta-World scripted-expert demonstrations (randomized layouts) as a LeRobot v3.0 dataset."""
    from repwam.data.generate import GenerateConfig, generate

    cfg = GenerateConfig(
        tasks=tasks.split(","),
        episodes_per_task=episodes_per_task,
        seed=seed,
        cameras=tuple(camera.split(",")),
        image_size=image_size,
        max_steps=max_steps,
        workers=workers,
        action_noise=action_noise,
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


@data_app.command("video-only")
def data_video_only(root: Path, out: Path = typer.Option(..., "--out", "-o", help="new dataset directory")):
    """Copy a dataset keeping only its videos, instructions and seeds (action-free video for WAM pretraining)."""
    from repwam.data.inspect import video_only

    typer.echo(f"wrote {video_only(root, out)}")


@train_app.command("tokenizer", context_settings=TRAIN_CONTEXT, add_help_option=False)
def train_tokenizer_cmd(ctx: typer.Context):
    """Train the visual tokenizer: RepViTok aligned to a frozen teacher, reconstruction-only (--teacher none), or the
    conventional video VAE (--arch vae). Options: `repwam train tokenizer --help`."""
    _train("tokenizer", ctx.args)


@train_app.command("teacher")
def train_teacher_cmd(
    data: list[Path] = typer.Option(..., "--data", help="dataset(s) with observation.environment_state"),
    out: Path = typer.Option(..., "--out", "-o", help="directory of the fitted teacher"),
    steps: int = typer.Option(2000, help="AdamW steps"),
    batch_size: int = typer.Option(64, help="frames per step"),
    frame_stride: int = typer.Option(2, help="every n-th frame of each training episode"),
    seed: int = typer.Option(0),
):
    """Fit the privileged UPPER-BOUND teacher (a CNN supervised on the simulator's hand, gripper, object and goal
    positions) on the training episodes; then `repwam train tokenizer --recipe privileged --teacher-path OUT`."""
    from repwam.train.teacher import fit_privileged_teacher

    report = fit_privileged_teacher(data, out, steps=steps, batch_size=batch_size, frame_stride=frame_stride, seed=seed)
    r2 = ", ".join(f"{k} {v:.3f}" for k, v in report["val_r2"].items())
    typer.echo(f"privileged teacher -> {out}; held-out R² {r2} (mean {report['val_r2_mean']:.3f})")


@train_app.command("estimator")
def train_estimator_cmd(
    data: list[Path] = typer.Option(..., "--data", help="dataset(s) with observation.environment_state"),
    out: Path = typer.Option(..., "--out", "-o", help="directory of the fitted estimator"),
    camera: str = typer.Option("corner3", help="the view it reads"),
    frame_stride: int = typer.Option(4, help="fit on every n-th frame of each episode (4: latent-frame boundaries)"),
    folds: int = typer.Option(5, help="cross-validation and cross-fitting folds over episodes"),
    per_task: bool = typer.Option(True, help="one map per task (the instruction picks it); off: one for all tasks"),
    targets: str = typer.Option("all", help="all: every dimension of the simulator observation; positions: "
                                "Meta-World's positions, the objects' orientations held at their per-task median"),
):
    """Fit the state estimator: a ridge map from the frozen teacher's features of a camera frame to the simulator's
    observation (objects, goal), with cross-fitted estimates of every frame for `repwam train wam --stage adapt
    --state-key observation.estimated_state --estimator OUT`."""
    from repwam.train.estimator import EstimatorTrainConfig, fit_estimator

    report = fit_estimator(data, out, EstimatorTrainConfig(camera=camera, frame_stride=frame_stride, folds=folds,
                                                           per_task=per_task, targets=targets))
    cm = ", ".join(f"{k} {v} cm" for k, v in report.get("cv_error_cm", {}).items())
    typer.echo(f"state estimator ({len(report['maps'])} maps) -> {out}; cross-validated error {cm or report['rmse']}")


@eval_app.command("tokenizer")
def eval_tokenizer_cmd(
    checkpoint: list[Path] = typer.Option(..., "--checkpoint", "-c", help="tokenizer checkpoint(s); repeat to compare"),
    data: list[Path] = typer.Option(..., "--data", "-d"),
    out: Path = typer.Option(Path("outputs/eval_tokenizer"), "--out", "-o", help="results directory"),
    reference_teacher: str = typer.Option(
        "efficientnet-lite0", help="teacher for the cosine column (with the layer/input size of an aligned checkpoint's)"
    ),
    by_index: bool = typer.Option(True, help="also decoded PSNR by latent-frame index over whole held-out episodes"),
):
    """PSNR, SSIM, teacher cosine and state-probe R² on held-out episodes; prints a markdown table."""
    from repwam.eval import save_results
    from repwam.eval.tokenizer import (evaluate_tokenizer, format_index_table, format_table, plot_psnr_by_index,
                                       psnr_by_index, reference_spec)

    ref = reference_spec(checkpoint, reference_teacher)
    results = [evaluate_tokenizer(c, data, reference_teacher=ref, out_dir=out) for c in checkpoint]
    table = format_table(results)
    if by_index:
        by = [psnr_by_index(c, data) for c in checkpoint]
        for r, b in zip(results, by):
            r["psnr_by_index"] = b
        plot = plot_psnr_by_index(by, out / "psnr_by_index.png")
        table += "\n\n" + format_index_table(by) + f"\n\n(plot: {plot})"
    save_results(results, out / "results.json")
    (out / "table.md").write_text(table + "\n")
    typer.echo(table)


@app.command("tokenize")
def tokenize_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c"),
    data: list[Path] = typer.Option(..., "--data", "-d"),
):
    """Encode whole datasets into the latent cache (<data>/cache/latents/<tokenizer weights hash>/) of later stages."""
    from repwam.tokenizer.tokenize import tokenize_dataset

    for root in data:
        cache = tokenize_dataset(checkpoint, root)
        typer.echo(f"latents: {cache.path}")


@train_app.command("lat", context_settings=TRAIN_CONTEXT, add_help_option=False)
def train_lat_cmd(ctx: typer.Context):
    """Train the latent action tokenizer (IDM + FDM) on a tokenizer's frozen latents (--tokenizer CHECKPOINT).
    Options: `repwam train lat --help`."""
    _train("lat", ctx.args)


@train_app.command("wam", context_settings=TRAIN_CONTEXT, add_help_option=False)
def train_wam_cmd(ctx: typer.Context):
    """Train the world action model: --stage pretrain (z + ℓ, action-free video works), adapt (--init a pretrained
    WAM; denoise robot actions) or joint. Options: `repwam train wam --help`."""
    _train("wam", ctx.args)


@train_app.command("plain", context_settings=TRAIN_CONTEXT, add_help_option=False)
def train_plain_cmd(ctx: typer.Context):
    """Train the plain-policy baseline: image + state + instruction -> flow-matching action chunk, on raw frames
    (no tokenizer). Options: `repwam train plain --help`."""
    _train("plain", ctx.args)


@lat_app.command("label")
def lat_label_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c"),
    data: list[Path] = typer.Option(..., "--data", "-d"),
):
    """Write the latent action of every transition into <data>/cache/latent_actions/<LAT weights hash>/."""
    from repwam.lat.data import label_dataset
    from repwam.lat.model import LatentActionTokenizer
    from repwam.tokenizer.tokenize import tokenize_dataset

    lat = LatentActionTokenizer.from_pretrained(checkpoint)
    for root in data:
        tokenize_dataset(lat.checkpoint_meta["parents"]["tokenizer"]["path"], root)
        typer.echo(f"latent actions: {label_dataset(lat, root).path}")


@eval_app.command("lat")
def eval_lat_cmd(
    checkpoint: list[Path] = typer.Option(..., "--checkpoint", "-c", help="LAT checkpoint(s); repeat to compare"),
    data: list[Path] = typer.Option(..., "--data", "-d"),
    out: Path = typer.Option(Path("outputs/eval_lat"), "--out", "-o"),
    picture: bool = typer.Option(True, help="save the transfer picture of each LAT"),
    raw_pair: bool = typer.Option(True, help="add the reference row: the same probe on the raw latent pair"),
):
    """Forward error vs copy-last, action probe R², transfer pictures; prints a markdown table."""
    from repwam.eval import save_results
    from repwam.eval.lat import evaluate_lat, format_table, transfer_picture
    from repwam.checkpoint import run_name
    from repwam.lat.model import LatentActionTokenizer

    results = []
    for c in checkpoint:
        r = evaluate_lat(c, data)
        if picture:
            r["transfer_picture"] = str(transfer_picture(c, data[0], out / f"transfer_{run_name(c)}.png"))
        results.append(r)
    refs = []
    if raw_pair:  # one reference row per tokenizer: the probe on the raw latent pair
        from repwam.eval.lat import evaluate_raw_pair

        for h in dict.fromkeys(r["tokenizer"]["weights_hash"] for r in results):
            split = LatentActionTokenizer.from_pretrained(
                next(c for c, r in zip(checkpoint, results) if r["tokenizer"]["weights_hash"] == h)).checkpoint_meta["split"]
            refs.append(evaluate_raw_pair(h, data, val_fraction=split["val_fraction"], split_seed=split["salt"]))
    save_results(results + refs, out / "results.json")
    table = format_table(results, refs)
    (out / "table.md").write_text(table + "\n")
    typer.echo(table)


@eval_app.command("wam")
def eval_wam_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="world action model checkpoint"),
    data: list[Path] = typer.Option(..., "--data", "-d"),
    out: Path = typer.Option(Path("outputs/eval_wam"), "--out", "-o"),
    horizon: int = typer.Option(8, help="latent frames to imagine (one latent frame = 4 raw steps)"),
    episodes: int = typer.Option(40, help="held-out episodes (spread over the tasks)"),
    seed: int = typer.Option(0),
):
    """Imagined futures from held-out first frames: per-horizon latent MSE, decoded PSNR and state-probe error
    against copy-last; strips and GIFs of real vs imagined."""
    from repwam.eval import save_results
    from repwam.eval.wam import evaluate_wam, format_table

    result = evaluate_wam(checkpoint, data, horizon=horizon, max_episodes=episodes, out_dir=out, seed=seed)
    save_results([result], out / "results.json")
    table = format_table(result)
    (out / "table.md").write_text(table + "\n")
    typer.echo(table)


SETTING_HELP = ("a policy inference setting, KEY=VALUE, repeatable: RepWAM chunk=1 (latent frames planned and "
                "executed per plan, 4 actions each), execute=N (actions run per plan, a multiple of 4, at most "
                "chunk·4: plan further ahead than run), actions_only=false, action_steps=N / video_steps=N (Euler "
                "steps per chunk), robot_history=false (leave the executed actions out of the history: for a "
                "model trained with --robot-history-drop); plain execute=4 (actions run per plan); either, "
                "trained with a state estimator: estimator=DIR (another estimator of the same state in its "
                "place, e.g. refitted on the policy's own rollouts)")


@eval_app.command("policy")
def eval_policy_cmd(
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", "-c",
                                             help="policy checkpoint directory, or expert / random"),
    server: Optional[str] = typer.Option(None, help="evaluate the policy behind a server: ws://HOST:PORT"),
    tasks: str = typer.Option("mt10", help="mt10, mt50/all, or comma-separated task names"),
    episodes: int = typer.Option(20, help="episodes per task"),
    seed: int = typer.Option(0, help="base seed of the evaluation layouts (the same layouts for every policy)"),
    workers: int = typer.Option(2, help="worker processes, one policy and one env each (0: in this process)"),
    out: Path = typer.Option(..., "--out", "-o", help="results directory (a rerun with the same settings resumes)"),
    max_steps: Optional[int] = typer.Option(None, help="step limit per episode (default: Meta-World's 500)"),
    videos: int = typer.Option(1, help="rollout videos per task (the first episodes)"),
    demo_layouts: Optional[Path] = typer.Option(None, help="diagnostic: run on the layouts of this dataset's "
                                                "demonstrations instead of the evaluation layouts"),
    record: bool = typer.Option(False, help="keep the episodes (frames, robot and simulator state, executed "
                                "actions) as the LeRobot dataset OUT/rollouts: the states this policy visits"),
    setting: Optional[list[str]] = typer.Option(None, "--setting", help=SETTING_HELP),
):
    """Closed-loop success on Meta-World evaluation layouts: per-task success with 95% Wilson intervals, videos."""
    from repwam.eval.closed_loop import evaluate_policy, format_table, policy_spec
    from repwam.policy import parse_settings

    if (checkpoint is None) == (server is None):
        raise RepwamError("pass exactly one of --checkpoint DIR|expert|random and --server ws://HOST:PORT")
    spec = policy_spec(checkpoint or server, seed=seed, settings=parse_settings(setting))
    results = evaluate_policy(spec, tasks=tasks, episodes_per_task=episodes, seed=seed,
                              workers=workers, out_dir=out, max_steps=max_steps, videos_per_task=videos,
                              demo_layouts=demo_layouts, record=record)
    typer.echo(format_table(results) + f"\n\n(results: {out / 'results.json'}, plot: {results['plot']})")
    if record:
        r = results["rollouts"]
        typer.echo(f"rollouts: {r['episodes']} episodes -> {r['path']}" + (
            f" ({r['not_recorded']} ran before --record and are not in it)" if r["not_recorded"] else ""))


@app.command("ablate", context_settings=TRAIN_CONTEXT, add_help_option=False)
def ablate_cmd(ctx: typer.Context):
    """Train and evaluate every ablation row for several seeds (resumable: a rerun runs only what is missing),
    then write the table, the bar plot and per-task success. Options: `repwam ablate --help`."""
    from repwam.train.pipeline import (DEFAULT_ROWS, ROWS, PipelineConfig, ablation, ablation_summary, ablation_table,
                                       check_rows, plot_ablation)

    a = _parse(ctx.args, "repwam ablate", f"Rows: {', '.join(ROWS)}. Every (row, seed) is saved when it finishes.",
               PipelineConfig(), [("out", str, "outputs/ablation"), ("rows", list[str], list(DEFAULT_ROWS)),
                                  ("seeds", list[int], [0, 1, 2]), ("report_only", bool, False),
                                  ("status", bool, False, STATUS_HELP)])
    if a.status:  # where every job stands (and how far a training run got), nothing run or written
        typer.echo(ablation(a.out, a.cfg, a.rows, a.seeds, record=False).status_table())
        return
    if a.report_only:  # the (row, seed)s already under --out (run here, or results copied in): nothing runs
        check_rows(a.rows)
        if not (Path(a.out) / "eval").is_dir():
            raise RepwamError(f"--report-only: nothing evaluated under {a.out} (no {Path(a.out) / 'eval'} folder)")
    else:
        pipeline = ablation(a.out, a.cfg, a.rows, a.seeds)  # checks the rows and the dataset, creates --out
    try:
        if not a.report_only:
            pipeline.run()
    finally:
        summary = ablation_summary(a.out, a.rows, a.seeds)
        table = ablation_table(summary)
        (Path(a.out) / "table.md").write_text(table + "\n")
        (Path(a.out) / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        if summary:
            plot_ablation(summary, Path(a.out) / "ablation.png")
        typer.echo(table)


@app.command("demo", context_settings=TRAIN_CONTEXT, add_help_option=False)
def demo_cmd(ctx: typer.Context):
    """From nothing to a closed-loop success rate: demonstrations, tokenizer, latent actions, world action model,
    adaptation and closed-loop evaluation, beside the plain-policy baseline; then `<out>/report.html`.
    Resumable (a rerun reuses finished stages; --fresh starts over). Options: `repwam demo --help`."""
    import shutil

    from repwam.eval.report import write_report
    from repwam.train.pipeline import DEMO, demo

    a = _parse(ctx.args, "repwam demo", "Every stage at the tiny preset.", DEMO,
               [("out", str, "outputs/demo"), ("fresh", bool, False),
                ("status", bool, False, STATUS_HELP)])
    if a.status:
        typer.echo(demo(a.out, a.cfg, record=False).status_table())
        return
    if a.fresh and Path(a.out).exists():
        shutil.rmtree(a.out)
    pipeline = demo(a.out, a.cfg)
    pipeline.run()
    report = write_report(a.out, title="repwam demo", timings=pipeline.timings(), wall_seconds=pipeline.wall_seconds())
    typer.echo(f"report: {report}")


@app.command("serve")
def serve_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="policy checkpoint directory"),
    host: str = typer.Option("127.0.0.1", help="interface to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, help="TCP port (0: any free port, printed at start)"),
    max_connections: int = typer.Option(16, help="concurrent clients; each holds its own policy state"),
    setting: Optional[list[str]] = typer.Option(None, "--setting", help=SETTING_HELP),
):
    """Serve a policy over openpi's websocket protocol (msgpack + numpy; GET /healthz answers 200)."""
    import dataclasses
    import logging

    from repwam.serve.server import PolicyServer, ServeLimits, checkpoint_policy_factory

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = dataclasses.replace(ServeLimits(), max_connections=max_connections)
    from repwam.policy import parse_settings

    make_policy, metadata = checkpoint_policy_factory(checkpoint, **parse_settings(setting))
    PolicyServer(make_policy, host, port, metadata=metadata, limits=limits).serve_forever()


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


if __name__ == "__main__":
    main()
