"""Whole pipelines as resumable job graphs: `repwam ablate` (every row of the ablation table, >= 3 seeds) and
`repwam demo` (the method beside the plain-policy baseline, end to end).

A job is one `repwam ...` command with the jobs it needs and the file that proves it finished. The scheduler runs
up to `jobs` of them at once (one single-thread process per core is fastest on a small CPU), each in its own
process with `OMP_NUM_THREADS=1`, its output in `<out>/logs/<job>.log`. `jobs` is the number of cores: a closed-loop
evaluation takes up to `eval_workers` of them (one environment process each), as many as are free when it starts;
a job every other job left waits on (the tokenizer of a one-row chain), started with nothing else running, gets the
free cores as threads (`OMP_NUM_THREADS`), since no other job could use them before it finishes.
A job whose proof exists is skipped; a training job whose run directory holds a training state is resumed, so a
pipeline interrupted at any point picks up where it stopped when run again, across sittings.

Rows (the paper's ablations, in one harness, on the same demonstrations and evaluation layouts):
    repwam       RepViTok aligned to the frozen teacher -> LAT -> WAM pretrain (z + ℓ) -> adapt to robot actions,
                 ℓ left out of the adaptation (its default since 2026-12-07; every row that adapts follows it)
    recon        the same on the reconstruction-only tokenizer (λ_align = 0, "ViTok")
    vae          the same on the conventional causal 3-D conv video VAE (the paper's WAN2.2-VAE row)
    no_ell       aligned tokenizer -> WAM pretrain on z only (no ℓ stream) -> adapt
    joint        aligned tokenizer -> LAT -> one stage: z + ℓ + robot actions from scratch
    no_state     repwam without the proprioceptive-state token in adaptation (shares repwam's pretraining)
    plain        the image-to-action-chunk baseline (same flow-matching head, state and language inputs)
    plain_goal   a privileged reference, not a baseline: the plain policy whose state token is the whole simulator
                 observation (object poses and the goal), so it need not see the goal; it separates "cannot see
                 where to go" from "cannot act"
    plain_aux    the plain policy trained with a privileged read-out (`repwam train plain --aux-key
                 observation.environment_state`): the simulator state is a training target only, the deployed policy
                 sees what `plain` sees
    plain_est    plain_aux whose read-out also goes back into the memory as a token (`--aux-feedback`): the policy
                 acts on its own estimate of the simulator state (deployable: the estimate comes from the camera)
    repwam_aux   repwam whose adaptation also reads the simulator state out of the state tokens (`--aux-key`,
                 a training target only, as plain_aux); shares repwam's pretraining
    first_frame  repwam whose adaptation also cross-attends to the episode's first latent frame
                 (`--first-frame-context`: the layout as first seen, which the attention window forgets);
                 shares repwam's pretraining
    teacher      a reference: the same chain on the frozen teacher's features as the latents (`--recipe teacher`,
                 repwam.tokenizer.frozen: what a perfectly aligned tokenizer would give; nothing trained, no decoder)
    repwam_goal  a privileged reference, as plain_goal: repwam whose state token is the whole simulator observation
                 (`--state-key observation.environment_state`), so the objects' and the goal's positions need no
                 perception; shares repwam's pretraining. With plain_goal it separates "cannot see" from "cannot act"
                 for the world action model's action expert
    repwam_est   repwam whose state token reads the robot's state followed by the simulator observation as a state
                 estimator reads it from the camera (`repwam train estimator`: ridge on the frozen teacher's
                 features, fitted on the demonstrations' simulator state, cross-fitted estimates in training);
                 deployable (camera and robot state only), privileged in training; shares repwam's pretraining.
                 `estimator_cameras` and `estimator_layouts_per_task` give its estimator more views and more
                 labelled layouts than the demonstrations' camera
    plain_estimator  the plain policy whose state reads the robot's state followed by repwam_est's estimator's reading
                 (`repwam train plain --state-key observation.estimated_state --estimator ...`): repwam_est's
                 baseline, the same inputs without the world action model
    no_forecast  repwam whose adaptation never trains the forecast (`--video-drop 1`: the noisy future frames are left
                 out of every batch; ℓ as the adaptation's default): does learning to forecast beside the actions
                 shape what the action expert reads? Shares repwam's pretraining
    latent_policy  the action expert alone on the aligned tokenizer's latents, from scratch: no pretraining, no ℓ,
                 no forecast (`--recipe no-latent-actions --video-drop 1`, the plain policy's steps): what the
                 semantic latents give a policy without the world model. With no_forecast and plain it splits
                 RepWAM's lead over the plain policy between the latents, the pretraining and the forecast
    joint_no_ell  latent_policy that also learns to forecast the future latents (`--recipe no-latent-actions`, the
                 default video drop): the one-stage model without ℓ, the paper's joint variant with no latent
                 actions, for the plain policy's steps. Beside latent_policy it measures what training the forecast
                 from scratch adds to the action expert; beside joint, what ℓ does
    latent_policy_ell  latent_policy that also denoises ℓ beside the actions, from scratch (`--recipe joint
                 --video-drop 1`: no pretraining, no forecast): no_forecast without the pretraining. Beside
                 latent_policy and no_forecast it splits what costs the action expert between ℓ and the pretraining
    adapt_no_ell  repwam whose adaptation leaves ℓ out of every batch (`--ell-drop 1`: the robot's actions take the
                 latent actions' place at stage 2; the forecast is still trained). The adaptation's default since
                 2026-12-07, so now repwam by another name, kept for the results and commands that name it; shares
                 repwam's pretraining
    repwam_ell   repwam whose adaptation also denoises ℓ beside the actions (`--ell-drop 0.25`: ℓ left out of a
                 quarter of the batches), the adaptation's default until 2026-12-07 (results of `repwam`, and of the
                 rows that adapt, from before then). Shares repwam's pretraining
    latent_policy_recon  latent_policy on the reconstruction-only tokenizer's latents (recon's tokenizer): does the
                 alignment make the latents a better policy input, or would any frozen pretrained encoder do?
    latent_policy_teacher  latent_policy on the frozen teacher's features (teacher's latents): what the tokenizer
                 keeps of them for a policy
Tokenizers and LATs are trained once (seed 0) and shared by every seed of a row; the world action model, the
adaptation and the plain policy are trained per seed, then evaluated in closed loop on the same layouts.
With `video_episodes_per_task` > 0 the tokenizer, the LAT and the WAM's pretraining see that many episodes per task
as video only (a second dataset whose first layouts are the demonstrations'); the rest sees the demonstrations.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from repwam.errors import RepwamError
from repwam.serve import ENV_STATE_KEY, EST_STATE_KEY
from repwam.train.progress import read_progress

ROWS = ("repwam", "recon", "vae", "no_ell", "joint", "plain", "no_state", "plain_goal", "plain_aux", "plain_est",
        "repwam_aux", "first_frame", "repwam_goal", "teacher", "repwam_est", "plain_estimator", "no_forecast",
        "latent_policy", "joint_no_ell", "latent_policy_recon", "latent_policy_teacher", "latent_policy_ell",
        "adapt_no_ell", "repwam_ell")
LATENT_POLICY_ROWS = ("latent_policy", "latent_policy_recon", "latent_policy_teacher")  # the expert alone, from scratch
DEFAULT_ROWS = ROWS[:7]  # the table's rows; the privileged ones (state as input or as a target) run when asked for
PLAIN_ROWS = ("plain", "plain_goal", "plain_aux", "plain_est", "plain_estimator")  # `repwam train plain`: plain_<row>_s<seed>
PLAIN_ARGS = {"plain": [], "plain_goal": ["--state-key", ENV_STATE_KEY], "plain_aux": ["--aux-key", ENV_STATE_KEY],
              "plain_est": ["--aux-key", ENV_STATE_KEY, "--aux-feedback"]}


def eval_run(row: str, seed: int) -> str:
    """The run (and `<out>/eval/<run>/`) that holds the closed-loop result of (row, seed)."""
    return f"plain_{row}_s{seed}" if row in PLAIN_ROWS else f"wam_{row}_s{seed}"


@dataclass
class PipelineConfig:
    tasks: str = "mt10"
    cameras: str = "corner3"  # comma-separated Meta-World cameras: every stage then sees all of them
    episodes_per_task: int = 20  # demonstrations per task
    # > 0: the tokenizer, the LAT and the WAM's pretraining see this many episodes per task as video only (their
    # actions are never read); adaptation, the joint row and the plain policy see the episodes_per_task
    # demonstrations, which are the first layouts of the same seeds (the common case: many videos, few demonstrations)
    video_episodes_per_task: int = 0
    action_noise: float = 0.0  # DART demonstrations: std of the noise on the executed hand action (0: clean expert)
    image_size: int = 64
    preset: str = "tiny"
    device: str = "cpu"
    tok_steps: int = 2000
    lat_steps: int = 1500
    wam_steps: int = 3000  # pretraining (and the joint row's only stage)
    adapt_steps: int = 2000
    plain_steps: int = 5000  # the baseline's steps (the demo gives it the WAM's pretraining + adaptation wall time)
    eval_episodes: int = 20  # closed-loop episodes per task
    eval_seed: int = 0
    max_steps: int | None = None  # per closed-loop episode (None: Meta-World's 500)
    videos_per_task: int = 1
    # cores this pipeline may use: processes at once, and a job left alone takes them all as threads; give each of
    # two pipelines run side by side its share, or their threads oversubscribe the cores (several times slower)
    jobs: int = 2
    eval_workers: int = 2  # at most this many environment processes per closed-loop evaluation (the free cores)
    # periodic snapshots each training run keeps, to evaluate a long run's earlier steps (None: each stage's default)
    keep_snapshots: int | None = None
    # more `repwam train tokenizer` options for every tokenizer the chain trains, e.g. "--align-weight 4"; they come
    # after the row's recipe and override it (an --align-weight would undo the recon row's 0). A run under --out
    # records them (pipeline.json) and another value there is refused (its tokenizers are trained). On the command
    # line the value joins the flag with `=` (`--tok-args="--align-weight 4"`): a separate "--..." reads as a flag
    tok_args: str = ""
    # more `repwam train wam` options for every WAM the chain builds (pretraining and the joint row; adaptation keeps
    # the pretrained model's), e.g. "--patch-size 4" beside tok_args "--patch-size 4" (a 16x16 grid, 16 video tokens
    # per frame as the default 8x8 with 2). Recorded like tok_args
    wam_args: str = ""
    # more `repwam train wam` options for every adaptation the chain runs (after the row's own, so they override
    # it), e.g. "--video-weight 4": the forecast weighed 4x beside the actions. Recorded like tok_args
    adapt_args: str = ""
    # > 0: the repwam_est row's state estimator is fitted on the demonstrations and on this many more episodes per
    # task generated with another base seed (`repwam data generate --seed 1`: layouts that are neither the
    # demonstrations' nor evaluation's), their simulator state read as labels and their actions never; only the
    # estimator sees them (perception data, which a simulator gives for free). Recorded like tok_args
    estimator_layouts_per_task: int = 0
    # comma-separated Meta-World cameras the repwam_est row's estimator reads (empty: the first of `cameras`); views
    # the WAM does not see are rendered for the estimator only (the demonstrations again, the same episodes, and the
    # extra layouts), and the deployed policy asks for them. Recorded like tok_args
    estimator_cameras: str = ""
    # what the repwam_est row's estimator estimates (`repwam train estimator --targets`): all, or positions (the
    # objects' orientations held at each task's median). Recorded like tok_args
    estimator_targets: str = "all"
    # wall-time target (minutes) for one row's chain data -> ... -> evaluation: every training stage gets a share of
    # it (BUDGET_SHARES, after FIXED_MINUTES for the rest) as optim.minutes, its steps raised to STEPS_CAP_FACTOR x
    # the settings above as the cap, so the stages train for as long as the budget allows (None: the step counts)
    budget_minutes: float | None = None


# a job's run.json settings that are where its inputs are (the jobs it needs, checked in their own right; a run linked
# in from another --out records that one's paths) and optimisation settings that are how a run runs, not what it
# learns: neither is compared with what a job asks for (Pipeline.check_recorded)
INPUT_PATHS = ("data", "tokenizer", "lat", "init", "estimator", "teacher_path")
HOW_IT_RUNS = ("num_workers", "device", "compile", "activation_checkpointing", "keep_snapshots", "log_every",
               "image_every", "save_every", "val_items")


# budget_minutes: what the chain spends outside training loops (data, teacher features, process start-ups,
# tokenizing, the closed-loop evaluation), measured on the demo (5 tasks x 15 demonstrations, 2 cores, 64x64), and
# how the rest is shared between the training stages of the chain (about their shares of the default demo's time)
FIXED_MINUTES = 6.0
BUDGET_SHARES = {"tokenizer": 0.40, "lat": 0.08, "wam": 0.26, "adapt": 0.26}  # plain: wam + adapt (same wall time)
STEPS_CAP_FACTOR = 10


@dataclass
class Job:
    name: str
    args: list[str]  # `repwam` arguments
    done: Path  # exists when the job has finished
    needs: list[str] = field(default_factory=list)
    max_cores: int = 1  # > 1: the job's `--workers` value is set to the cores free when it starts
    # (a job of max_cores 1 that every other job left waits on gets the free cores as threads: see _cores)

    @property
    def run_dir(self) -> Path | None:
        """A training job's run directory (its `--out`); None for other jobs."""
        return Path(self.args[self.args.index("--out") + 1]) if self.args[0] == "train" else None


