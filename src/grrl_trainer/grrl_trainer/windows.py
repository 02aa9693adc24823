"""Training windows for TD learning with action chunks and for behaviour cloning.

A sample at step t of a trajectory of length T is

    observation s_t, action chunk a_{t:t+k} (padded past T with the last action, ``action_mask``
    marks the real ones), reward r, done, and the next observation s_{min(t+k, T-1)}

with the sparse reward of eq. (1): r = 1 only for the chunk that reaches the end of a
successful trajectory. Trajectories are the recorded episodes (successful or failed) and,
with ``hindsight``, the hindsight failed trajectories tau_{0:m_i} cut at every retry keyframe
m_i (reward 0, terminal at m_i), as in the paper's section 3.1. Mirror augmentation
(section 3.2) is applied on the fly with probability ``mirror_prob``.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import numpy as np

from grrl_trainer import keys
from grrl_trainer.dataset import EpisodeDataset
from grrl_trainer.mirror import mirror_sample

STATE_KEYS = (keys.STATE_JOINTS, keys.STATE_TCP, keys.STATE_GRIPPER)
ACTION_KEYS = (keys.ACTION_JOINTS, keys.ACTION_TCP, keys.ACTION_GRIPPER)
NEXT = "next."


@dataclass
class WindowConfig:
    """What the loader yields."""

    horizon: int = 16
    """k: actions per chunk (Q-chunking)"""
    images: bool = True
    """load the three camera images (else state only)"""
    hindsight: bool = True
    """add the hindsight failed trajectories cut at retry keyframes"""
    mirror_prob: float = 0.0
    """probability of mirroring a sample on the fly"""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if not 0.0 <= self.mirror_prob <= 1.0:
            raise ValueError(f"mirror_prob must be in [0, 1], got {self.mirror_prob}")


@dataclass(frozen=True)
class Segment:
    episode: int
    length: int         # T: steps 0..T-1
    success: bool
    hindsight: bool


class TransitionWindows:
    """Random-access windows over all trajectories of an :class:`EpisodeDataset`."""

    def __init__(self, dataset: EpisodeDataset, config: WindowConfig | None = None):
        self.data = dataset
        self.config = config or WindowConfig()
        self.segments: list[Segment] = []
        for i, meta in enumerate(dataset.episodes):
            self.segments.append(Segment(i, int(meta["n_steps"]), bool(meta["success"]), False))
            if self.config.hindsight:
                for m in meta["retry_keyframes"]:
                    if m > 0:
                        self.segments.append(Segment(i, m + 1, False, True))
        self.starts = np.cumsum([0] + [s.length for s in self.segments])
        self.epoch = 0
        if self.config.images and any(not m["cameras"] for m in dataset.episodes):
            raise ValueError("images requested but some episodes have none; use images=False")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def set_epoch(self, epoch: int) -> None:
        """New mirror draws for a new epoch."""
        self.epoch = epoch

    def locate(self, i: int) -> tuple[Segment, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        s = bisect.bisect_right(self.starts, i) - 1
        return self.segments[s], int(i - self.starts[s])

    def _obs(self, ep: int, t: int) -> dict[str, Any]:
        out = {k: self.data.load(ep, k, t) for k in STATE_KEYS}
        if self.config.images:
            for k in keys.IMAGE_KEYS:
                out[k] = self.data.load(ep, k, t)
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        seg, t = self.locate(i)
        k, T, ep = self.config.horizon, seg.length, seg.episode
        stop = min(t + k, T)
        sample: dict[str, Any] = self._obs(ep, t)
        for key in ACTION_KEYS:
            chunk = self.data.load(ep, key, slice(t, stop))
            if len(chunk) < k:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], k - len(chunk), axis=0)])
            sample[key] = chunk
        sample["action_mask"] = np.arange(t, t + k) < T
        done = t + k >= T
        sample["reward"] = np.float32(1.0 if done and seg.success else 0.0)   # eq. (1)
        sample["done"] = done
        for key, value in self._obs(ep, min(t + k, T - 1)).items():
            sample[NEXT + key] = value
        meta = self.data.episodes[ep]
        sample[keys.INSTRUCTION] = meta["instruction"]
        sample["episode"], sample["timestep"], sample["length"] = ep, t, T
        sample["success"], sample["hindsight"] = seg.success, seg.hindsight
        # the draw depends on (seed, epoch, index) only: the same in every loader worker and
        # independent of the order samples are read in
        if self.config.mirror_prob and np.random.default_rng(
                [self.config.seed, self.epoch, i]).random() < self.config.mirror_prob:
            sample = self._mirror(sample)
        return sample

    @staticmethod
    def _mirror(sample: dict[str, Any]) -> dict[str, Any]:
        nxt = {key[len(NEXT):]: v for key, v in sample.items() if key.startswith(NEXT)}
        rest = {key: v for key, v in sample.items() if not key.startswith(NEXT)}
        out = mirror_sample(rest)
        out.update({NEXT + key: v for key, v in mirror_sample(nxt).items()})
        out["mirrored"] = True
        return out
