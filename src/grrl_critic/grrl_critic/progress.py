"""Task progress of a live episode (paper eq. 2) from a trained offline critic.

``ProgressEstimator`` takes what a policy acted on — joint positions, the simulator state or the
cameras, the instruction — and the chunk it chose, and returns rho = the mean of the critic's
categorical value (the same :func:`grrl_critic.td3bc.critic_progress` the data filter uses).
The progress node wraps it; tests and scripts call it directly.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from grrl_policy.checkpoint import CheckpointMeta, load_checkpoint
from grrl_policy.model import GRRLModel
from grrl_policy.policy_runtime import build_observation
from grrl_policy.robot import RobotDescription
from grrl_policy.task_space import action_codec

from .td3bc import critic_progress

log = logging.getLogger(__name__)


def load_critic(path: str | Path, device: str = "cpu"
                ) -> tuple[GRRLModel, str, str, str, CheckpointMeta]:
    """A critic checkpoint written by ``grrl-critic train`` (verified: sha256, config, shapes):
    (model, kind, reduce, position, meta). Raises ValueError for any other checkpoint."""
    model, meta = load_checkpoint(path, device=device)
    x = meta.extra
    if x.get("role") != "critic":
        raise ValueError(f"{path} is not a critic checkpoint (role {x.get('role')!r})")
    return (model.eval(), str(x.get("kind", "distributional")),
            str(x.get("progress_reduce", "mean")), str(x.get("progress_position", "first")), meta)


class ProgressEstimator:
    """rho of (observation, chunk) pairs for one critic."""

    def __init__(self, path: str | Path, robot: RobotDescription | None = None,
                 device: str = "cpu"):
        self.model, self.kind, self.reduce, self.position, self.meta = load_critic(path, device)
        self.device = torch.device(device)
        cfg = self.model.cfg
        self.codec = action_codec(cfg.action_space, robot=robot)

    @property
    def observes_state(self) -> bool:
        return self.model.cfg.observes_state

    @property
    def sha256(self) -> str:
        return self.meta.sha256

    @torch.no_grad()
    def progress(self, q: np.ndarray, instruction: str, actions: np.ndarray,
                 state: np.ndarray | None = None,
                 images: dict[str, np.ndarray] | None = None) -> float:
        """q: (n_joints,) measured joints; actions: (k, action_dim) the chunk in the critic's
        action space (physical units, as the policy publishes it); state or images as the
        critic observes. Raises ValueError (ObservationError) for input it cannot score."""
        cfg = self.model.cfg
        actions = np.asarray(actions, np.float32)
        if actions.shape != (cfg.horizon, cfg.action_dim):
            raise ValueError(f"chunk of shape {actions.shape}; the critic scores "
                             f"({cfg.horizon}, {cfg.action_dim}) chunks ({cfg.action_space} space)")
        if not np.isfinite(actions).all():
            raise ValueError("the chunk has non-finite actions")
        proprio = np.asarray(self.codec.proprio(q), np.float32)
        obs, proprio_t = build_observation(cfg, instruction, proprio, images, state=state)
        obs = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in obs.items()}
        rho = critic_progress(self.model, obs, proprio_t.to(self.device),
                              torch.from_numpy(actions)[None].to(self.device),
                              self.kind, self.reduce, self.position)
        value = float(rho[0])
        if not np.isfinite(value):
            raise ValueError("the critic produced a non-finite progress")
        return value