class Pipeline:
    def __init__(self, out: str | Path, cfg: PipelineConfig):
        self.out, self.cfg = Path(out), cfg
        self.jobs: dict[str, Job] = {}
        self._procs: set[subprocess.Popen] = set()  # the running jobs (see _stop_jobs)
        self._lock = threading.Lock()
        views = "" if cfg.cameras == "corner3" else "@" + cfg.cameras.replace(",", "+")
        self.data = self.out / "data" / (cfg.tasks.replace(",", "+") + views)
        if cfg.video_episodes_per_task and cfg.video_episodes_per_task < cfg.episodes_per_task:
            raise RepwamError(f"video_episodes_per_task={cfg.video_episodes_per_task} must be 0 (pretrain on the "
                              f"demonstrations) or >= episodes_per_task={cfg.episodes_per_task}: the videos include "
                              "the demonstrations' layouts")
        # what the tokenizer, the LAT and the WAM's pretraining train on
        self.video = self.data.with_name(self.data.name + f"@video{cfg.video_episodes_per_task}") \
            if cfg.video_episodes_per_task else self.data

    # ------------------------------------------------------------------ building blocks
    def add(self, name: str, args: list[str], done: Path, needs: list[str] = (), max_cores: int = 1) -> str:
        if name not in self.jobs:
            self.jobs[name] = Job(name, [str(a) for a in args], done, list(needs), max_cores)
        return name

    def run_dir(self, name: str) -> Path:
        return self.out / "runs" / name

    def ckpt(self, name: str) -> Path:
        return self.run_dir(name) / "checkpoints" / "last"

    def budget(self, share: str) -> list:
        """`--optim.minutes` of a training stage under budget_minutes (nothing without one)."""
        c = self.cfg
        if c.budget_minutes is None:
            return []
        left = c.budget_minutes - FIXED_MINUTES
        if left < 2:
            raise RepwamError(f"budget_minutes={c.budget_minutes:g} leaves {left:g} min for training after the "
                              f"~{FIXED_MINUTES:g} min the rest of the chain takes; give at least {FIXED_MINUTES + 2:g}")
        minutes = left * (BUDGET_SHARES["wam"] + BUDGET_SHARES["adapt"] if share == "plain" else BUDGET_SHARES[share])
        return ["--optim.minutes", round(minutes, 2)]

    def train(self, stage: str, name: str, steps: int, extra: list, needs: list[str], seed: int = 0,
              share: str | None = None, data: Path | None = None) -> str:
        budget = self.budget(share or stage)
        if budget:
            steps *= STEPS_CAP_FACTOR
        args = ["train", stage, "--data", data or self.data, "--out", self.run_dir(name), "--optim.steps", steps,
                "--optim.seed", seed, "--optim.device", self.cfg.device, *budget, *extra]
        if self.cfg.keep_snapshots is not None:
            args += ["--optim.keep-snapshots", self.cfg.keep_snapshots]
        # the proof is the final step's checkpoint, not just `last` (which exists from the first save on)
        return self.add(f"train-{name}", args, self.run_dir(name) / "finished", needs)

    def dataset(self, video: bool = False) -> str:
        """The demonstrations' generation job, or (video) that of the pretraining videos (the demonstrations'
        job itself when there are no separate videos)."""
        c = self.cfg
        if video and self.video == self.data:
            video = False
        path, episodes = (self.video, c.video_episodes_per_task) if video else (self.data, c.episodes_per_task)
        self._check_dataset(path, episodes)
        return self.add("data-video" if video else "data",
                        ["data", "generate", "--tasks", c.tasks, "--episodes-per-task", episodes,
                         "--camera", c.cameras, "--image-size", c.image_size, "--out", path,
                         *(["--action-noise", c.action_noise] if c.action_noise else [])],
                        path / "meta" / "info.json")

    def _check_dataset(self, path: Path, episodes: int, cameras: str | None = None) -> None:
        """A dataset already at `path` must be the one these settings would generate: every later job (and
        every result copied in) is keyed by `out` alone, so other settings there would be mixed in silently."""
        f = path / "meta" / "repwam_generation.json"
        if not f.exists():
            return
        have, c = json.loads(f.read_text()).get("settings", {}), self.cfg
        want = {"episodes_per_task": episodes, "image_size": c.image_size,
                "cameras": [x.strip() for x in (cameras or c.cameras).split(",")], "action_noise": c.action_noise}
        have.setdefault("action_noise", 0.0)  # datasets from before the setting
        diff = {k: (have.get(k), v) for k, v in want.items() if k in have and have[k] != v}
        if diff:
            raise RepwamError(f"{path} was generated with " + ", ".join(f"{k}={a}" for k, (a, _) in diff.items())
                              + "; this pipeline asks for " + ", ".join(f"{k}={b}" for k, (_, b) in diff.items())
                              + ": use another --out (or delete that dataset and everything trained on it)")

    def tokenizer(self, recipe: str) -> str:
        return self.train("tokenizer", f"tok_{recipe}", self.cfg.tok_steps,
                          ["--recipe", recipe, "--preset", self.cfg.preset, *shlex.split(self.cfg.tok_args)],
                          [self.dataset(video=True)],
                          data=self.video)

    def lat(self, tok_recipe: str) -> str:
        tok = self.tokenizer(tok_recipe)
        return self.train("lat", f"lat_{tok_recipe}", self.cfg.lat_steps, ["--tokenizer", self.ckpt(f"tok_{tok_recipe}")],
                          [tok], data=self.video)

    def evaluate(self, run: str, needs: list[str]) -> str:
        c = self.cfg
        out = self.out / "eval" / run
        args = ["eval", "policy", "--checkpoint", self.ckpt(run), "--tasks", c.tasks, "--episodes", c.eval_episodes,
                "--seed", c.eval_seed, "--workers", c.eval_workers, "--out", out, "--videos", c.videos_per_task]
        if c.max_steps:
            args += ["--max-steps", c.max_steps]
        return self.add(f"eval-{run}", args, out / "results.json", needs, max_cores=c.eval_workers)

    def row(self, row: str, seed: int) -> str:
        """The jobs of one (row, seed); returns the evaluation job."""
        c, tag = self.cfg, f"{row}_s{seed}"
        if row in PLAIN_ROWS:
            run, needs = eval_run(row, seed), [self.dataset()]
            args = ["--preset", c.preset, *PLAIN_ARGS.get(row, [])]
            if row == "plain_estimator":  # repwam_est's estimator, the same one
                needs.append(self.estimator())
                args += ["--state-key", EST_STATE_KEY, "--estimator", self.run_dir("estimator")]
            return self.evaluate(run, [self.train("plain", run, c.plain_steps, args, needs, seed)])
        tok_recipe = {"repwam": "default", "recon": "none", "vae": "vae", "teacher": "teacher",
                      "latent_policy_recon": "none", "latent_policy_teacher": "teacher"}.get(row, "default")
        lat = self.lat(tok_recipe)
        models = ["--tokenizer", self.ckpt(f"tok_{tok_recipe}"), "--lat", self.ckpt(f"lat_{tok_recipe}"),
                  "--preset", c.preset]
        never = ("no_forecast", "latent_policy_ell", *LATENT_POLICY_ROWS)
        no_forecast = ["--video-drop", "1"] if row in never else []  # never the forecast
        if row in (*LATENT_POLICY_ROWS, "joint_no_ell", "latent_policy_ell"):  # from scratch, the plain policy's steps
            recipe = "joint" if row == "latent_policy_ell" else "no-latent-actions"  # with ℓ, or without
            run = self.train("wam", f"wam_{tag}", c.plain_steps,
                             ["--recipe", recipe, *no_forecast, *models, *shlex.split(c.wam_args)],
                             [lat, self.dataset()], seed, share="plain")
            return self.evaluate(f"wam_{tag}", [run])
        if row == "joint":
            run = self.train("wam", f"wam_{tag}", c.wam_steps + c.adapt_steps,
                             ["--recipe", "joint", *models, *shlex.split(c.wam_args)],
                             [lat, self.dataset()], seed, share="plain")
            return self.evaluate(f"wam_{tag}", [run])
        no_ell = ["--no-use-latent-actions"] if row == "no_ell" else []
        no_state = ["--no-use-state"] if row == "no_state" else []
        aux = ["--aux-key", ENV_STATE_KEY] if row == "repwam_aux" else []
        first = ["--first-frame-context"] if row == "first_frame" else []
        goal = ["--state-key", ENV_STATE_KEY] if row == "repwam_goal" else []
        ell_out = {"adapt_no_ell": ["--ell-drop", "1"], "repwam_ell": ["--ell-drop", "0.25"]}.get(row, [])
        needs = [self.dataset()]
        if row == "repwam_est":
            needs.append(self.estimator())
            goal = ["--state-key", EST_STATE_KEY, "--estimator", self.run_dir("estimator")]
        shares = row in ("no_state", "repwam_aux", "first_frame", "repwam_goal", "repwam_est", "no_forecast",
                         "adapt_no_ell", "repwam_ell")
        pre_run = f"wampre_repwam_s{seed}" if shares else f"wampre_{tag}"  # the same pretraining
        pre = self.train("wam", pre_run, c.wam_steps, [*models, *no_ell, *shlex.split(c.wam_args)], [lat], seed,
                         data=self.video)
        adapt = self.train("wam", f"wam_{tag}", c.adapt_steps,
                           ["--recipe", "adapt", "--init", self.ckpt(pre_run), *models, *no_ell, *no_state, *aux, *first,
                            *goal, *no_forecast, *ell_out, *shlex.split(c.adapt_args)],
                           [pre, *needs], seed, share="adapt")
        return self.evaluate(f"wam_{tag}", [adapt])

    def estimator(self) -> str:
        """The state estimator of the repwam_est row, fitted on the demonstrations (estimator_cameras, or the first
        camera) and, with estimator_layouts_per_task, on that many more layouts per task of another base seed. Views
        the demonstrations lack are rendered for it: the demonstrations again (same seeds: the same episodes, which
        the WAM's adaptation matches to their estimates) and the layouts from those views."""
        c, out = self.cfg, self.run_dir("estimator")
        cams = [x.strip() for x in (c.estimator_cameras or c.cameras.split(",")[0]).split(",") if x.strip()]
        views, data, needs = ",".join(cams), self.data, [self.dataset()]
        if not set(cams) <= {x.strip() for x in c.cameras.split(",")}:
            data = self.data.with_name(self.data.name + "@est" + "+".join(cams))
            self._check_dataset(data, c.episodes_per_task, views)
            needs = [self.add("data-estimator", ["data", "generate", "--tasks", c.tasks, "--episodes-per-task",
                                                 c.episodes_per_task, "--camera", views, "--image-size", c.image_size,
                                                 "--out", data,
                                                 *(["--action-noise", c.action_noise] if c.action_noise else [])],
                              data / "meta" / "info.json")]
        args = ["--data", data]
        if c.estimator_layouts_per_task:
            name = f"@layouts{c.estimator_layouts_per_task}seed1" + ("" if data == self.data else "@" + "+".join(cams))
            layouts = self.data.with_name(self.data.name + name)
            gen_views = c.cameras if data == self.data else views
            self._check_dataset(layouts, c.estimator_layouts_per_task, gen_views)
            needs.append(self.add("data-layouts", ["data", "generate", "--tasks", c.tasks, "--episodes-per-task",
                                                   c.estimator_layouts_per_task, "--seed", 1, "--camera", gen_views,
                                                   "--image-size", c.image_size, "--out", layouts],
                                  layouts / "meta" / "info.json"))
            args += ["--data", layouts]
        if c.estimator_targets != "all":
            args += ["--targets", c.estimator_targets]
        return self.add("train-estimator", ["train", "estimator", *args, "--out", out, "--camera", views],
                        out / "finished", needs)

    def inspect(self, tok_recipe: str, wam_run: str) -> list[str]:
        """Evaluation jobs for the report: the tokenizer table, the latent-action table and imagined futures."""
        tok, lat = self.tokenizer(tok_recipe), self.lat(tok_recipe)
        jobs = [self.add("eval-tokenizer", ["eval", "tokenizer", "--data", self.data, "--out", self.out / "eval_tokenizer",
                                            "-c", self.ckpt(f"tok_{tok_recipe}")], self.out / "eval_tokenizer" / "table.md",
                         [tok]),
                self.add("eval-lat", ["eval", "lat", "--data", self.data, "--out", self.out / "eval_lat",
                                      "-c", self.ckpt(f"lat_{tok_recipe}")], self.out / "eval_lat" / "table.md", [lat])]
        pre = f"train-{wam_run}"
        if pre in self.jobs:
            jobs.append(self.add("eval-wam", ["eval", "wam", "--data", self.data, "--out", self.out / "eval_wam",
                                              "-c", self.ckpt(wam_run), "--episodes", 10],
                                 self.out / "eval_wam" / "table.md", [pre]))
        return jobs

    # ------------------------------------------------------------------ running
    def _command(self, job: Job, cores: int = 1) -> list[str]:
        args = list(job.args)
        if job.max_cores > 1 and "--workers" in args:
            args[args.index("--workers") + 1] = str(cores)
        if job.run_dir is not None and (job.run_dir / "training_state.pt").exists():
            args.append("--resume")
        return [sys.executable, "-m", "repwam.cli", *args]

    def _run(self, job: Job, cores: int = 1) -> float:
        log = self.out / "logs" / f"{job.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        threads = "1" if job.max_cores > 1 else str(cores)  # worker processes, or one process's threads
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        command = self._command(job, cores)
        # a training run resumed here: its loop's seconds in earlier sittings (up to their last save) count too
        before = read_progress(job.run_dir).get("train_seconds", 0.0) if "--resume" in command else 0.0
        t0 = time.time() - before
        with open(log, "a") as fh:
            fh.write(f"\n$ repwam {' '.join(job.args)}\n")
            fh.flush()
            proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT, env=env)
            with self._lock:
                self._procs.add(proc)
            try:
                proc.wait()
            finally:
                with self._lock:
                    self._procs.discard(proc)
        if proc.returncode != 0:
            tail = log.read_text()[-1500:]
            raise RepwamError(f"job {job.name} failed (exit {proc.returncode}); log {log}:\n{tail}")
        if job.args[0] == "train":
            job.done.parent.mkdir(parents=True, exist_ok=True)
            job.done.write_text(json.dumps({"seconds": time.time() - t0}))
        if job.args[:2] == ["eval", "policy"]:
            self.keep_run_config(job)
        return time.time() - t0

    @staticmethod
    def keep_run_config(job: Job) -> None:
        """A closed-loop result keeps the settings its policy was trained with (the run's run.json, beside
        results.json), so results copied into another --out can still be checked (check_recorded)."""
        run_config = Path(job.args[job.args.index("--checkpoint") + 1]).parent.parent / "run.json"
        if run_config.exists():
            shutil.copyfile(run_config, job.done.parent / "run.json")

    def wall_seconds(self) -> float:
        """Wall time of every sitting of `run` so far (`<out>/wall.json`)."""
        f = self.out / "wall.json"
        return json.loads(f.read_text())["seconds"] if f.exists() else 0.0

    def timings(self) -> dict[str, float]:
        """Wall seconds of every job run so far, across sittings (`<out>/timings.json`)."""
        f = self.out / "timings.json"
        return json.loads(f.read_text()) if f.exists() else {}

    def _save_timing(self, name: str, seconds: float) -> None:
        f = self.out / "timings.json"
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.timings(), name: round(seconds, 1)}, indent=1))
        os.replace(tmp, f)

    def pending(self) -> list[str]:
        """The jobs that must run: those whose proof is missing and that some unfinished job downstream (or the
        user: a job nothing needs) still waits on. A job only finished jobs need is skipped, so results copied in
        (`<out>/eval/<run>/results.json` from an earlier sitting) need none of the runs that made them."""
        users: dict[str, list[str]] = {n: [] for n in self.jobs}
        for n, j in self.jobs.items():
            for d in j.needs:
                users[d].append(n)
        memo: dict[str, bool] = {}

        def needed(n: str) -> bool:
            if n not in memo:
                memo[n] = not self.jobs[n].done.exists() and (not users[n] or any(needed(u) for u in users[n]))
            return memo[n]

        return [n for n in self.jobs if needed(n)]

    def check_recorded(self) -> None:
        """Refuse runs and results under `out` trained with other settings than their jobs ask for now. A finished
        job is skipped, so results of another recipe (an older default, other steps, other arguments) would otherwise
        be reported as this one's, and a run resumed under other settings would mix two. The settings a run trained
        with are its run.json, which its evaluation keeps beside the results (`eval/<run>/run.json`: results copied
        in from another --out carry it); results from before that copy whose run is gone cannot be checked."""
        from repwam.train.args import STAGES, train_args
        from repwam.train.trainer import RESUME_MAY_CHANGE, run_config_changes, run_record

        problems = []
        for job in self.jobs.values():
            if job.run_dir is None or job.args[1] not in STAGES:
                continue
            # (run.json, finished): a finished run's steps count; an unfinished one may be resumed for more
            recorded = [(f, finished) for f, finished in ((job.run_dir / "run.json", job.done.exists()),
                                                          (self.out / "eval" / job.run_dir.name / "run.json", True))
                        if f.exists()]
            if not recorded:
                continue
            cfg, data, *_ = train_args(job.args[1], job.args[2:])
            asked, defaults = run_record(cfg, f"train {job.args[1]}", data), asdict(type(cfg)())
            for f, finished in recorded:
                may_change = HOW_IT_RUNS + (() if finished else RESUME_MAY_CHANGE)
                changed = run_config_changes(json.loads(f.read_text()), asked, defaults, may_change, INPUT_PATHS)
                if changed:
                    problems.append(f"  {job.name}: {f} has " + ", ".join(f"{k}={a!r} (asked: {b!r})"
                                                                        for k, (a, b) in changed.items()))
        if problems:
            raise RepwamError(f"{self.out} holds runs or results trained with other settings than asked for now:\n"
                              + "\n".join(problems) + "\nuse another --out, or delete those runs and results "
                              "(runs/<run>, eval/<run>) to train them again")

    def status(self) -> list[dict]:
        """Where every job stands, without running anything: `done` (its proof is there), `to run` (pending) or
        `skipped` (only finished jobs need it); the minutes a finished job took (timings.json) and, for a training
        run with saves, its step and its loop's minutes so far over every sitting (progress.json)."""
        pending, timings, rows = set(self.pending()), self.timings(), []
        for n, j in self.jobs.items():
            row = {"job": n, "state": "done" if j.done.exists() else "to run" if n in pending else "skipped"}
            if n in timings:
                row["minutes"] = round(timings[n] / 60, 1)
            if j.run_dir is not None and row["state"] == "to run":
                progress = read_progress(j.run_dir)
                if progress:
                    row["step"] = f"{progress['step']}/{progress['steps']}"
                    row["minutes"] = round(progress["train_seconds"] / 60, 1)
            rows.append(row)
        return rows

    def status_table(self) -> str:
        """status() as a markdown table."""
        lines = ["| job | state | step | minutes |", "|---|---|---|---|"]
        for r in self.status():
            lines.append(f"| {r['job']} | {r['state']} | {r.get('step', '')} | {r.get('minutes', '')} |")
        return "\n".join(lines)

    def _stop_jobs(self) -> None:
        """Terminate the running jobs' processes (then kill what is left after 10 s): a stopped pipeline leaves no
        trainer behind to write on into a run directory the next sitting resumes."""
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            proc.terminate()
        deadline = time.time() + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(deadline - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()

    def run(self, progress: bool = True) -> dict[str, float]:
        """Run every job whose proof is missing, `cfg.jobs` at a time in dependency order; returns seconds per job
        run now. The first failure stops new jobs (running ones finish) and is raised. Interrupted (Ctrl-C, or
        SIGTERM, which is turned into SystemExit while this runs in the main thread), it terminates the running
        jobs first: their runs resume from their last save next time."""
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main else None
        try:
            return self._run_all(progress)
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)

    def _cores(self, name: str, todo: dict[str, Job], running: bool, free: int) -> int:
        """Cores for `name` starting now: up to its max_cores (worker processes); all the free ones (threads) for a
        job started with nothing else running that every other job left needs, directly or not."""
        if self.jobs[name].max_cores > 1 or running:
            return min(self.jobs[name].max_cores, free)
        ancestors: dict[str, set[str]] = {}

        def needs(n: str) -> set[str]:
            if n not in ancestors:
                ancestors[n] = set(self.jobs[n].needs).union(*(needs(d) for d in self.jobs[n].needs))
            return ancestors[n]

        return free if all(name in needs(n) for n in todo if n != name) else 1

    def _run_all(self, progress: bool) -> dict[str, float]:
        t0 = time.time()
        todo = {n: self.jobs[n] for n in self.pending()}
        finished = set(self.jobs) - set(todo)
        times: dict[str, float] = {}
        bar = tqdm(total=len(self.jobs), initial=len(finished), desc="pipeline", unit="job", disable=not progress)
        running: dict[Future, str] = {}
        cores: dict[str, int] = {}  # of the running jobs
        error = None
        with ThreadPoolExecutor(max_workers=self.cfg.jobs) as pool:
            try:
                while todo or running:
                    ready = [n for n, j in todo.items() if all(d in finished for d in j.needs)] if error is None else []
                    for n in ready:
                        free = self.cfg.jobs - sum(cores.values())
                        if free < 1:
                            break
                        cores[n] = self._cores(n, todo, bool(running), free)
                        running[pool.submit(self._run, todo.pop(n), cores[n])] = n
                        bar.set_postfix_str(", ".join(running.values()))
                    if not running:
                        if todo and error is None:
                            raise RepwamError(f"jobs {sorted(todo)} wait on jobs that cannot run")
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for f in done:
                        name = running.pop(f)
                        cores.pop(name)
                        try:
                            times[name] = f.result()
                            finished.add(name)
                            bar.update(1)
                            self._save_timing(name, times[name])
                        except RepwamError as e:
                            error = error or e
            except BaseException:  # Ctrl-C, SIGTERM: no job outlives the pipeline
                self._stop_jobs()
                raise
        bar.close()
        if times:  # this sitting ran something: its wall time counts
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "wall.json").write_text(json.dumps({"seconds": round(self.wall_seconds() + time.time() - t0, 1)}))
        if error is not None:
            raise error
        return times


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def check_rows(rows: list[str]) -> None:
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise RepwamError(f"unknown ablation rows {unknown}; rows: {', '.join(ROWS)}")


