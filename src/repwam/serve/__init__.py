"""repwam.serve: a policy behind an openpi-compatible websocket, and the clients that drive it.

    server.py         PolicyServer: one Policy per connection, msgpack + numpy frames, bad input answered, never fatal
    client.py         WebsocketPolicy: the Policy interface over the wire (Meta-World eval with --server ws://...)
    robotwin.py       RoboTwin 2.0 deploy_policy interface (get_model / eval / reset_model) over the wire
    libero.py         LIBERO evaluation loop over the wire
    msgpack_numpy.py  openpi's array encoding, byte-compatible, refusing object/void/complex dtypes and pickle

The wire protocol (openpi's, plus an explicit episode start), one msgpack message per binary frame:

    server -> client  on connect: the metadata map (`wire_metadata`): protocol_version, camera_keys, image_keys,
                      image_size [H, W], state_key, state_dim, action_dim, action_horizon, instruction_key, limits,
                      and every other key of `policy.metadata`
    client -> server  {"reset": True, "prompt": str}          start an episode on this connection
    server -> client  {"reset": True, "episode": n}           ack; n counts episodes on this connection from 1
    client -> server  observation: {"observation.images.<cam>": uint8 (H, W, 3) at image_size (any size up to
                      max_image_size when the policy names one), "observation.state": float (S,), "prompt": str
                      (optional), "observation.environment_state": float (n,) (privileged policies only)}
                      checked by `validate_observation`; other keys are refused (repwam's client drops the keys the
                      server does not take before sending)
    server -> client  {"actions": float32 (h, action_dim), "server_timing": {"infer_ms": ..., "prev_total_ms": ...}}
                      prev_total_ms (from the 2nd request on) is the server's whole time for the previous request,
                      from its frame arriving to its answer sent
    on any error      the error as a text frame, then close code 1011 (openpi's behaviour)

openpi clients never send a reset: an observation that arrives before any reset, or whose prompt differs from the
current episode's, starts a new episode with that prompt. Consecutive episodes of the same task need the explicit
reset, which repwam's clients always send.

This module is the protocol itself: plain numpy, importable by a policy without msgpack or websockets.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from repwam.errors import RepwamError

PROTOCOL_VERSION = 1
IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"  # privileged simulator state (Meta-World's scripted expert)
# not sent by clients: the robot's state followed by a state estimator's reading of the camera (repwam.policy.estimator)
EST_STATE_KEY = "observation.estimated_state"
MAX_ENV_STATE_DIM = 4096
DEFAULT_INSTRUCTION_KEY = "prompt"
RESET_KEY = "reset"
DEFAULT_MAX_PROMPT_CHARS = 2000  # a long instruction is ~200 characters; this bounds tokenizer work per request


class ProtocolError(RepwamError):
    """A message that breaks the wire protocol or does not match the policy; the text says what and where."""


def image_keys(metadata: Mapping[str, Any]) -> list[str]:
    """The observation keys of the cameras: `camera_keys` as given, prefixed with observation.images. if bare."""
    return [k if k.startswith(IMAGE_PREFIX) else IMAGE_PREFIX + k for k in metadata["camera_keys"]]


def image_hw(metadata: Mapping[str, Any]) -> tuple[int, int]:
    """`image_size` as (H, W); an int means a square image."""
    size = metadata["image_size"]
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def instruction_key(metadata: Mapping[str, Any]) -> str:
    return metadata.get("instruction_key") or DEFAULT_INSTRUCTION_KEY


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} array {x.shape}"
    return type(x).__name__


def _names(keys) -> str:
    keys = sorted(str(k)[:60] for k in keys)
    return ", ".join(map(repr, keys[:5])) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def validate_prompt(prompt: Any, max_chars: int = DEFAULT_MAX_PROMPT_CHARS, key: str = DEFAULT_INSTRUCTION_KEY) -> str:
    """A non-blank str of at most `max_chars` characters; returned unchanged."""
    if not isinstance(prompt, str):
        raise ProtocolError(f"{key!r} must be a string, got {_describe(prompt)}")
    if not prompt.strip():
        raise ProtocolError(f"{key!r} is empty: send the task instruction")
    if len(prompt) > max_chars:
        raise ProtocolError(f"{key!r} has {len(prompt)} characters; the limit is {max_chars}")
    return prompt


def accepted_keys(metadata: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(required, optional) observation keys for this policy: cameras, state (if state_dim > 0), the privileged
    environment state (if metadata["privileged"]); optional: the instruction, and the state when state_dim is 0."""
    required = image_keys(metadata)
    optional = [instruction_key(metadata)]
    (required if int(metadata.get("state_dim") or 0) > 0 else optional).append(STATE_KEY)
    if metadata.get("privileged"):
        required.append(ENV_STATE_KEY)
    return required, optional


def _float_vector(x: Any, key: str, dim: int | None = None) -> np.ndarray:
    """A finite 1-d float array of `dim` values (any length up to MAX_ENV_STATE_DIM when dim is None) as float32."""
    ok = isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.ndim == 1
    if not ok or (x.shape[0] != dim if dim is not None else x.shape[0] > MAX_ENV_STATE_DIM):
        want = f"({dim},)" if dim is not None else f"(n,) with n <= {MAX_ENV_STATE_DIM}"
        raise ProtocolError(f"{key!r} must be a float array {want}, got {_describe(x)}")
    if not np.isfinite(x).all():
        raise ProtocolError(f"{key!r} has non-finite values at {np.flatnonzero(~np.isfinite(x))[:8].tolist()}")
    return x.astype(np.float32, copy=False)


