"""`repwam train wam`: the world action model, through the one trainer.

    --stage pretrain   jointly denoise future visual latents z and latent actions ℓ (works on action-free video)
    --stage adapt      from a pretrained WAM (--init), add the action expert that denoises real robot actions
    --stage joint      z + ℓ + robot actions from scratch (the paper's one-stage variant)

The WAM names its tokenizer and LAT by checkpoint; their caches are read from `<data>/cache/latents/<hash>/` and
`<data>/cache/latent_actions/<hash>/` (made first when missing), and the checkpoint records both as parents (path +
weights hash), its data split, the text encoder by name, and the normalisation statistics of ℓ (and of robot actions
and states when it has them).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from repwam.data.dataset import split_spec
from repwam.errors import RepwamError
from repwam.lat.data import label_dataset
from repwam.lat.model import LatentActionTokenizer
from repwam.tokenizer.tokenize import load_tokenizer, tokenize_dataset, tokenizer_ref
from repwam.train.trainer import OptimConfig, Stage, run_stage, val_subset
from repwam.serve import ENV_STATE_KEY, EST_STATE_KEY, STATE_KEY
from repwam.wam.data import TextTable, WAMClips
from repwam.wam.model import ROBOT, StreamConfig, WAMConfig, WorldActionModel
from repwam.wam.text import TextEncoder

STAGES = ("pretrain", "adapt", "joint")


@dataclass
class WAMTrainConfig:
    stage: str = "pretrain"  # pretrain | adapt | joint
    tokenizer: str = ""  # the tokenizer checkpoint (its latents)
    lat: str = ""  # the LAT checkpoint (its ℓ labels), trained on that tokenizer's latents
    init: str | None = None  # adapt: the pretrained WAM checkpoint to start from
    preset: str = "tiny"
    # pretrain / joint: the DiT patchify of the latent grid (None: the preset's 2); a finer tokenizer grid with a
    # larger patch keeps the video tokens per frame (16x16 latents with 4: 16 tokens, as 8x8 with 2). Adapt keeps
    # the pretrained model's
    patch_size: int | None = None
    use_latent_actions: bool = True  # False: no ℓ stream at all (the "no latent actions" variant)
    use_state: bool = True  # adapt / joint: the proprioceptive state enters as a token per latent frame (as π0)
    # what the state token reads: the robot's state, or ENV_STATE_KEY (the whole simulator observation: object and
    # goal poses) for a privileged reference that needs no perception of the objects (as the plain policy's state_key),
    # or EST_STATE_KEY: the robot's state followed by `estimator`'s reading of the camera (cross-fitted in training)
    state_key: str = STATE_KEY
    estimator: str | None = None  # a `repwam train estimator` checkpoint, fitted on the adaptation data
    # adapt / joint: the state tokens also regress this privileged key of their frame, a training target only
    # (WAMConfig.aux_dim; ENV_STATE_KEY: the simulator's object and goal poses); None: off
    aux_key: str | None = None
    aux_weight: float = 1.0  # the read-out's MSE weight in the loss
    # the episode's first latent frame joins the instruction as cross-attention context (WAMConfig.first_frame_context):
    # a memory of the goal and objects as first seen; adapt adds it to a pretrained WAM that lacks it
    first_frame_context: bool = False
    # adapt / joint: each noisy robot token also embeds the state at the last clean frame before its chunk
    # (WAMConfig.last_state_cond): the current state reaches every action to denoise directly
    last_state_cond: bool = False
    # adapt / joint: the action expert's width (its FFN 4x as wide); None: the ℓ stream's (the narrow default)
    robot_width: int | None = None
    # adapt / joint: one robot token per raw action instead of one per latent frame carrying all of its actions
    # (WAMConfig.robot_token_per_action), as the plain policy's decoder has one query per action
    robot_token_per_action: bool = False
    # adapt / joint: --no-robot-history leaves the executed robot actions of the past out of the sequence
    # (WAMConfig.robot_history): the model sees them only through the frames, ℓ and states they produced
    robot_history: bool = True
    # adapt / joint: hide that history from this share of the training clips (WAMConfig.robot_history_drop): the
    # expert learns to act with and without it, and the policy's robot_history setting picks one at inference
    robot_history_drop: float = 0.0
    # adapt / joint: give this share of the training clips their future frames clean (WAMConfig.future_frames_given):
    # the expert learns to act from the future the policy imagines first (evaluate with --setting actions_only=false)
    future_frames_given: float = 0.0
    # adapt / joint: the share of training batches whose noisy future frames are left out (WAMConfig.video_drop;
    # None: the pretrained model's, or the preset's 0.25). 1.0 never trains the forecast: the action expert acts on
    # the clean past latents alone, a policy on the tokenizer's latents (the no_forecast and latent_policy rows)
    video_drop: float | None = None
    # adapt / joint: the share of training batches whose noisy ℓ tokens are left out (WAMConfig.ell_drop). 1.0 never
    # trains ℓ beside the actions: the robot's actions take the latent actions' place (the history keeps the observed
    # ℓ), and the policy acts robot-only. None: 1.0 at adapt (the method's default since 2026-12-07: it led in every
    # long setting measured, README "Ablation"; set when the config is made, so run.json records it), the preset's
    # 0.25 at joint. --ell-drop 0.25 at adapt denoises ℓ beside the actions as before (the repwam_ell row)
    ell_drop: float | None = None
    # the forecast's weight in the loss (WAMConfig.video_loss_weight; None: the pretrained model's at adapt, else the
    # preset's 1.0). Adapt / joint: > 1 trains the shared streams more on predicting the future beside the actions
    # (what the forecast adds to the policy: the no_forecast row, which never trains it)
    video_weight: float | None = None
    # adapt / joint: the actions' weight in the loss (WAMConfig.robot_loss_weight; None: the pretrained model's or the
    # preset's 1.0). Only the ratio to the forecast's and ℓ's weights counts (Muon and AdamW steps do not scale with
    # the loss): > 1 gives the action expert's objective more of each update of the parameters all streams share
    robot_weight: float | None = None
    attn_window: int | None = 4  # latent frames each token attends back (itself included)
    text_encoder: str = "all-minilm-l6-v2"
    attn_backend: str = "sdpa"  # self-attention: sdpa | flex | auto (flex on CUDA; the CPU trains on sdpa only)
    clip_frames: int = 6  # latent frames per training clip (> attn_window: the sliding-window regime is trained)
    val_fraction: float = 0.1
    split_seed: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        steps=3000, batch_size=16, optimizer="muon", lr=3e-4, muon_lr=0.01, warmup=100, grad_clip=2.0, ema=0.999,
        save_every=500, val_items=256))

    def __post_init__(self):
        if self.stage not in STAGES:
            raise RepwamError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.patch_size is not None and self.stage == "adapt":
            raise RepwamError("--patch-size is set when the WAM is built (pretrain, joint); adapt keeps --init's")
        if self.aux_key not in (None, ENV_STATE_KEY):
            raise RepwamError(f"aux_key must be {ENV_STATE_KEY!r} or unset, got {self.aux_key!r}")
        if self.aux_key is not None and not (self.robot and self.use_state):
            raise RepwamError("aux_key is read out of the state tokens: it needs --stage adapt or joint with use_state")
        if self.state_key not in (STATE_KEY, ENV_STATE_KEY, EST_STATE_KEY):
            raise RepwamError(f"state_key must be {STATE_KEY!r}, {ENV_STATE_KEY!r} or {EST_STATE_KEY!r}, "
                              f"got {self.state_key!r}")
        if (self.state_key == EST_STATE_KEY) != bool(self.estimator):
            raise RepwamError(f"--estimator DIR goes with --state-key {EST_STATE_KEY} (its estimates feed the state "
                              "token), and that key needs one")
        if self.state_key != STATE_KEY and not (self.robot and self.use_state):
            raise RepwamError("state_key feeds the state token: it needs --stage adapt or joint with use_state")
        if self.aux_key is not None and self.state_key != STATE_KEY:
            raise RepwamError("aux_key is a target beside the robot's own state: it does not go with another state_key")
        if self.last_state_cond and not (self.robot and self.use_state):
            raise RepwamError("last_state_cond adds the state token's input to the noisy robot tokens: it needs "
                              "--stage adapt or joint with use_state")
        if self.robot_width is not None and (not self.robot or self.robot_width < 1):
            raise RepwamError(f"robot_width={self.robot_width}: the action expert's width is set at adapt or joint, "
                              "and must be >= 1")
        if not self.robot_history and not self.robot:
            raise RepwamError("--no-robot-history leaves the action expert's past actions out: it needs --stage adapt "
                              "or joint")
        if self.robot_history_drop and not (self.robot and self.robot_history):
            raise RepwamError("--robot-history-drop hides the executed actions of the past at random: it needs "
                              "--stage adapt or joint, with the robot history")
        if self.future_frames_given and not self.robot:
            raise RepwamError("--future-frames-given teaches the action expert to read the future frames: it needs "
                              "--stage adapt or joint")
        if self.video_drop is not None:
            if not self.robot:
                raise RepwamError("--video-drop leaves the forecast out of the action expert's training batches: it "
                                  "needs --stage adapt or joint")
            if not 0 <= self.video_drop <= 1:
                raise RepwamError(f"video_drop must lie in [0, 1], got {self.video_drop}")
            if self.video_drop == 1 and self.future_frames_given:
                raise RepwamError("--video-drop 1 leaves every future frame out: --future-frames-given cannot give "
                                  "them clean")
        if self.stage == "adapt" and self.use_latent_actions and self.ell_drop is None:
            self.ell_drop = 1.0  # ℓ pretrained, left out of the adaptation: the default (see the field)
        if self.ell_drop == 1 and self.stage == "adapt" and not self.use_latent_actions:
            self.ell_drop = None  # no ℓ stream to leave out (the adapt recipe's 1.0 meets --no-use-latent-actions)
        if self.ell_drop is not None:
            if not (self.robot and self.use_latent_actions):
                raise RepwamError("--ell-drop leaves the noisy latent actions out of the action expert's training "
                                  "batches: it needs --stage adapt or joint, with latent actions")
            if not 0 <= self.ell_drop <= 1:
                raise RepwamError(f"ell_drop must lie in [0, 1], got {self.ell_drop}")
        if self.video_weight is not None:
            if self.video_weight < 0:
                raise RepwamError(f"video_weight must be >= 0, got {self.video_weight}")
            if self.video_drop == 1:
                raise RepwamError("--video-drop 1 never trains the forecast: --video-weight has nothing to weigh")
        if self.robot_weight is not None and (not self.robot or self.robot_weight <= 0):
            raise RepwamError(f"robot_weight={self.robot_weight}: the actions' weight is set at --stage adapt or "
                              "joint, and must be > 0")
        if self.robot_token_per_action and not self.robot:
            raise RepwamError("robot_token_per_action lays out the action expert's tokens: it needs --stage adapt or "
                              "joint")
        if self.aux_weight < 0:
            raise RepwamError(f"aux_weight must be >= 0, got {self.aux_weight}")
    @property
    def robot(self) -> bool:
        return self.stage in ("adapt", "joint")


def prepare_caches(tokenizer: str, lat: str, data: list[str | Path], progress: bool = True) -> tuple[dict, dict]:
    """Latents and ℓ labels of every dataset (made when missing); returns the (tokenizer, LAT) refs."""
    if not tokenizer or not lat:
        raise RepwamError("name the tokenizer and the LAT checkpoints (--tokenizer CKPT --lat CKPT)")
    tok = tokenizer_ref(load_tokenizer(tokenizer))
    lat_model = LatentActionTokenizer.from_pretrained(lat)
    parent = lat_model.checkpoint_meta["parents"]["tokenizer"]
    if parent["weights_hash"] != tok["weights_hash"]:
        raise RepwamError(
            f"LAT {lat} was trained on latents of tokenizer {parent['path']} (weights {parent['weights_hash']}), "
            f"not on those of {tok['path']} (weights {tok['weights_hash']}); pass the tokenizer it was trained on"
        )
    for root in data:
        tokenize_dataset(tokenizer, root, progress=progress)
        label_dataset(lat_model, root, progress=progress)
    ref = {k: lat_model.checkpoint_meta[k] for k in ("type", "path", "weights_hash")}
    return tok, ref


class WAMStage(Stage):
    name = "wam"

    def __init__(self, cfg: WAMTrainConfig, data: list[str | Path], progress: bool = True):
        if cfg.stage == "adapt":
            if not cfg.init:
                raise RepwamError("--stage adapt starts from a pretrained world action model: pass --init CHECKPOINT")
            from repwam.checkpoint import read_config

            parents = read_config(cfg.init).get("parents", {})  # the pretrained WAM names its tokenizer and LAT
            cfg = replace(cfg, tokenizer=cfg.tokenizer or parents.get("tokenizer", {}).get("path", ""),
                          lat=cfg.lat or (parents.get("lat") or {}).get("path", ""))
        self.cfg, self.data = cfg, [str(d) for d in data]
        self.tok, self.lat = prepare_caches(cfg.tokenizer, cfg.lat, data, progress)
        self.estimator, estimates = None, None
        if cfg.estimator:
            from repwam.train.estimator import crossfit_estimates, estimator_ref

            self.estimator, estimates = estimator_ref(cfg.estimator), crossfit_estimates(cfg.estimator, data)
        common = dict(clip_frames=cfg.clip_frames, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed,
                      robot=cfg.robot, aux=cfg.aux_key is not None, state_key=cfg.state_key, estimates=estimates)
        self.train_set = WAMClips(data, self.tok["weights_hash"], self.lat["weights_hash"], split="train", **common)
        norms = dict(ell_norm=self.train_set.ell_norm)
        if cfg.robot:
            norms.update(action_norm=self.train_set.action_norm, state_norm=self.train_set.state_norm,
                         aux_norm=self.train_set.aux_norm)
        self.val_set = WAMClips(data, self.tok["weights_hash"], self.lat["weights_hash"], split="val", **common, **norms)
        self.val_set.instructions = self.train_set.instructions = sorted(
            set(self.train_set.instructions) | set(self.val_set.instructions))
        encoder = TextEncoder(cfg.text_encoder, cache_dir=Path(data[0]) / "cache" / "text")
        self.text_spec = encoder.spec()
        self.text = TextTable(self.train_set.instructions, encoder)
        L, d = self.train_set.latent_shape
        # several views: the latents' grid is the views' grids stacked, (V h, w) (older caches: the tokenizer's)
        grid = self.train_set.z_meta.get("latent_grid") or load_tokenizer(cfg.tokenizer).latent_grid
        overrides = dict(latent_grid=tuple(grid), latent_dim=d, action_dim=len(self.train_set.ell_norm.mean),
                         text_dim=encoder.dim, attn_window=cfg.attn_window, use_latent_actions=cfg.use_latent_actions,
                         attn_backend=cfg.attn_backend, first_frame_context=cfg.first_frame_context)
        if cfg.patch_size is not None:
            overrides["patch_size"] = cfg.patch_size
        # the forecast's and the actions' weights, for the model built or adapted (None: the preset's or the
        # pretrained model's)
        weight = {} if cfg.video_weight is None else {"video_loss_weight": cfg.video_weight}
        if cfg.robot_weight is not None:
            weight["robot_loss_weight"] = cfg.robot_weight
        robot = {}
        if cfg.robot:
            a_dim = len(self.train_set.action_norm.mean)
            robot = dict(robot_action_dim=a_dim, robot_per_frame=self.train_set.tp * self.train_set.stride,
                         state_dim=len(self.train_set.state_norm.mean) if cfg.use_state else 0,
                         aux_dim=len(self.train_set.aux_norm.mean) if cfg.aux_key else 0,
                         aux_loss_weight=cfg.aux_weight, last_state_cond=cfg.last_state_cond,
                         robot_token_per_action=cfg.robot_token_per_action, robot_history=cfg.robot_history,
                         robot_history_drop=cfg.robot_history_drop, future_frames_given=cfg.future_frames_given)
            if cfg.video_drop is not None:
                robot["video_drop"] = cfg.video_drop
            if cfg.ell_drop is not None:
                robot["ell_drop"] = cfg.ell_drop
            if cfg.robot_width:  # the streams of the model adapted (or built), with the robot stream's width
                base = (WAMConfig.from_dict(WorldActionModel.read_checkpoint_config(cfg.init)["wam"])
                        if cfg.stage == "adapt" else WAMConfig.preset(cfg.preset))
                robot["streams"] = (*(s for s in base.streams if s.name != ROBOT),
                                    StreamConfig(ROBOT, cfg.robot_width, 4 * cfg.robot_width))
        if cfg.stage == "adapt":
            first = {"first_frame_context": True} if cfg.first_frame_context else {}  # else as pretrained
            self.model = WorldActionModel.from_pretrained(cfg.init, allow_new_streams=True, **robot,
                                                          attn_backend=cfg.attn_backend,
                                                          **first, **weight).train()
            init_parents = self.model.checkpoint_meta.get("parents", {})
            for name, ref in (("tokenizer", self.tok), ("lat", self.lat)):
                got = (init_parents.get(name) or {}).get("weights_hash")
                if got != ref["weights_hash"]:
                    raise RepwamError(f"--init {cfg.init} was pretrained with {name} {got}, not {ref['weights_hash']} "
                                      f"({ref['path']}); adapt with the {name} it was pretrained with")
            if self.model.cfg.use_latent_actions != cfg.use_latent_actions:
                raise RepwamError(f"--init {cfg.init} has use_latent_actions={self.model.cfg.use_latent_actions}; "
                                  f"set --use-latent-actions accordingly")
        else:
            self.model = WorldActionModel(WAMConfig.preset(cfg.preset, **overrides, **robot, **weight))
        if L != self.model.cfg.tokens_per_frame:
            raise RepwamError(f"the latents have {L} tokens per frame but the tokenizer grid {grid} gives "
                              f"{self.model.cfg.tokens_per_frame}")
        self.split = split_spec(self.train_set.datasets, cfg.val_fraction, cfg.split_seed)
        self.device = torch.device("cpu")

    def to(self, device):
        self.device = device

    def collate_fn(self, items):
        keys = ("z", "ell", "valid") + (("first",) if self.model.cfg.first_frame_context else ()) + \
            (("action", "state") if self.cfg.robot else ()) + (("aux",) if self.cfg.aux_key else ())
        batch = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in keys}
        idx = torch.tensor([it["text"] for it in items])
        batch["text"], batch["text_mask"] = self.text(idx)
        return batch

    def loss(self, batch):
        return self.model.loss(batch)

    @torch.no_grad()
    def validate(self, model):
        """Flow-matching losses on a fixed sample of validation clips with fixed noise, chunk size 2, no drops (the
        future frames, or ℓ, are left out only for a model never trained with them: video_drop or ell_drop = 1)."""
        clips = val_subset(self.val_set, self.cfg.optim.val_items, seed=1)
        drop_video = model.cfg.video_drop >= 1
        drop_ell = model.cfg.ell_drop >= 1 and model.cfg.has(ROBOT)
        loader = torch.utils.data.DataLoader(clips, batch_size=32, collate_fn=self.collate_fn)
        out: dict[str, list[float]] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for batch in loader:
                batch = {k: v.to(self.device) for k, v in batch.items()}
                for k, v in model.loss(batch, chunk_size=2, drop_video=drop_video, drop_ell=drop_ell).items():
                    out.setdefault(k, []).append(float(v))
        return {k: float(np.mean(v)) for k, v in out.items() if k in ("loss", "video", "action", "robot", "aux")}

    def checkpoint_meta(self, model):
        robot = {}
        if self.cfg.robot:
            robot = {"action_stats": self.train_set.action_norm.to_dict(),
                     "state_stats": self.train_set.state_norm.to_dict(), "init": self.cfg.init,
                     "aux_key": self.cfg.aux_key,  # a training target only: the policy never reads it
                     "state_key": self.cfg.state_key}
        return {
            **robot,
            "parents": {"tokenizer": self.tok, "lat": self.lat,
                        **({"estimator": self.estimator} if self.estimator else {})},
            "stage": self.cfg.stage,
            "text_encoder": self.text_spec,
            "ell_stats": self.train_set.ell_norm.to_dict(),
            "camera": self.train_set.z_meta["camera"],
            "cameras": self.train_set.z_meta.get("cameras") or [self.train_set.z_meta["camera"]],
            "frame_stride": self.train_set.stride,
            "temporal_patch": self.train_set.tp,
            "clip_frames": self.cfg.clip_frames,
            "data": self.data,
            "split": self.split,
        }


def train_wam(cfg: WAMTrainConfig, data: list[str | Path], out: str | Path, *, resume: bool = False,
              progress: bool = True) -> Path:
    return run_stage(lambda: WAMStage(cfg, data, progress=progress), cfg, "train wam", data, out, resume=resume,
                     progress=progress)


CONFIG = WAMTrainConfig
RECIPES = {
    "default": WAMTrainConfig(),  # pretraining on z + ℓ (the method's stage 1)
    "adapt": WAMTrainConfig(stage="adapt"),  # stage 2: the action expert on robot actions (needs --init)
    "joint": WAMTrainConfig(stage="joint"),  # z + ℓ + robot actions from scratch
    "no-latent-actions": WAMTrainConfig(stage="joint", use_latent_actions=False),  # z + robot actions, no ℓ
}
train = train_wam