def ablation(out: str | Path, cfg: PipelineConfig, rows: list[str], seeds: list[int], record: bool = True) -> Pipeline:
    check_rows(rows)
    p = Pipeline(out, cfg)
    f = p.out / "pipeline.json"
    was = json.loads(f.read_text())["config"] if f.exists() else {}
    for key, what in (("tok_args", "tokenizers trained"), ("wam_args", "world action models pretrained"),
                      ("adapt_args", "world action models adapted"),
                      ("estimator_layouts_per_task", "a state estimator fitted"),
                      ("estimator_cameras", "a state estimator fitted"),
                      ("estimator_targets", "a state estimator fitted")):
        if f.exists() and was.get(key, PipelineConfig.__dataclass_fields__[key].default) != getattr(cfg, key):
            raise RepwamError(f"{p.out} holds {what} with {key}={was.get(key)!r}; this asks for "
                              f"{key}={getattr(cfg, key)!r}: use another --out")
    for row in rows:
        for seed in seeds:
            p.row(row, seed)
    p.check_recorded()
    if not record:  # a look (--status): --out is left as it is
        return p
    (p.out).mkdir(parents=True, exist_ok=True)
    (p.out / "pipeline.json").write_text(json.dumps({"config": asdict(cfg), "rows": rows, "seeds": seeds}, indent=1))
    return p


