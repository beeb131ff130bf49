"""Hugging Face teachers, local weights only: DINOv2 and SigLIP / SigLIP2 through `transformers`,
PE-Core through `timm`. Both packages are imported inside the teachers' constructors, never here."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from einops import rearrange

from repwam.errors import RepwamError
from repwam.tokenizer.teachers.base import Teacher, _resize
from repwam.tokenizer.teachers.efficientnet import efficientnet_input

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
