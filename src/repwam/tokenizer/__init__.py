"""repwam.tokenizer: RepViTok visual tokenizer, frozen vision teachers and tokenizer losses (stage [1])."""

from repwam.tokenizer.losses import (
    AlignHead,
    PatchDiscriminator,
    PerceptualLoss,
    TokenizerLoss,
    align_loss,
    d_loss,
    g_loss,
    l1,
    teacher_cosine,
)
from repwam.tokenizer.model import PRESETS, RepViTok, TokenizerConfig, block_causal_mask
from repwam.tokenizer.teachers import (
    PrivilegedEncoder,
    Teacher,
    available_teachers,
    build_teacher,
    build_teacher_from_spec,
    compute_targets,
    describe_layers,
    teacher_spec,
    teacher_targets,
)

__all__ = [
    "AlignHead", "PatchDiscriminator", "PerceptualLoss", "TokenizerLoss", "align_loss", "d_loss", "g_loss", "l1",
    "teacher_cosine", "PRESETS", "RepViTok", "TokenizerConfig", "block_causal_mask", "PrivilegedEncoder", "Teacher",
    "available_teachers", "build_teacher", "build_teacher_from_spec", "compute_targets", "describe_layers",
    "teacher_spec", "teacher_targets",
]
