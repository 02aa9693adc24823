"""The policy at deployment, without ROS: validated observations in, a checked action chunk out,
and atomic hot swapping of verified checkpoints.

Everything that can be wrong with an observation (a missing camera, a wrong image size or
dtype, non-finite proprioception, an empty instruction) raises :class:`ObservationError`, and
a non-finite model output raises :class:`PolicyOutputError`; the node turns both into a logged
reason and a hold. A checkpoint is loaded and verified completely before it replaces the
running model; a refused one leaves the running model untouched.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .checkpoint import CheckpointMeta, load_checkpoint
from .keys import CAMERAS, IMAGES, INSTRUCTION, STATE
from .model import GRRLModel, ModelConfig, preset

log = logging.getLogger(__name__)


class ObservationError(ValueError):
    """An observation the policy must not act on; the message says why."""


class PolicyOutputError(RuntimeError):
    """The model produced something that must not reach the robot (NaN/inf)."""


@dataclass
class Chunk:
    """One inference result in physical units."""

    actions: np.ndarray
    """(k, action_dim) float32"""
    noise: np.ndarray
    """(k, action_dim) float32: the ε the flow started from"""
    steered: bool
    """ε came from the noise predictor π_θ' (else N(0, I))"""
    version: int
    sha256: str
    timings: dict[str, float] = field(default_factory=dict)
    """seconds per stage: 'encode', 'sample', 'total'"""


