"""Typed configs as plain dataclasses: read back from JSON (a saved run config) and turned into a command line.

Training options are defined once, in each stage's config dataclass; `repwam train <stage>` derives its options from
it with tyro (`--teacher none --optim.lr 1e-3`), starts from a named recipe (`--recipe NAME`) or from a saved run
(`--config RUN/run.json`), and writes the full config to `RUN/run.json`, so any run can be replayed.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

from repwam.errors import RepwamError


def from_dict(cls, d: dict):
    """Build dataclass `cls` from a (JSON) dict, recursing into nested dataclasses; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise RepwamError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(names)}")
    kw = {}
    for name, value in d.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value)
        elif typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        kw[name] = value
    return cls(**kw)


def parse_cli(args: list[str], prog: str, description: str, cfg, fields: list[tuple]):
    """Parse `args` with tyro into a dataclass of `fields` ((name, type, default[, help])) plus `cfg`, a config
    dataclass instance whose fields become top-level options (`--teacher none --optim.lr 1e-3`)."""
    import copy
    from typing import Annotated

    import tyro

    Args = dataclasses.make_dataclass("Args", [  # real types (the annotations here are strings)
        *[(name, Annotated[tp, tyro.conf.arg(help=more[0])] if more else tp,
           dataclasses.field(default_factory=lambda d=default: copy.copy(d))) for name, tp, default, *more in fields],
        ("cfg", Annotated[type(cfg), tyro.conf.arg(name="")], dataclasses.field(default_factory=lambda: cfg)),
    ])
    return tyro.cli(Args, args=list(args), prog=prog, description=description)


def read_record(run: dict) -> dict:
    """A run.json as today's code reads it: a setting whose default changed meaning gets the value it stood for
    when the run was recorded. `train wam --stage adapt` with latent actions recorded ell_drop None (or nothing)
    for the pretrained model's 0.25 (ℓ denoised beside the actions) until 2026-12-07; it now resolves to 1.0."""
    if (run.get("command") == "train wam" and run.get("stage") == "adapt" and run.get("use_latent_actions", True)
            and run.get("ell_drop") is None):
        run = {**run, "ell_drop": 0.25}
    return run


def load_run_config(path: str | Path, stage: str) -> tuple[dict, list[str]]:
    """A saved run.json -> (its config fields, its data)."""
    path = Path(path)
    if path.is_dir():
        path = path / "run.json"
    try:
        run = json.loads(path.read_text())
    except FileNotFoundError:
        raise RepwamError(f"no run config at {path}") from None
    except json.JSONDecodeError as e:
        raise RepwamError(f"{path} is not valid JSON: {e}") from None
    if run.get("command") != f"train {stage}":
        raise RepwamError(f"{path} is a {run.get('command')!r} run, not a 'train {stage}' run")
    run = read_record(run)
    data = run.pop("data", [])
    run.pop("command")
    return run, data


class ModelConfig:
    """Mixin for a model's config dataclass: `to_dict` (JSON-ready), `from_dict` (unknown keys are an error) and
    `preset(name, **overrides)` from the registry the subclass names in `presets()`."""

    @classmethod
    def presets(cls) -> dict:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise RepwamError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides):
        presets = cls.presets()
        if name not in presets:
            raise RepwamError(f"unknown {cls.__name__} preset {name!r}; available: {sorted(presets)}")
        return dataclasses.replace(presets[name], **overrides)
