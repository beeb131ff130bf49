"""RepWAMPolicy: the world action model in closed loop.

    observe -> encode -> denoise the next chunk -> execute -> append the observed latents to the cache

Timeline (temporal_patch tp = 4 raw steps per latent frame, chunk of k latent frames):
    t = 0          frame 0 -> streaming encoder -> z_0; append z_0 (+ its state token); sample a chunk: the robot
                   actions a_0 .. a_{k·tp-1} (and, unless actions-only, the imagined z_1..z_k and ℓ_0..ℓ_{k-1})
    t = 1 .. k·tp  execute the queued actions one per call; buffer every observed frame
    t = k·tp       the k tubelets are complete -> z_1..z_k (streaming, the KV cache of the tokenizer); append them
                   as one clean chunk with the robot actions really executed, the ℓ the LAT's IDM reads off the
                   observed latents, and the observed state; sample the next chunk; and so on.
The history therefore holds real observed latents only (never imagined ones), chunked exactly as in training.
`execute` actions per plan, k·tp by default (receding horizon by chunks); fewer, a multiple of tp, plans k latent
frames ahead and runs only the first execute/tp of them (the plain policy's plan-16-run-8), appended as a shorter
clean chunk; `actions_only` skips denoising the video stream and `robot_only` ℓ (both: the fast control mode).

The same transforms as training and the server (repwam.data.transforms): image_to_model, the state and action
Normalizers saved in the WAM checkpoint, and the server's observation check (repwam.serve.validate_observation).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from repwam.data.transforms import Normalizer, frames_from_model, image_to_model
from repwam.errors import RepwamError
from repwam.lat.model import LatentActionTokenizer
from repwam.policy.base import INSTRUCTION_KEY, read_state
from repwam.policy.estimator import StateEstimator, policy_cameras, policy_estimator, robot_and_estimate
from repwam.serve import ENV_STATE_KEY, EST_STATE_KEY, STATE_KEY, validate_observation
from repwam.tokenizer.tokenize import load_parent_tokenizer
from repwam.wam.model import WorldActionModel
from repwam.wam.text import TextEncoder


class RepWAMPolicy:
    # what `load_policy(path, **settings)` takes; action_steps / video_steps: Euler steps per chunk (None: the model's);
    # execute: raw actions run per plan (None: the whole chunk, chunk · temporal_patch); robot_history: the executed
    # actions enter the history (None: the model's; False for a model trained with robot_history_drop)
    SETTINGS = ("chunk", "execute", "actions_only", "robot_only", "seed", "imagine", "estimator", "action_steps",
                "video_steps", "robot_history")

    def __init__(self, model: WorldActionModel, tokenizer, lat: LatentActionTokenizer | None, text: TextEncoder, *,
                 chunk: int | None = None, execute: int | None = None, actions_only: bool = True,
                 robot_only: bool | None = None, seed: int = 0,
                 imagine: bool = False, estimator: StateEstimator | None = None, action_steps: int | None = None,
                 video_steps: int | None = None, robot_history: bool | None = None):
        meta = model.checkpoint_meta
        if not model.cfg.robot_action_dim:
            raise RepwamError(f"{meta.get('path')} has no robot-action stream: adapt it first "
                              "(`repwam train wam --stage adapt --init <pretrained>`)")
        self.model, self.tokenizer, self.lat, self.text = model.eval(), tokenizer.eval(), lat, text
        self.k = int(chunk or model.cfg.chunk_size)
        if not 1 <= self.k <= max(model.cfg.chunk_sizes):
            raise RepwamError(f"chunk must be in [1, {max(model.cfg.chunk_sizes)}] latent frames (the chunk sizes "
                              f"{list(model.cfg.chunk_sizes)} this model was trained on), got {chunk}")
        for name, n in (("action_steps", action_steps), ("video_steps", video_steps)):
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise RepwamError(f"{name} must be a positive integer (Euler steps per chunk), got {n!r}")
        self.action_steps, self.video_steps = action_steps, video_steps
        self.per = model.cfg.robot_per_frame
        self.execute = self.k * self.per if execute is None else execute
        if (isinstance(self.execute, bool) or not isinstance(self.execute, int) or self.execute % self.per
                or not self.per <= self.execute <= self.k * self.per):
            raise RepwamError(f"execute must be a multiple of {self.per} (the actions of one latent frame) in "
                              f"[{self.per}, {self.k * self.per}] (chunk={self.k} latent frames), got {execute!r}")
        self.m = self.execute // self.per  # latent frames run, observed and appended per plan
        if robot_history is not None and not isinstance(robot_history, bool):
            raise RepwamError(f"robot_history must be true or false, got {robot_history!r}")
        self.robot_history = model.robot_history_setting(robot_history)  # refused here, at load, if it cannot apply
        if not actions_only and model.cfg.video_drop >= 1:
            raise RepwamError(f"{meta.get('path')} never learned to forecast (trained with video_drop=1): it acts from "
                              "the observed latents only; run it with actions_only=true")
        never_ell = model.cfg.ell_drop >= 1 and model.cfg.use_latent_actions  # adapted with ℓ left out of every batch
        if robot_only is None:
            robot_only = never_ell
        if never_ell and not robot_only:
            raise RepwamError(f"{meta.get('path')} never learned to act beside the latent actions (trained with "
                              "ell_drop=1): it denoises the robot actions alone; run it with robot_only=true")
        self.actions_only, self.robot_only, self.imagine = actions_only, robot_only, imagine and not actions_only
        self.action_norm = Normalizer.from_dict(meta["action_stats"])
        self.state_norm = Normalizer.from_dict(meta["state_stats"]) if model.cfg.state_dim else None
        # which observation the state token reads: the robot's state, or (a privileged reference) the whole simulator
        # observation, which the robot's protocol then does not ask for
        self.state_key = meta.get("state_key") or STATE_KEY
        privileged = self.state_key == ENV_STATE_KEY
        self.ell_norm = Normalizer.from_dict(meta["ell_stats"])
        # the views of the latents, in their token order (view-major); each is encoded with the same tokenizer
        self.cameras = list(meta.get("cameras") or [meta["camera"]])
        # EST_STATE_KEY: the state token reads the robot's state followed by the estimator's reading of its camera
        self.estimator = estimator.eval() if estimator is not None else None
        robot_state_dim = model.cfg.state_dim
        if self.state_key == EST_STATE_KEY:
            if estimator is None:
                raise RepwamError(f"{meta.get('path')} reads {EST_STATE_KEY}: it needs its state estimator")
            robot_state_dim = model.cfg.state_dim - estimator.cfg.target_dim
        self.metadata: dict[str, Any] = {
            "policy": "repwam",
            "checkpoint": meta.get("path"),
            "camera_keys": policy_cameras(self.cameras, self.estimator),
            "image_size": tokenizer.image_size,
            "max_image_size": 1024,
            "state_dim": 0 if privileged else robot_state_dim,
            "action_dim": model.cfg.robot_action_dim,
            "action_horizon": self.execute,
            "instruction_key": INSTRUCTION_KEY,
            "privileged": privileged,
        }
        self.seed = seed
        self._episode = None
        self._text_memo: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | Path, estimator: str | None = None, **settings) -> "RepWAMPolicy":
        """`estimator`: another state estimator's directory in place of the one the WAM was trained with
        (`load_estimator`)."""
        model = WorldActionModel.from_pretrained(path)
        meta = model.checkpoint_meta
        tok_ref = meta["parents"]["tokenizer"]
        tokenizer = load_parent_tokenizer(tok_ref, path)
        lat = None
        if model.cfg.use_latent_actions:
            lat_ref = meta["parents"]["lat"]
            lat = LatentActionTokenizer.from_pretrained(lat_ref["path"])
            if lat.checkpoint_meta["weights_hash"] != lat_ref["weights_hash"]:
                raise RepwamError(f"the LAT at {lat_ref['path']} is not the one the WAM {path} was trained on")
        estimator = policy_estimator(meta, "WAM", path, estimator)
        spec = meta["text_encoder"]
        text = TextEncoder(spec["name"], max_length=spec.get("max_length"))
        return cls(model, tokenizer, lat, text, estimator=estimator, **settings)

    def fork(self) -> "RepWAMPolicy":
        """A new policy with its own episode state around the same (read-only) modules: one per server connection."""
        other = copy.copy(self)
        other._episode, other._text_memo = None, dict(self._text_memo)
        return other

    # ------------------------------------------------------------------ episode
    def reset(self, instruction: str) -> None:
        if instruction not in self._text_memo:  # the encoder runs once per instruction string
            self._text_memo[instruction] = self.text.encode(instruction)
        self._episode = {
            "instruction": instruction,
            "cache": None,  # made at the first observation (first_frame_context reads it)
            "stream": self.tokenizer.stream_encoder(len(self.cameras)),  # one stream row per view
            "frames": [],  # frames observed since the last latent frame
            "new_z": [],  # latent frames observed since the last plan
            "last_z": None,  # the latest latent frame in the history (for ℓ of the next one)
            "queue": [],  # planned robot actions still to execute
            "executed": [],  # normalised robot actions executed since the last plan
            "t": 0,
            "generator": torch.Generator().manual_seed(self.seed),
            "infer_ms": [],
            "history": [],  # every latent frame appended to the world model's history (observed, never imagined)
        }

    def _encode(self, obs: dict, estimate: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The views (V, 3, S, S) and the normalised state token's vector; with a state estimator the estimate is
        computed only when `estimate` (the frames whose state the model reads), None otherwise."""
        size = self.tokenizer.image_size
        image = torch.stack([image_to_model(obs[cam], size) for cam in self.cameras])  # (V, 3, S, S)
        state = None
        if self.estimator is not None:
            robot = read_state(obs, STATE_KEY, self.metadata["state_dim"])
            if estimate:
                full, est = robot_and_estimate(self.estimator, obs, robot, self._episode["instruction"])
                self._episode["estimate"] = est  # returned by this infer (the harness scores it against the sim)
                state = self.state_norm(full)
        elif self.state_norm is not None:
            state = self.state_norm(read_state(obs, self.state_key, self.model.cfg.state_dim))
        return image, state

    @torch.no_grad()
    def infer(self, obs: dict) -> dict[str, np.ndarray]:
        if self._episode is None:
            raise RepwamError("call reset(instruction) before infer: the policy needs the episode's instruction")
        obs = validate_observation(obs, self.metadata, strict=False)
        ep = self._episode
        t0 = time.perf_counter()
        tp = self.tokenizer.temporal_patch
        # the state is read at the first frame and at the last frame of each tubelet
        image, state = self._encode(obs, estimate=ep["t"] == 0 or len(ep["frames"]) == tp - 1)
        out: dict[str, np.ndarray] = {}
        if ep["t"] == 0:
            z0 = self._views_to_tokens(ep["stream"].push(image[:, None]))  # (1, V L, d)
            emb, mask = self._text_memo[ep["instruction"]]
            ep["cache"] = self.model.new_cache(emb[None], mask[None], first=z0, robot_history=self.robot_history)
            self.model.append(ep["cache"], z0[:, None], state=None if state is None else state[None, None])
            ep["last_z"] = z0
            ep["history"].append(z0[0])
            out = self._plan()
        else:
            ep["frames"].append(image)
            if len(ep["frames"]) == tp:
                z = self._views_to_tokens(ep["stream"].push(torch.stack(ep["frames"], 1)))  # (1, V L, d)
                ep["frames"] = []
                ep["new_z"].append((z, state))
            if not ep["queue"]:  # the planned chunk is executed and observed: append it, plan the next
                if len(ep["new_z"]) != self.m:
                    raise RepwamError(f"internal: {len(ep['new_z'])} new latent frames at a replan, expected {self.m}")
                self._append_observed()
                out = self._plan()
        if ep.get("estimate") is not None:
            out["estimated_state"] = ep.pop("estimate").astype(np.float32)
        action = ep["queue"].pop(0)
        ep["executed"].append(action)
        ep["t"] += 1
        ep["infer_ms"].append(1000 * (time.perf_counter() - t0))
        actions = np.stack([action] + ep["queue"]).astype(np.float32)
        return {"actions": self.action_norm.inverse(torch.from_numpy(actions)).numpy(), **out}

    def _append_observed(self) -> None:
        ep = self._episode
        z = torch.stack([z for z, _ in ep["new_z"]], 1)  # (1, m, L, d)
        states = None
        if self.state_norm is not None:
            states = torch.stack([s for _, s in ep["new_z"]])[None]  # (1, m, D_s)
        robot = torch.from_numpy(np.stack(ep["executed"])).reshape(1, self.m, self.per, -1)  # (1, m, per, A)
        ell = None
        if self.lat is not None:  # the latent actions the LAT reads off what really happened
            seq = torch.cat([ep["last_z"][:, None], z], 1)  # (1, m+1, L, d)
            ell = self.ell_norm(self.lat(seq))  # (1, m, A)
        self.model.append(ep["cache"], z, ell=ell, robot=robot, state=states)
        ep["history"] += list(z[0])
        ep["last_z"], ep["new_z"], ep["executed"] = z[:, -1], [], []

    def _plan(self) -> dict[str, np.ndarray]:
        ep = self._episode
        out = self.model.sample_chunk(ep["cache"], self.k, actions_only=self.actions_only,
                                      ell=not self.robot_only, generator=ep["generator"],
                                      action_steps=self.action_steps, video_steps=self.video_steps)
        robot = out["robot"][0].reshape(self.k * self.per, -1)  # (k·per, A) normalised
        ep["queue"] = list(robot[: self.execute].float().numpy())
        extra = {}
        if self.imagine and out.get("z") is not None:
            z = torch.cat([ep["last_z"][:, None], out["z"]], 1)  # (1, 1+k, V L, d)
            dec = self.tokenizer.decode(self._tokens_to_views(z))[:, 1:]  # (V, k·tp, 3, S, S)
            views = frames_from_model(dec).permute(0, 1, 3, 4, 2).numpy()  # (V, k·tp, S, S, 3)
            extra["imagined"] = np.concatenate(list(views), axis=2)  # (k·tp, S, V S, 3): views side by side
        return extra

    def _views_to_tokens(self, z: torch.Tensor) -> torch.Tensor:
        """Stream output (V, L, d), one row per view -> one latent frame (1, V L, d), view-major (as tokenize)."""
        return z.reshape(1, -1, z.shape[-1])

    def _tokens_to_views(self, z: torch.Tensor) -> torch.Tensor:
        """Latent frames (1, T', V L, d) -> (V, T', L, d), one decodable clip per view."""
        V = len(self.cameras)
        return z[0].reshape(z.shape[1], V, -1, z.shape[-1]).transpose(0, 1)

    def history_latents(self) -> list[torch.Tensor]:
        """The latent frames (L, d) appended to the history this episode, in order."""
        return [] if self._episode is None else list(self._episode["history"])

    @property
    def infer_ms(self) -> list[float]:
        return [] if self._episode is None else list(self._episode["infer_ms"])