def build_observation(cfg: ModelConfig, instruction: str, proprio: np.ndarray,
                      images: dict[str, np.ndarray | None] | None = None,
                      state: np.ndarray | None = None) -> tuple[dict, torch.Tensor]:
    """Validate one observation and batch it (B = 1) for :meth:`GRRLModel.encode`.

    images: camera name → (S, S, 3) uint8 RGB, for every camera in ``CAMERAS``; proprio:
    (proprio_dim,); state: (state_dim,) in the state-observation mode."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise ObservationError("no instruction yet")
    proprio = np.asarray(proprio, dtype=np.float32)
    if proprio.shape != (cfg.proprio_dim,):
        raise ObservationError(f"proprioception has shape {proprio.shape}, expected ({cfg.proprio_dim},)")
    if not np.isfinite(proprio).all():
        raise ObservationError(f"non-finite proprioception at indices {np.flatnonzero(~np.isfinite(proprio)).tolist()}")
    obs: dict = {INSTRUCTION: [instruction]}
    if cfg.observes_state:
        if state is None:
            raise ObservationError("the model observes simulator state, none was given")
        state = np.asarray(state, dtype=np.float32)
        if state.shape != (cfg.tiny.state_dim,):
            raise ObservationError(f"state has shape {state.shape}, expected ({cfg.tiny.state_dim},)")
        if not np.isfinite(state).all():
            raise ObservationError(f"non-finite state at indices {np.flatnonzero(~np.isfinite(state)).tolist()}")
        obs[STATE] = torch.from_numpy(state)[None]
    else:
        size = cfg.image_size
        images = images or {}
        missing = [c for c in CAMERAS if images.get(c) is None]
        if missing:
            raise ObservationError(f"missing camera image(s): {', '.join(missing)}")
        stack = []
        for cam in CAMERAS:
            img = images[cam]
            if img.dtype != np.uint8 or img.shape != (size, size, 3):
                raise ObservationError(f"camera {cam}: image is {img.dtype} {img.shape}, the model "
                                       f"needs uint8 ({size}, {size}, 3)")
            stack.append(img)
        obs[IMAGES] = torch.from_numpy(np.stack(stack))[None]
    return obs, torch.from_numpy(proprio)[None]


class Policy:
    """A loaded model with its version; ``infer`` and ``swap`` may be called from different
    threads (the swap replaces a reference under a lock, an inference in flight finishes on the
    model it started with)."""

    def __init__(self, model: GRRLModel, meta: CheckpointMeta | None = None, device: str = "cpu"):
        self._lock = threading.Lock()
        self.device = torch.device(device)
        self._model = model.eval().to(self.device)
        self._version = meta.version if meta else 0
        self._sha = meta.sha256 if meta else ""
        self._steerable = bool(meta.extra.get("steerable", False)) if meta else False

    @classmethod
    def fresh(cls, preset_name: str = "tiny", seed: int = 0, device: str = "cpu") -> "Policy":
        """A freshly initialised model (version 0): for bring-up and tests of the graph."""
        torch.manual_seed(seed)
        return cls(GRRLModel(preset(preset_name)), None, device)

    @classmethod
    def load(cls, path: str, expected_sha256: str | None = None, device: str = "cpu") -> "Policy":
        model, meta = load_checkpoint(path, expected_sha256)
        return cls(model, meta, device)

    @property
    def config(self) -> ModelConfig:
        return self._model.cfg

    @property
    def version(self) -> int:
        return self._version

    @property
    def sha256(self) -> str:
        return self._sha

    @property
    def steerable(self) -> bool:
        """The checkpoint's noise predictor was trained online (``extra.steerable``): steering
        with it makes sense. Offline (BC) checkpoints are not: their predictor is untrained."""
        return self._steerable

    def swap(self, path: str, expected_sha256: str | None = None,
             expected_version: int | None = None, newer: bool = False) -> CheckpointMeta:
        """Load, verify and atomically install a checkpoint; raises CheckpointError (keeping the
        running model) if anything is wrong: a model of another shape, a file whose own version
        is not ``expected_version`` (an announcement cannot relabel a file), or, with ``newer``,
        a file whose version is not newer than the running one."""
        from .checkpoint import CheckpointError
        model, meta = load_checkpoint(path, expected_sha256)
        if meta.config.to_dict() != self._model.cfg.to_dict():
            raise CheckpointError(f"{path}: model config differs from the running model's "
                                  f"({meta.config.name} vs {self._model.cfg.name})")
        if expected_version is not None and meta.version != expected_version:
            raise CheckpointError(f"{path}: announced as version {expected_version} but the "
                                  f"file is version {meta.version}")
        if newer and meta.version <= self._version:
            raise CheckpointError(f"{path}: version {meta.version} is not newer than the "
                                  f"running version {self._version}")
        model = model.eval().to(self.device)
        with self._lock:
            self._model, self._version, self._sha = model, meta.version, meta.sha256
            self._steerable = bool(meta.extra.get("steerable", False))
        log.info("policy version %d installed (%s)", meta.version, meta.sha256[:12])
        return meta

    def warm_up(self) -> None:
        """One inference on zero inputs (explicit zero noise: no random draw is used up). It
        loads what the model loads lazily (the text encoder) and runs every kernel once, so a
        controller that reports ready after it acts at full speed from its first chunk."""
        cfg = self.config
        size = cfg.image_size
        images = None if cfg.observes_state else {
            c: np.zeros((size, size, 3), np.uint8) for c in CAMERAS}
        state = np.zeros(cfg.tiny.state_dim, np.float32) if cfg.observes_state else None
        obs, proprio = build_observation(cfg, "warm up", np.zeros(cfg.proprio_dim, np.float32),
                                         images, state=state)
        self.infer(obs, proprio, noise=np.zeros((cfg.horizon, cfg.action_dim), np.float32))

    @torch.no_grad()
    def infer(self, obs: dict, proprio: torch.Tensor, steer: bool = False,
              noise: np.ndarray | None = None, steps: int | None = None,
              explore: np.ndarray | None = None) -> Chunk:
        """One chunk. The initial noise is ``noise`` if given, else the noise predictor's output
        if ``steer`` (plus ``explore`` (k, D) if given: exploration around the steered noise
        during online RL), else N(0, I)."""
        with self._lock:
            model, version, sha = self._model, self._version, self._sha
        t0 = time.perf_counter()
        obs = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in obs.items()}
        proprio = proprio.to(self.device)
        prefix = model.encode(obs)
        t1 = time.perf_counter()
        if noise is not None:
            eps = torch.as_tensor(noise, dtype=torch.float32, device=self.device)[None]
        elif steer:
            eps = model.predict_noise(prefix, proprio)
            if explore is not None:         # exploration stays inside the predictor's bound
                draw = model.structured_draw(torch.as_tensor(explore, dtype=eps.dtype,
                                                             device=eps.device)[None])
                eps = model.clip_noise(eps + draw)
        else:
            eps = torch.randn(1, model.cfg.horizon, model.cfg.action_dim, device=self.device)
        if not torch.isfinite(eps).all():
            raise PolicyOutputError("the noise predictor produced non-finite noise")
        actions = model.decode_actions(model.sample_normalized(prefix, proprio, eps, steps), proprio)
        t2 = time.perf_counter()
        out = actions[0].float().cpu().numpy()
        if not np.isfinite(out).all():
            raise PolicyOutputError(f"the policy produced non-finite actions (version {version})")
        return Chunk(out, eps[0].float().cpu().numpy(), steer and noise is None, version, sha,
                     {"encode": t1 - t0, "sample": t2 - t1, "total": t2 - t0})