def validate_observation(obs: Any, metadata: Mapping[str, Any], *, max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
                         strict: bool = True) -> dict[str, Any]:
    """Check one observation against the policy's metadata and return it ready for `policy.infer`.

    Keys (`accepted_keys`): every camera in `image_keys(metadata)`, as uint8 (H, W, 3) at `image_size`, or of any
    size up to `max_image_size` a side when the metadata names one (the policy then resizes); `observation.state`,
    a finite float vector of `state_dim` (returned as float32); `observation.environment_state` for privileged
    policies; optionally the instruction, a non-blank str of at most `max_prompt_chars`. Any other key, a missing
    key, a wrong shape or dtype, or a non-finite value raises `ProtocolError` naming the key. Nothing in the
    observation is interpreted as a path or opened. The server is `strict`; a policy called in-process
    (`strict=False`) ignores keys it does not use (the evaluation harness sends the simulator state to every policy).
    """
    if not isinstance(obs, dict):
        raise ProtocolError(f"an observation must be a map of keys to arrays, got {_describe(obs)}")
    required, optional = accepted_keys(metadata)
    missing = [k for k in required if k not in obs]
    unknown = [k for k in obs if k not in required and k not in optional] if strict else []
    if missing or unknown:
        parts = ([f"missing {_names(missing)}"] if missing else []) + ([f"unknown {_names(unknown)}"] if unknown else [])
        raise ProtocolError(f"observation keys: {'; '.join(parts)} (expected {_names(required)}"
                            f"{' and optionally ' + _names(optional) if optional else ''})")
    h, w = image_hw(metadata)
    limit = metadata.get("max_image_size")
    out: dict[str, Any] = {}
    for k in image_keys(metadata):
        img = obs[k]
        if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
            raise ProtocolError(f"{k!r} must be a uint8 array (H, W, 3), got {_describe(img)}")
        if limit is None and img.shape[:2] != (h, w):
            raise ProtocolError(f"{k!r} must be a uint8 array ({h}, {w}, 3), got {_describe(img)}")
        if limit is not None and not (1 <= min(img.shape[:2]) and max(img.shape[:2]) <= int(limit)):
            raise ProtocolError(f"{k!r} is {img.shape[0]}x{img.shape[1]}; images of 1 to {limit} pixels a side "
                                f"are accepted (the policy uses {h}x{w})")
        out[k] = img
    if STATE_KEY in obs:  # a policy without a state input (state_dim 0) takes the robot's state of any size and ignores it
        out[STATE_KEY] = _float_vector(obs[STATE_KEY], STATE_KEY, int(metadata.get("state_dim") or 0) or None)
    if ENV_STATE_KEY in obs:
        out[ENV_STATE_KEY] = _float_vector(obs[ENV_STATE_KEY], ENV_STATE_KEY, None)
    prompt_key = instruction_key(metadata)
    if prompt_key in obs:
        out[prompt_key] = validate_prompt(obs[prompt_key], max_prompt_chars, prompt_key)
    return out


def validate_actions(result: Any, metadata: Mapping[str, Any]) -> np.ndarray:
    """The policy's answer: {"actions": finite (h >= 1, action_dim)} -> float32 actions. Raises RepwamError."""
    if not isinstance(result, Mapping) or "actions" not in result:
        raise RepwamError(f"policy.infer must return {{'actions': array}}, got {_describe(result)}")
    actions = np.asarray(result["actions"])
    dim = int(metadata["action_dim"])
    if actions.ndim != 2 or actions.shape[0] < 1 or actions.shape[1] != dim or actions.dtype.kind not in "fiu":
        raise RepwamError(f"policy.infer returned actions {_describe(actions)}; expected float (h >= 1, {dim})")
    if not np.isfinite(actions).all():
        raise RepwamError("policy.infer returned non-finite actions")
    return actions.astype(np.float32, copy=False)


def expected_observation_bytes(metadata: Mapping[str, Any]) -> int:
    """Largest payload of one accepted observation (images at their largest + state), without framing or prompt."""
    h, w = image_hw(metadata)
    if metadata.get("max_image_size") is not None:
        h = w = int(metadata["max_image_size"])
    env = 8 * MAX_ENV_STATE_DIM if metadata.get("privileged") else 0
    return len(image_keys(metadata)) * h * w * 3 + 8 * int(metadata.get("state_dim") or 0) + env


__all__ = [
    "DEFAULT_INSTRUCTION_KEY", "DEFAULT_MAX_PROMPT_CHARS", "ENV_STATE_KEY", "EST_STATE_KEY", "IMAGE_PREFIX", "PROTOCOL_VERSION",
    "RESET_KEY", "STATE_KEY", "ProtocolError", "accepted_keys", "expected_observation_bytes", "image_hw", "image_keys",
    "instruction_key", "validate_actions", "validate_observation", "validate_prompt",
]
