"""The one training loop. Every stage (tokenizer, LAT, WAM) supplies a `Stage`; the `Trainer` owns the rest.

    Trainer(stage, optim, out).fit()
      device (cpu / cuda), seeding, parameter groups, AdamW or Muon + AdamW, warm-up + cosine schedule,
      bf16 autocast on the right device, gradient clipping, EMA weights, a guard on non-finite losses and
      gradients (the run stops; the last good checkpoint stays), progress bar, TensorBoard scalars and
      images, periodic validation, checkpoint + training-state save, and exact resume.

A stage supplies only what is its own:
    stage.model              the module saved as the checkpoint (a `repwam.checkpoint.Pretrained`)
    stage.extra_modules()    other modules trained with it and saved beside it ({"align_head": ...})
    stage.train_set          a map-style Dataset; batches are made here (resumable order)
    stage.loss(batch)        a dict of scalar tensors with "loss" (called under autocast)
    stage.aux_modules()      modules with their own optimiser and `stage.aux_loss()` (the GAN discriminator)
    stage.validate(model)    a dict of floats on an unbiased sample of validation episodes
    stage.images(batch)      a dict of uint8 (H, W, 3) images for TensorBoard
    stage.checkpoint_meta(m) what config.json records besides the model config (parents, split, stats)

Exact resume: the batch order is a function of (seed, step) (`ResumableBatches`), and the training state holds
every module, optimiser, scheduler, the EMA weights and the torch / numpy / python RNG states, so a run
interrupted after N steps and resumed reaches the same parameters as an uninterrupted one.

Launch modes (the same entry point for both):
    repwam train <stage> ...                                  one process (CPU or one GPU)
    torchrun --nproc_per_node N -m repwam.cli train <stage> ... N processes (any number of nodes): DDP, gloo on
        the CPU and NCCL on GPUs; `optim.batch_size` is the GLOBAL batch (each rank takes batch_size / N of every
        batch the one-process run would draw); rank 0 alone logs, validates and checkpoints; the checkpoint is the
        unwrapped model, loadable in one process; the training state holds every rank's RNG state.
    torchrun ... --optim.parallel fsdp                          FSDP2 instead of DDP (`shard`): each repeated block,
        then the model, is `fully_shard`ed: every rank keeps 1/N of each weight, gradient and optimiser state, and a
        block's weights are gathered just before it runs. The EMA is sharded alike. The training state is written
        with torch.distributed.checkpoint, each rank its shards (out/training_state.dcp/); for validation and the
        checkpoint, rank 0 gathers the full weights into a plain copy of the model (one extra full copy on rank 0),
        so the checkpoint loads in one process. Refused for models with scalar parameters (the LAT) and for stages
        that train more than their model (an alignment head, the GAN discriminator). Ignored in one process.

Gradient accumulation (`optim.accum_steps = K`): each rank runs its share of a global batch as K micro-batches of
batch_size / (N·K), each loss scaled by 1/K, gradients reduced on the last one only (DDP's no_sync before it):
the same step as one batch of batch_size, with 1/K of the activations in memory.

`optim.compile`: torch.compile each repeated block of the model in place (`compile_blocks`); the checkpoint keys stay
plain. On a CPU, inductor takes tens of seconds to compile the tiny models: worth it for long runs only.
`optim.activation_checkpointing`: sets the model's `grad_checkpoint` (the WAM's and RepViTok's blocks recompute their
activations in backward); the model's config, and so config.json, is left as it was.

Run directory layout (`out`):
    out/checkpoints/last/            config.json + model.safetensors (+ extras): the last good weights
    out/checkpoints/step_0000500/    periodic snapshots (keep_snapshots most recent)
    out/training_state.pt            optimisers, schedule, step, EMA, RNG: what resume needs (kept apart)
    out/training_state.dcp/          the same under FSDP: every rank's shards + trainer.pt (step, schedule, RNG)
    out/tb/                          TensorBoard scalars and images
    out/run.json                     the full run config (replay it with `--config out/run.json`)
    out/progress.json                step, steps and the training loop's wall seconds over every sitting, at each save
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from repwam.config import read_record
from repwam.errors import RepwamError
from repwam.train.muon import Muon
from repwam.train.progress import write_progress

OPTIMIZERS = ("adamw", "muon")
PARALLEL = ("ddp", "fsdp")
STATE_FILE, SHARDED_STATE_DIR = "training_state.pt", "training_state.dcp"
TRAINER_STATE = "trainer.pt"  # in SHARDED_STATE_DIR: step, schedule and RNG states (what is not sharded)
# optim settings a resumed run may change: how long, and how the same steps are computed
RESUME_MAY_CHANGE = ("steps", "num_workers", "device", "compile", "activation_checkpointing", "minutes")
BUDGET_CALIBRATION = (3, 15)  # optim.minutes: seconds per step are measured over these steps of the run (after warm-up
# effects of the first ones), then the step count is fixed


@functools.cache
def bf16_is_fast(device_type: str) -> bool:
    """Whether bfloat16 autocast pays on this device type: CUDA where the GPU supports bf16; on a CPU, whether a bf16
    matmul is at least about as fast as fp32 (timed once, a few ms). A CPU with AVX512-BF16 or AMX runs it ~3x
    faster than fp32; one without (AVX2 only) emulates it, ~35x slower (both measured on this project's machines)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    a, threads, times = torch.randn(256, 256), torch.get_num_threads(), {}
    torch.set_num_threads(1)  # per-core speed: other busy cores must not decide it
    try:
        for dtype in (torch.float32, torch.bfloat16):
            x = a.to(dtype)
            x @ x  # warm-up
            runs = []
            for _ in range(5):
                t0 = time.perf_counter()
                x @ x
                runs.append(time.perf_counter() - t0)
            times[dtype] = min(runs)
    finally:
        torch.set_num_threads(threads)
    return times[torch.bfloat16] <= 1.5 * times[torch.float32]


def resolve_bf16(setting: bool | None, device_type: str, warn: bool = True) -> bool:
    """`optim.bf16` for this device: None picks bf16 where it is native (`bf16_is_fast`); True where it is not still
    runs bf16, with a warning."""
    if setting is None:
        return bf16_is_fast(device_type)
    if setting and warn and not bf16_is_fast(device_type):
        print(f"warning: bf16 autocast on this {device_type} is emulated and far slower than fp32; "
              "--optim.bf16 None picks it only where it is native", flush=True)
    return bool(setting)


@dataclass
class OptimConfig:
    steps: int = 2000
    batch_size: int = 16  # the global batch of one optimiser step (over all ranks and micro-batches)
    accum_steps: int = 1  # micro-batches per optimiser step; each forward sees batch_size / (world * accum_steps)
    optimizer: str = "adamw"  # "adamw" | "muon": Muon on the 2-D weight matrices of the blocks, AdamW on the rest
    lr: float = 3e-4  # AdamW learning rate (peak)
    muon_lr: float = 0.02  # Muon learning rate (peak; the paper trains its WAM at 1e-2)
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    warmup: int = 100
    min_lr_ratio: float = 0.1  # the cosine decays to this fraction of the peak
    grad_clip: float = 1.0
    ema: float = 0.0  # EMA decay of the weights (0: off); when on, checkpoints and validation use the EMA weights.
    # The decay warms up as min(ema, (1 + t) / (10 + t)): a short run is not dominated by its first weights
    log_every: int = 20
    image_every: int = 250
    save_every: int = 500  # also the validation period
    keep_snapshots: int = 2
    val_items: int = 256  # validation items: a fixed random sample over all validation episodes
    num_workers: int = 0
    seed: int = 0
    # bfloat16 autocast; None: where the device computes it natively (`bf16_is_fast`). Never fp16 on a CPU (~300x
    # slower there); bf16 on a CPU without AVX512-BF16 / AMX is emulated and ~35x slower than fp32 (measured)
    bf16: bool | None = False
    device: str = "auto"  # "auto" (cuda if available) | "cpu" | "cuda" | "cuda:N"
    compile: bool = False  # torch.compile the model's repeated blocks (see compile_blocks)
    activation_checkpointing: bool = False  # recompute block activations in backward (models with grad_checkpoint)
    parallel: str = "ddp"  # under torchrun: "ddp" (a replica per rank) | "fsdp" (FSDP2: weights, grads, moments split)
    minutes: float | None = None  # wall-time budget of the training loop: steps are cut to fit (see Trainer.fit)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise RepwamError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("steps", "batch_size", "accum_steps", "save_every", "log_every", "image_every"):
            if getattr(self, name) < 1:
                raise RepwamError(f"optim.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema < 1.0:
            raise RepwamError(f"optim.ema must be in [0, 1), got {self.ema}")
        if self.parallel not in PARALLEL:
            raise RepwamError(f"optim.parallel must be one of {PARALLEL}, got {self.parallel!r}")
        if self.minutes is not None and not self.minutes > 0:
            raise RepwamError(f"optim.minutes must be > 0 (or None: no time budget), got {self.minutes}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RepwamError(f"device {name!r} asked for but no CUDA GPU is visible; use --optim.device cpu")
    return dev


def distributed() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless launched by torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device: torch.device) -> torch.device:
    """Join the process group torchrun set up (gloo on the CPU, NCCL on GPUs); returns this rank's device."""
    _, world = distributed()
    if world == 1:
        return device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def barrier() -> None:
    if distributed()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step: int, warmup: int, steps: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to `min_ratio` of the peak."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class ResumableBatches(torch.utils.data.Sampler):
    """Index batches forever: epoch e is a permutation drawn from (seed, e); starting at `start_step` gives exactly
    the batches an uninterrupted run would have drawn from that step on (drop_last: full batches only). With
    `world` ranks, rank r takes its contiguous share of every global batch, as `accum` consecutive micro-batches:

        global batch (batch_size)  =  [rank 0: micro 0 .. micro accum-1 | rank 1: ... | ... ]"""

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world: int = 1,
                 accum: int = 1):
        if num_items < batch_size:
            raise RepwamError(f"the training set has {num_items} items, fewer than one batch of {batch_size}")
        if batch_size % (world * accum):
            raise RepwamError(f"the global batch size {batch_size} does not split into {world} processes x {accum} "
                              f"micro-batches; pick a batch size divisible by {world * accum}")
        self.n, self.b, self.seed, self.start = num_items, batch_size, seed, start_step
        self.per_rank, self.rank, self.accum = batch_size // world, rank, accum
        self.micro = self.per_rank // accum
        self.per_epoch = num_items // batch_size

    def __iter__(self):
        epoch, offset = divmod(self.start, self.per_epoch)
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            for i in range(offset, self.per_epoch):
                for a in range(self.accum):
                    lo = i * self.b + self.rank * self.per_rank + a * self.micro
                    yield perm[lo : lo + self.micro]
            epoch, offset = epoch + 1, 0

    def __len__(self):  # infinite; DataLoader only needs this for its own bookkeeping
        return 2**62


def val_subset(dataset, n: int, seed: int = 0):
    """A fixed random sample of n items spread over the whole dataset (all validation episodes), not its first n."""
    if n <= 0 or len(dataset) <= n:
        return dataset
    idx = np.sort(np.random.default_rng(seed).choice(len(dataset), n, replace=False)).tolist()
    return torch.utils.data.Subset(dataset, idx)


def param_groups(module: torch.nn.Module, weight_decay: float, muon: bool):
    """(muon params, adamw groups). Weight decay on matrices only; with Muon, the 2-D weights of hidden layers go to
    Muon, while embeddings, positions, heads and everything 1-D stay with AdamW (as Muon's authors recommend)."""
    muon_params, decay, no_decay = [], [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        hidden_matrix = p.ndim == 2 and not any(s in name for s in ("embed", "pos", "head", "null"))
        if muon and hidden_matrix:
            muon_params.append(p)
        elif p.ndim >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [g for g in ({"params": decay, "weight_decay": weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    return muon_params, groups


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every entry of the model's outermost ModuleLists: the WAM's `blocks`, the tokenizer's `encoder` and `decoder`,
    the LAT's residual blocks."""
    entries = [b for m in model.modules() if isinstance(m, torch.nn.ModuleList) for b in m]
    nested = {id(sub) for b in entries for sub in b.modules() if sub is not b}
    return [b for b in entries if id(b) not in nested]


def compile_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """torch.compile each repeated block of a model (a model with none is compiled whole). Blocks compile once and are
    reused at every depth, and the code between them (random draws, masks) stays eager. In place
    (`nn.Module.compile`): parameter names, and so the checkpoint's keys, stay plain."""
    blocks = repeated_blocks(model) or [model]
    for b in blocks:
        b.compile()
    return blocks


def shard(model: torch.nn.Module, mesh) -> None:
    """FSDP2 (`fully_shard`): each repeated block is its own unit (its weights gathered just before it runs and freed
    after), then the rest of the model; each rank keeps 1/world of every weight, gradient and optimiser state.
    Parameters become DTensors; their names stay plain."""
    from torch.distributed.fsdp import fully_shard

    scalars = [n for n, p in model.named_parameters() if p.ndim == 0]
    if scalars:
        raise RepwamError(f"optim.parallel=fsdp cannot shard {type(model).__name__}: FSDP2 splits parameters along "
                          f"their first dimension and {scalars} are scalars; use optim.parallel=ddp")
    for blk in repeated_blocks(model):
        fully_shard(blk, mesh=mesh)
    fully_shard(model, mesh=mesh)
    # zero gradients for what a rank did not use (a stream dropped on some ranks only), so all ranks reduce alike
    model.set_reduce_scatter_unused_params(True)


class Stage:
    """What a training stage gives the trainer (see the module docstring). Subclasses set `name`, `model`,
    `train_set` and `run_config`, and override `loss`, `validate` and `checkpoint_meta`."""

    name: str = "stage"
    model: torch.nn.Module
    train_set: torch.utils.data.Dataset
    collate_fn = None

    def extra_modules(self) -> dict[str, torch.nn.Module]:
        return {}

    def aux_modules(self) -> dict[str, torch.nn.Module]:
        return {}

    def aux_loss(self) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        return {}

    def images(self, batch: dict) -> dict[str, np.ndarray]:
        return {}

    def checkpoint_meta(self, model: torch.nn.Module) -> dict:
        """config.json entries besides the model config; `model` holds the weights being saved (EMA when on)."""
        return {}

    def to(self, device: torch.device) -> None:
        """Move whatever the stage holds besides its modules (cached targets) to `device`."""


class StageLoss(torch.nn.Module):
    """The stage's loss as one module holding everything the main optimiser trains: what DDP wraps, so gradients
    are averaged over ranks however the stage calls its models."""

    def __init__(self, stage: Stage, trained: dict[str, torch.nn.Module]):
        super().__init__()
        self.trained = torch.nn.ModuleDict(trained)
        self.__dict__["stage"] = stage  # not a submodule: the stage is not a Module

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.stage.loss(batch)


class Trainer:
    def __init__(self, stage: Stage, optim: OptimConfig, out: str | Path, run_config: dict, *, resume: bool = False,
                 progress: bool = True, defaults: dict | None = None):
        self.stage, self.o, self.out = stage, optim, Path(out)
        self.rank, self.world = distributed()
        self.main = self.rank == 0
        self.progress = progress and self.main
        self.device = init_distributed(resolve_device(optim.device))
        self.fsdp = optim.parallel == "fsdp" and self.world > 1
        self.state_file = self.out / (SHARDED_STATE_DIR if self.fsdp else STATE_FILE)
        self.seconds_before = 0.0  # the loop's wall seconds in earlier sittings, up to their last save
        self._t_fit = time.perf_counter()
        if self.main:
            self._prepare_dir(run_config, resume, defaults or {})
        barrier()
        self.trained = {"model": stage.model, **stage.extra_modules()}  # main optimiser
        self.aux = stage.aux_modules()  # own optimiser each
        if self.aux and self.world > 1:
            raise RepwamError("auxiliary optimisers (the GAN discriminator) are not supported under torchrun yet")
        if self.fsdp and len(self.trained) > 1:
            raise RepwamError(f"optim.parallel=fsdp shards the stage's model alone, but this stage also trains "
                              f"{sorted(self.trained)[1:]}; use optim.parallel=ddp")
        for m in (*self.trained.values(), *self.aux.values()):
            m.to(self.device)
        stage.to(self.device)
        if self.fsdp:  # DDP broadcasts rank 0's weights; FSDP shards each rank's own copy, so make them rank 0's
            import torch.distributed as dist

            for t in (*stage.model.parameters(), *stage.model.buffers()):
                dist.broadcast(t.data, src=0)
        self.ema = copy.deepcopy(stage.model).eval().requires_grad_(False) if optim.ema > 0 else None
        # under FSDP, rank 0 validates and saves a plain copy holding the gathered weights (see _saved_model)
        self.plain = copy.deepcopy(stage.model).eval().requires_grad_(False) if self.fsdp and self.main else None
        if optim.activation_checkpointing:
            if not hasattr(stage.model, "grad_checkpoint"):
                raise RepwamError(f"optim.activation_checkpointing: {type(stage.model).__name__} has no activation "
                                  f"checkpointing (grad_checkpoint); train it without")
            stage.model.grad_checkpoint = True  # the model's setting, not its config: config.json stays as it was
        if optim.compile:
            compile_blocks(stage.model)
        self.loss_module = StageLoss(stage, self.trained)
        if self.fsdp:
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh(self.device.type, (self.world,))
            for m in (stage.model, self.ema):
                if m is not None:
                    shard(m, mesh)  # the EMA sharded alike: its update stays elementwise on the local shards
        elif self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # unused: streams dropped in some steps (the WAM's video or ℓ drop), the null text
            self.loss_module = DDP(self.loss_module, find_unused_parameters=True,
                                   device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizers = self._build_optimizers()
        self.steps = optim.steps  # the run's length: optim.steps, or fewer once a time budget has fixed it
        self.steps_fixed = optim.minutes is None  # (a resumed run reads it from the training state)
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, optim.warmup, self.steps, optim.min_lr_ratio)) for opt in self.optimizers]
        self.aux_optimizers = {k: torch.optim.AdamW(m.parameters(), lr=optim.lr, betas=(0.5, 0.9))
                               for k, m in self.aux.items()}
        self._tb = None

    # ------------------------------------------------------------------ setup
    def _prepare_dir(self, run_config: dict, resume: bool, defaults: dict) -> None:
        """defaults: the stage config's defaults; a setting a resumed run did not record (added since it started)
        counts as its default, so runs from before a new option resume when the option is left at its default."""
        has_state = any((self.out / f).exists() for f in (STATE_FILE, SHARDED_STATE_DIR))
        if has_state and not resume:
            raise RepwamError(f"{self.out} already holds a training run; pass --resume to continue it or choose another --out")
        try:
            (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RepwamError(f"cannot create {self.out}: {e.strerror}") from None
        run_config = json.loads(json.dumps(run_config, default=str))
        run_file = self.out / "run.json"
        if resume and has_state and run_file.exists():
            changed = run_config_changes(json.loads(run_file.read_text()), run_config, defaults)
            if changed:
                raise RepwamError(f"cannot resume {self.out}: the run was started with other settings {changed}")
        tmp = run_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(run_config, indent=1))
        os.replace(tmp, run_file)

    def _build_optimizers(self) -> list[torch.optim.Optimizer]:
        o = self.o
        muon_params, groups = [], []
        for m in self.trained.values():
            mp, g = param_groups(m, o.weight_decay, o.optimizer == "muon")
            muon_params += mp
            groups += g
        opts = [torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2))]
        if muon_params:
            # match_rms_adamw: updates scaled to AdamW's RMS, so muon_lr means the same thing at every width
            opts.append(Muon(muon_params, lr=o.muon_lr, weight_decay=o.weight_decay, adjust_lr_fn="match_rms_adamw"))
        return opts

    @property
    def tb(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out / "tb"))
        return self._tb

    def _params(self):
        return [p for m in self.trained.values() for p in m.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ state
    def _modules_state(self) -> dict:
        mods = {f"trained.{k}": m.state_dict() for k, m in self.trained.items()}
        mods.update({f"aux.{k}": m.state_dict() for k, m in self.aux.items()})
        if self.ema is not None:
            mods["ema"] = self.ema.state_dict()
        return mods

    def _rng_state(self) -> dict:
        return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def _sharded_state(self) -> dict:
        """Under FSDP: this rank's shards of the model, the EMA and the optimisers, keyed by parameter name."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        state = {"model": get_model_state_dict(self.stage.model),
                 "optimizers": get_optimizer_state_dict(self.stage.model, self.optimizers)}
        if self.ema is not None:
            state["ema"] = get_model_state_dict(self.ema)
        return state

    def _saved_model(self) -> torch.nn.Module | None:
        """What is validated and saved: the EMA weights when EMA is on, else the model's. Under FSDP, rank 0's plain
        copy loaded with the gathered full weights (every rank takes part; the others get None)."""
        model = self.ema if self.ema is not None else self.stage.model
        if not self.fsdp:
            return model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.main:
            self.plain.load_state_dict(full)
        return self.plain

    def save(self, step: int, model: torch.nn.Module | None) -> Path:
        """The weights of `model` (`_saved_model`; last + a snapshot) and the training state, each atomically. Every
        rank takes part (its RNG state is gathered; under FSDP it writes its shards); rank 0 writes the rest."""
        o = self.o
        rngs = [self._rng_state()]
        if self.world > 1:
            import torch.distributed as dist

            rngs = [None] * self.world
            dist.all_gather_object(rngs, self._rng_state())
        ckpt = self.out / "checkpoints" / "last"
        if self.main:
            meta = {**self.stage.checkpoint_meta(model), "step": step}
            ckpt = model.save_pretrained(ckpt, meta, self.stage.extra_modules())
            snap = self.out / "checkpoints" / f"step_{step:07d}"
            if snap.exists():
                shutil.rmtree(snap)
            shutil.copytree(ckpt, snap)
            snaps = sorted(p for p in (self.out / "checkpoints").glob("step_*") if p.is_dir())
            for old in snaps[: -o.keep_snapshots] if o.keep_snapshots > 0 else snaps:
                shutil.rmtree(old)
        seconds = self.seconds_before + time.perf_counter() - self._t_fit
        state = {
            "step": step,
            "steps": self.steps if self.steps_fixed else None,
            "train_seconds": seconds,
            "schedulers": [s.state_dict() for s in self.schedulers],
            "aux_optimizers": {k: opt.state_dict() for k, opt in self.aux_optimizers.items()},
            "rng": rngs[0],
            "rank_rngs": rngs,
        }
        if self.fsdp:
            self._save_sharded(state)
        elif self.main:
            state.update(modules=self._modules_state(), optimizers=[opt.state_dict() for opt in self.optimizers])
            tmp = self.state_file.with_suffix(".tmp")
            torch.save(state, tmp)
            os.replace(tmp, self.state_file)
        if self.main:
            write_progress(self.out, step=step, steps=self.steps, train_seconds=round(seconds, 3))
        barrier()
        return ckpt

    def _save_sharded(self, state: dict) -> None:
        """training_state.dcp/: every rank's shards (torch.distributed.checkpoint) and `state` (TRAINER_STATE), written
        under a temporary name that rank 0 swaps in once all shards are written."""
        import torch.distributed.checkpoint as dcp

        tmp, old = (self.state_file.with_name(self.state_file.name + s) for s in (".tmp", ".old"))
        if self.main and tmp.exists():
            shutil.rmtree(tmp)
        barrier()
        dcp.save(self._sharded_state(), checkpoint_id=tmp)  # returns when all ranks' shards and the metadata are in
        if self.main:
            torch.save(state, tmp / TRAINER_STATE)
            if self.state_file.exists():
                os.replace(self.state_file, old)
            os.replace(tmp, self.state_file)
            if old.exists():
                shutil.rmtree(old)

    def _load_sharded(self) -> dict:
        """Load this rank's shards of training_state.dcp/ into the model, EMA and optimisers; returns the rest."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        shards = self._sharded_state()
        dcp.load(shards, checkpoint_id=self.state_file)
        set_model_state_dict(self.stage.model, shards["model"])
        set_optimizer_state_dict(self.stage.model, self.optimizers, shards["optimizers"])
        if self.ema is not None:
            set_model_state_dict(self.ema, shards["ema"])
        return torch.load(self.state_file / TRAINER_STATE, map_location="cpu", weights_only=False)

    def resume(self) -> int:
        """Load the training state if there is one; returns the step to start from."""
        if not self.state_file.exists():
            return 0
        if self.fsdp:
            state = self._load_sharded()
        else:
            state = torch.load(self.state_file, map_location="cpu", weights_only=False)
            mods = state["modules"]
            for k, m in self.trained.items():
                m.load_state_dict(mods[f"trained.{k}"])
            for k, m in self.aux.items():
                m.load_state_dict(mods[f"aux.{k}"])
            if self.ema is not None:
                self.ema.load_state_dict(mods["ema"])
            for opt, sd in zip(self.optimizers, state["optimizers"]):
                opt.load_state_dict(sd)
        self.seconds_before = float(state.get("train_seconds", 0.0))
        if self.o.minutes is not None and state.get("steps") is not None:  # the budget fixed the length already
            self.steps, self.steps_fixed = min(int(state["steps"]), self.o.steps), True
        for opt, sched, sd in zip(self.optimizers, self.schedulers, state["schedulers"]):
            sched.load_state_dict(sd)
            for g, base in zip(opt.param_groups, sched.base_lrs):  # the schedule of *this* run (steps may have grown)
                g["lr"] = base * lr_factor(sched.last_epoch, self.o.warmup, self.steps, self.o.min_lr_ratio)
        for k, opt in self.aux_optimizers.items():
            opt.load_state_dict(state["aux_optimizers"][k])
        rngs = state.get("rank_rngs") or [state["rng"]]
        if len(rngs) != self.world:
            raise RepwamError(f"{self.state_file} was saved by {len(rngs)} processes; resume it with as many "
                              f"(this run has {self.world})")
        rng = rngs[self.rank]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return int(state["step"])

    def _fail(self, what: str, step: int):
        last = self.out / "checkpoints" / "last"
        where = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was saved yet"
        raise RepwamError(f"{what} became non-finite at step {step}; stopping. {where}")

    # ------------------------------------------------------------------ loop
    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        decay = min(self.o.ema, (1 + step) / (10 + step))
        for e, p in zip(self.ema.parameters(), self.stage.model.parameters()):
            e.lerp_(p.detach(), 1 - decay)
        for e, b in zip(self.ema.buffers(), self.stage.model.buffers()):
            e.copy_(b)

    def _grad_sync(self, sync: bool):
        """Gradients are averaged over ranks on the last micro-batch of a step only (DDP's no_sync before it; FSDP
        keeps the unsharded gradients until then)."""
        if self.fsdp:
            self.stage.model.set_requires_gradient_sync(sync)
        if sync or self.world == 1 or self.fsdp:
            return contextlib.nullcontext()
        return self.loss_module.no_sync()

    def _fix_steps(self, step: int, sec_per_step: float, elapsed: float) -> None:
        """optim.minutes: the run ends when its budget is spent. With `sec_per_step` measured, the step count becomes
        what fits in the time left (never more than optim.steps; at least one more step, so the run still ends on
        its final save), agreed by every rank; the cosine schedule then decays to the new end (the cut is made
        within the warm-up, before any decay), and the count is kept in the training state so a resumed run keeps
        the same schedule. Validation and saving are not in the estimate: budget them in save_every."""
        left = self.o.minutes * 60 - elapsed
        steps = torch.tensor(float(min(self.o.steps, max(step + 1, step + int(left / max(sec_per_step, 1e-9))))))
        if self.world > 1:
            import torch.distributed as dist

            dist.broadcast(steps, src=0)
        self.steps, self.steps_fixed = int(steps), True
        if self.main:
            print(f"[{self.stage.name}] time budget {self.o.minutes:g} min: {sec_per_step:.3f} s/step, training for "
                  f"{self.steps} steps (of at most {self.o.steps})", flush=True)
            self.tb.add_scalar("train/budget_steps", self.steps, step)

    def use_bf16(self) -> bool:
        return resolve_bf16(self.o.bf16, self.device.type, warn=self.rank == 0)

    def fit(self) -> Path:
        o, stage = self.o, self.stage
        seed_everything(o.seed + self.rank)  # every rank draws its own noise; DDP broadcast rank 0's weights
        step = self.resume()
        sampler = ResumableBatches(len(stage.train_set), o.batch_size, o.seed, start_step=step, rank=self.rank,
                                   world=self.world, accum=o.accum_steps)
        loader = torch.utils.data.DataLoader(stage.train_set, batch_sampler=sampler, num_workers=o.num_workers,
                                             collate_fn=stage.collate_fn, pin_memory=self.device.type == "cuda",
                                             # its own generator: making the iterator never draws from the global RNG
                                             generator=torch.Generator().manual_seed(o.seed))
        batches = iter(loader)
        for m in self.trained.values():
            m.train()
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16())
        bar = tqdm(total=self.steps, initial=step, desc=f"train {stage.name}", disable=not self.progress,
                   dynamic_ncols=True)
        last = self.out / "checkpoints" / "last"
        t_start, start_step, t_calib = time.perf_counter(), step, None
        self._t_fit = t_start
        while step < self.steps:
            if not self.steps_fixed:  # optim.minutes: time steps [a, b) of this sitting, then fix the run's length
                a, b = BUDGET_CALIBRATION
                if step - start_step == a:
                    t_calib = time.perf_counter()
                elif step - start_step == b:
                    self._fix_steps(step, (time.perf_counter() - t_calib) / (b - a), time.perf_counter() - t_start)
                    bar.total = self.steps
                    bar.refresh()
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            losses = {}  # means over the micro-batches of this step
            for micro in range(o.accum_steps):
                batch = to_device(next(batches), self.device)
                with self._grad_sync(micro == o.accum_steps - 1):
                    with autocast:
                        micro_losses = self.loss_module(batch)
                    bad = [k for k, v in micro_losses.items() if not torch.isfinite(v).all()]
                    if bad:
                        self._fail(f"the loss ({', '.join(bad)})", step)
                    (micro_losses["loss"] / o.accum_steps).backward()
                for k, v in micro_losses.items():
                    losses[k] = losses.get(k, 0.0) + v.detach() / o.accum_steps
            gnorm = torch.nn.utils.clip_grad_norm_(self._params(), o.grad_clip)
            if self.fsdp:
                gnorm = gnorm.full_tensor()  # the norm over all shards, the same on every rank
            if not torch.isfinite(gnorm):
                self._fail("the gradient norm", step)
            for opt, sched in zip(self.optimizers, self.schedulers):
                opt.step()
                sched.step()
            for k, opt in self.aux_optimizers.items():
                opt.zero_grad(set_to_none=True)
                with autocast:
                    aux = stage.aux_loss()
                aux.backward()
                opt.step()
            if self.ema is not None:
                self._update_ema(step)
            step += 1
            bar.update(1)
            if self.main and (step % o.log_every == 0 or step == self.steps):
                scalars = {f"train/{k}": float(v.detach()) for k, v in losses.items()}
                scalars.update({"train/grad_norm": float(gnorm), "train/lr": self.schedulers[0].get_last_lr()[0]})
                for k, v in scalars.items():
                    self.tb.add_scalar(k, v, step)
                bar.set_postfix(loss=f"{scalars['train/loss']:.4f}")
            # (not under FSDP: a stage's images may run its sharded model, which rank 0 cannot do alone)
            if self.main and not self.fsdp and (step % o.image_every == 0 or step == self.steps):
                for tag, img in stage.images(batch).items():
                    self.tb.add_image(tag, img, step, dataformats="HWC")
            if step % o.save_every == 0 or step == self.steps:
                model = self._saved_model()
                if self.main:  # validation on rank 0 (the others wait in save's gather)
                    model.eval()
                    with torch.no_grad(), autocast:
                        for k, v in stage.validate(model).items():
                            self.tb.add_scalar(f"val/{k}", v, step)
                    for m in self.trained.values():
                        m.train()
                last = self.save(step, model)
        bar.close()
        if self._tb is not None:
            self._tb.close()
        return last


