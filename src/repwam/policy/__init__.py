"""repwam.policy: closed-loop controllers behind one interface (`Policy`: metadata, reset, infer).

`load_policy(path)` opens any servable checkpoint by the type its config.json names:
    repwam.wam    -> RepWAMPolicy (repwam.policy.repwam): the world action model with its tokenizer
    repwam.plain  -> PlainPolicy (repwam.policy.plain): the image-to-action-chunk baseline
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from repwam.checkpoint import read_config
from repwam.errors import RepwamError
from repwam.policy.base import INSTRUCTION_KEY, Policy

POLICIES = {  # checkpoint type -> "module:class" with a `from_pretrained(path, **settings)` classmethod
    "repwam.wam": "repwam.policy.repwam:RepWAMPolicy",
    "repwam.plain": "repwam.policy.plain:PlainPolicy",
}


def load_policy(path: str | Path, **settings) -> Policy:
    """A ready policy from a checkpoint directory; `settings` override inference settings (each policy class lists
    its own in `SETTINGS`, e.g. RepWAMPolicy's chunk and actions_only, PlainPolicy's execute)."""
    kind = read_config(path).get("type")
    if kind not in POLICIES:
        raise RepwamError(f"{path} is a {kind!r} checkpoint; servable policies are {sorted(POLICIES)}")
    module, name = POLICIES[kind].split(":")
    cls = getattr(importlib.import_module(module), name)
    unknown = sorted(set(settings) - set(cls.SETTINGS))
    if unknown:
        raise RepwamError(f"{path} is a {kind} checkpoint ({name}), whose inference settings are "
                          f"{', '.join(cls.SETTINGS)}; unknown: {', '.join(unknown)}")
    return cls.from_pretrained(path, **settings)


def parse_settings(items: list[str] | None) -> dict[str, Any]:
    """`["chunk=1", "actions_only=false"]` -> {"chunk": 1, "actions_only": False}: each value is read as JSON
    (numbers, true/false, null) and otherwise kept as a string."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RepwamError(f"a policy setting looks like KEY=VALUE (e.g. chunk=1), got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


__all__ = ["INSTRUCTION_KEY", "POLICIES", "Policy", "load_policy", "parse_settings"]
