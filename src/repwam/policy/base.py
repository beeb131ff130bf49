"""The policy interface every controller in repwam speaks: the RepWAM policy, the plain-policy baseline, the scripted
expert, and a remote policy behind the websocket server.

    policy.metadata            camera_keys, image_size, state_dim, action_dim, action_horizon, instruction_key
    policy.reset(instruction)  start an episode (clears frame buffers and caches)
    policy.infer(observation)  -> {"actions": float32 (H, action_dim)}, and optionally "imagined" (decoded future
                               frames) and "estimated_state" (a state estimator's reading of the scene)

`observation` is a dict in LeRobot keys: `observation.images.<cam>` uint8 (H, W, 3) for every camera in
`metadata["camera_keys"]`, `observation.state` float32 (state_dim,), and optionally the instruction under
`metadata["instruction_key"]` ("prompt", as openpi clients send it).

The caller calls `infer` at EVERY control step with the newest observation and executes `actions[0]`: a policy
sees every frame (RepWAM's tubelets need all of them) and does receding-horizon planning itself, replanning when
its queue of planned actions runs out; between replans `infer` only records the frame and pops the queue. `actions`
holds the rest of the current plan (H >= 1), for callers that want to look ahead.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from repwam.errors import RepwamError

INSTRUCTION_KEY = "prompt"


def read_state(obs: dict[str, Any], key: str, dim: int) -> np.ndarray:
    """The (dim,) float32 vector a policy's state token reads from obs[key] (the robot's state, or a privileged
    reference's simulator state), or an error naming the key and the size it was trained on."""
    state = np.asarray(obs[key], np.float32)
    if state.shape != (dim,):
        raise RepwamError(f"{key!r} has shape {state.shape}; this policy was trained on ({dim},)")
    return state


@runtime_checkable
class Policy(Protocol):
    metadata: dict[str, Any]

    def reset(self, instruction: str) -> None: ...

    def infer(self, observation: dict[str, Any]) -> dict[str, np.ndarray]: ...