# Sized for <= 20 min on 2 cores (measured idle: data 0.7 min, tokenizer ~7 with its teacher features, LAT ~1.5,
# WAM pretraining ~3.5, adaptation ~3, closed loop ~2 on two environment processes); the baseline gets the WAM's
# pretraining + adaptation wall time (~600 steps at batch 64) on the other core.
DEMO = PipelineConfig(tasks="reach-v3,push-v3,drawer-open-v3,button-press-topdown-v3,window-open-v3",
                      episodes_per_task=15, tok_steps=400, lat_steps=300, wam_steps=550, adapt_steps=400,
                      plain_steps=600, eval_episodes=10, eval_workers=2)


def demo(out: str | Path, cfg: PipelineConfig = DEMO, record: bool = True) -> Pipeline:
    """The method and the plain-policy baseline side by side (one per core), plus the evaluations the report shows."""
    p = Pipeline(out, cfg)
    p.row("repwam", 0)
    p.row("plain", 0)
    p.inspect("default", "wampre_repwam_s0")
    p.check_recorded()
    if not record:
        return p
    p.out.mkdir(parents=True, exist_ok=True)
    (p.out / "pipeline.json").write_text(json.dumps({"config": asdict(cfg), "rows": ["repwam", "plain"], "seeds": [0]},
                                                    indent=1))
    return p