def run_config_changes(recorded: dict, asked: dict, defaults: dict, may_change=RESUME_MAY_CHANGE,
                       ignore=()) -> dict[str, tuple]:
    """{setting: (recorded, asked)} of what differs between a run's run.json and the run config asked for now.
    defaults: the stage config's defaults, which stand in for settings the recorded run did not know (added since);
    may_change: optimisation settings that may differ (the number of steps may grow on resume; the rest is how the
    run runs, not what it learns); ignore: top-level settings left out (e.g. input paths checked elsewhere). The
    record is read as today's code reads it (repwam.config.read_record: a default whose meaning changed)."""
    defaults = json.loads(json.dumps(defaults, default=str))
    asked, recorded = json.loads(json.dumps(asked, default=str)), read_record(recorded)
    old = {**{k: v for k, v in defaults.items() if k != "optim"}, **recorded}
    old_o = {**defaults.get("optim", {}), **recorded.get("optim", {})}
    changed = {k: (old.get(k), v) for k, v in asked.items() if k not in ("optim", *ignore) and old.get(k) != v}
    changed.update({f"optim.{k}": (old_o.get(k), v) for k, v in asked.get("optim", {}).items()
                    if k not in may_change and old_o.get(k) != v})
    return changed


def run_record(cfg, command: str, data: list) -> dict:
    """What run.json records: the command, the data and the stage config."""
    return {"command": command, "data": [str(d) for d in data], **asdict(cfg)}


def run_stage(make_stage, cfg, command: str, data: list, out: str | Path, *, resume: bool = False,
              progress: bool = True) -> Path:
    """Build the stage (rank 0 first, so the caches it writes are made once) and train it; returns the checkpoint.
    cfg: the stage's config dataclass (its `optim` drives the trainer); run.json records it with the command and the
    data, and its class defaults stand in for settings a resumed run from before a new option did not record."""
    optim = cfg.optim
    run_config = run_record(cfg, command, data)
    defaults = asdict(type(cfg)())
    rank, world = distributed()
    init_distributed(resolve_device(optim.device))
    seed_everything(optim.seed)  # the model's initialisation (under torchrun, DDP broadcasts rank 0's)
    if rank != 0:
        barrier()
    stage = make_stage()
    if rank == 0:
        barrier()
    return Trainer(stage, optim, out, run_config, resume=resume, progress=progress, defaults=defaults).fit()
