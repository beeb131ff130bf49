"""Checkpoints: a directory with `config.json` and `model.safetensors` (plus named extra safetensors files).

Frozen teachers and text encoders are referenced by name in config.json, never copied in. Writes are atomic:
the directory is written under a temporary name and renamed, so a crash never leaves a half checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from repwam.errors import RepwamError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def _state(module_or_state) -> dict[str, torch.Tensor]:
    state = module_or_state.state_dict() if isinstance(module_or_state, torch.nn.Module) else module_or_state
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_checkpoint(path: str | Path, config: dict, model, extras: dict | None = None) -> Path:
    """Write `config.json`, `model.safetensors` and `<name>.safetensors` for each extra module/state dict."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / CONFIG).write_text(json.dumps(config, indent=1, default=str))
    save_file(_state(model), tmp / WEIGHTS)
    for name, m in (extras or {}).items():
        save_file(_state(m), tmp / f"{name}.safetensors")
    old = path.with_name(path.name + ".old")
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)
    return path


def read_config(path: str | Path) -> dict:
    path = Path(path)
    f = path / CONFIG
    if not f.exists():
        raise RepwamError(f"{path} is not a repwam checkpoint: {f} is missing")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise RepwamError(f"{f} is not valid JSON: {e}") from None


def load_weights(path: str | Path, name: str = "model") -> dict[str, torch.Tensor]:
    f = Path(path) / f"{name}.safetensors"
    if not f.exists():
        raise RepwamError(f"checkpoint file {f} is missing")
    try:
        return load_file(f)
    except Exception as e:  # safetensors raises several types on corrupt files
        raise RepwamError(f"cannot read {f}: {e}") from None


def load_into(module: torch.nn.Module, path: str | Path, name: str = "model") -> torch.nn.Module:
    state = load_weights(path, name)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RepwamError(
            f"{Path(path) / (name + '.safetensors')} does not match the model built from its config.json: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return module