def ablation_summary(out: str | Path, rows: list[str], seeds: list[int]) -> dict[str, dict[str, dict]]:
    """{row: {seed: {"mean", "successes", "episodes", "tasks": {task: rate}}}} of every (row, seed) evaluated so far
    under `out`: small enough to commit, and what the table and the plot are made from."""
    out = Path(out)
    summary: dict[str, dict[str, dict]] = {}
    for row in rows:
        for seed in seeds:
            f = out / "eval" / eval_run(row, seed) / "results.json"
            if f.exists():
                r = json.loads(f.read_text())
                summary.setdefault(row, {})[str(seed)] = {
                    "mean": r["mean"]["success_rate"], "successes": r["mean"]["successes"],
                    "episodes": r["mean"]["episodes"], "tasks": {t: v["success_rate"] for t, v in r["tasks"].items()}}
    return summary


def ablation_table(summary: dict[str, dict[str, dict]]) -> str:
    """Markdown: per row, mean ± std over seeds of the mean success over tasks, the pooled episodes with their 95%
    Wilson interval, and per-task means over seeds."""
    import numpy as np

    from repwam.eval.closed_loop import wilson_interval

    if not summary:
        return "(no finished (row, seed) yet)"
    task_names = list(next(iter(next(iter(summary.values())).values()))["tasks"])
    head = "| row | seeds | mean success ↑ | pooled (95% Wilson) | " + " | ".join(t.replace("-v3", "") for t in task_names) + " |"
    lines = [head, "|" + "---|" * (4 + len(task_names))]
    for row, res in summary.items():
        means = np.array([r["mean"] for r in res.values()])
        pm = f"{means.mean():.3f} ± {means.std(ddof=1):.3f}" if len(means) > 1 else f"{means[0]:.3f}"
        s, n = sum(r["successes"] for r in res.values()), sum(r["episodes"] for r in res.values())
        lo, hi = wilson_interval(s, n)
        per_task = [np.mean([r["tasks"][t] for r in res.values()]) for t in task_names]
        lines.append(f"| {row} | {len(res)} | {pm} | {s}/{n} ({lo:.2f}–{hi:.2f}) | "
                     + " | ".join(f"{v:.2f}" for v in per_task) + " |")
    return "\n".join(lines)


def plot_ablation(summary: dict[str, dict], path: str | Path, title: str | None = None) -> Path:
    """Bars: mean over seeds of each row's mean success, error bars: std over seeds, dots: the seeds. A row may
    instead be given as reported, {"reported": {"mean", "std", "seeds"}} (an earlier sitting whose per-seed results
    were not kept): a hatched bar with its error bar and no dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = list(summary)
    reported = {row: summary[row]["reported"] for row in rows if "reported" in summary[row]}
    pts = [[] if row in reported else [r["mean"] for r in summary[row].values()] for row in rows]
    means = [reported[row]["mean"] if row in reported else np.mean(p) for row, p in zip(rows, pts)]
    stds = [reported[row]["std"] if row in reported else (np.std(p, ddof=1) if len(p) > 1 else 0.0)
            for row, p in zip(rows, pts)]
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.5))
    bars = ax.bar(rows, means, yerr=stds, capsize=4, color=["C0" if r == "repwam" else "C7" for r in rows])
    for bar, row in zip(bars, rows):
        if row in reported:
            bar.set_hatch("//")
            bar.set_alpha(0.6)
    for i, p in enumerate(pts):
        ax.scatter([i] * len(p), p, color="k", s=10, zorder=3)
    if max(len(r) for r in rows) > 10:  # long row names would overlap
        plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("closed-loop success (mean over tasks)")
    ax.set_title(title or "Ablation: mean ± std over seeds (dots: seeds)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
