"""Training windows for TD learning with action chunks and for behaviour cloning.

A sample at step t of a trajectory of length T is

    observation s_t, action chunk a_{t:t+k} (padded past T with the last action, ``action_mask``
    marks the real ones), reward r, done, and the next observation s_{min(t+j, T-1)}

with the sparse reward of eq. (1): r = gamma^(T-t) for the chunk that reaches the end of a
successful trajectory (t + j >= T), else 0. j is k (``next_offset='chunk'``), or drawn
uniformly in 1..k per sample (``'random'``): then the sample is the transition of the chunk
prefix a_{t:t+j}, which is what trains every output of the Q-chunking critic (its output
j-1 is the value of a_{t:t+j}). Trajectories are the recorded episodes (successful or failed) and,
with ``hindsight``, the hindsight failed trajectories tau_{0:m_i} cut at every retry keyframe
m_i (reward 0, terminal at m_i), as in the paper's section 3.1. Mirror augmentation
(section 3.2) is applied on the fly with probability ``mirror_prob``.

An optional ``keep`` mask (episode index -> bool per timestep, e.g. from the critic-based data
filter) restricts the samples to the kept steps of the recorded trajectories; hindsight
trajectories are then left out. Random draws (mirroring, offsets) depend on a sample's index in
the unfiltered numbering, so a filter changes which samples are seen, not how they are drawn.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import numpy as np

from bytemini_driver.sim_state import eyelet_from_scene, state_vector
from grrl_trainer.episodes.episode import sparse_reward
from grrl_trainer import keys
from grrl_trainer.data.dataset import EpisodeDataset
from grrl_trainer.data.mirror import mirror_sample

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
    gamma: float = 0.99
    """discount of eq. (1)'s reward gamma^(T-t)"""
    next_offset: str = "chunk"
    """'chunk': next observation k steps ahead; 'random': j ~ U{1..k} steps ahead"""
    state: bool = False
    """add the simulator-state observation (needs the dataset's lace)"""
    next_actions: bool = False
    """add the dataset's next chunk a_{t+j:t+j+k} (SARSA-style critic targets)"""
    preload: bool = True
    """keep every non-image array in memory after its first read (a few MB per 100 episodes)"""
    task_space: bool = False
    """add task-space proprioception and actions (grrl_policy.task_space) for 'task' models"""

    def __post_init__(self) -> None:
        if self.next_offset not in ("chunk", "random"):
            raise ValueError(f"next_offset must be 'chunk' or 'random', got {self.next_offset!r}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
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


_DECODER = None


def episode_task_arrays(dataset: EpisodeDataset, ep: int) -> tuple[np.ndarray, np.ndarray]:
    """Task-space proprioception (T, 20), by forward kinematics of the recorded joint positions
    (what the policy computes from a joint state at run time), and actions (T, 20) from the
    commanded tcp poses and grippers."""
    global _DECODER
    from grrl_policy.task_space import TaskSpaceDecoder, task_vector
    if _DECODER is None:
        _DECODER = TaskSpaceDecoder()
    q = dataset.load(ep, keys.STATE_JOINTS)
    proprio = np.stack([_DECODER.proprio(x) for x in q]).astype(np.float32)
    actions = task_vector(dataset.load(ep, keys.ACTION_TCP), dataset.load(ep, keys.ACTION_GRIPPER))
    return proprio, actions


class TransitionWindows:
    """Random-access windows over all trajectories of an :class:`EpisodeDataset`."""

    def __init__(self, dataset: EpisodeDataset, config: WindowConfig | None = None,
                 keep: dict[int, np.ndarray] | None = None):
        """``keep``: dataset episode index -> bool array (n_steps,); when given, only the steps
        (episode, t) of recorded (non-hindsight) trajectories with keep True are samples, and an
        episode missing from ``keep`` contributes none."""
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
        self.kept: np.ndarray | None = None if keep is None else self._kept_indices(keep)
        """indices (unfiltered numbering) of the kept samples, in order; None = all"""
        self.epoch = 0
        if self.config.images and any(not m["cameras"] for m in dataset.episodes):
            raise ValueError("images requested but some episodes have none; use images=False")
        if self.config.state and any(not m["has_lace"] for m in dataset.episodes):
            raise ValueError("state observations need the simulator's lace, which some episodes lack")
        self._scene_cache: dict[int, tuple] = {}
        self._memory: dict[tuple[int, str], np.ndarray] = {}

    def _kept_indices(self, keep: dict[int, np.ndarray]) -> np.ndarray:
        n_eps = len(self.data.episodes)
        unknown = sorted(int(e) for e in keep if not 0 <= int(e) < n_eps)
        if unknown:
            raise ValueError(f"keep names episodes {unknown[:5]} outside the dataset's 0..{n_eps - 1}")
        parts = []
        for s, seg in enumerate(self.segments):
            mask = keep.get(seg.episode)
            if seg.hindsight or mask is None:
                continue
            mask = np.asarray(mask)
            if mask.dtype != np.bool_ or mask.shape != (seg.length,):
                raise ValueError(f"keep[{seg.episode}] must be a bool array of shape ({seg.length},) "
                                 f"(the episode's steps), got {mask.dtype} {mask.shape}")
            parts.append(self.starts[s] + np.flatnonzero(mask))
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1]) if self.kept is None else len(self.kept)

    def set_epoch(self, epoch: int) -> None:
        """New mirror draws for a new epoch."""
        self.epoch = epoch

    def unfiltered_index(self, i: int) -> int:
        """Sample i's index in the numbering of all samples (itself when nothing is filtered)."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        return int(i) if self.kept is None else int(self.kept[i])

    def locate(self, i: int) -> tuple[Segment, int]:
        """(trajectory, timestep) of sample i."""
        return self._locate(self.unfiltered_index(i))

    def _locate(self, g: int) -> tuple[Segment, int]:
        s = bisect.bisect_right(self.starts, g) - 1
        return self.segments[s], int(g - self.starts[s])

    def _load(self, ep: int, key: str, index: Any) -> np.ndarray:
        if not self.config.preload:
            return self.data.load(ep, key, index)
        arr = self._memory.get((ep, key))
        if arr is None:
            arr = self._memory[(ep, key)] = self.data.load(ep, key)
        return arr[index]

    def _task(self, ep: int, key: str, index: Any) -> np.ndarray:
        arr = self._memory.get((ep, key))
        if arr is None:
            proprio, actions = episode_task_arrays(self.data, ep)
            self._memory[(ep, keys.STATE_TASK)], self._memory[(ep, keys.ACTION_TASK)] = proprio, actions
            arr = self._memory[(ep, key)]
        return arr[index]

    def _obs(self, ep: int, t: int) -> dict[str, Any]:
        out = {k: self._load(ep, k, t) for k in STATE_KEYS}
        if self.config.task_space:
            out[keys.STATE_TASK] = self._task(ep, keys.STATE_TASK, t)
        if self.config.images:
            for k in keys.IMAGE_KEYS:
                out[k] = self.data.load(ep, k, t)
        if self.config.state:
            if ep not in self._scene_cache:
                self._scene_cache[ep] = eyelet_from_scene(self.data.episodes[ep]["scene"])
            out[keys.STATE_SIM] = state_vector(self._load(ep, "observation/lace", t),
                                               *self._scene_cache[ep])
        return out

    def _action_keys(self) -> tuple[str, ...]:
        return ACTION_KEYS + ((keys.ACTION_TASK,) if self.config.task_space else ())

    def _chunk(self, ep: int, key: str, t: int, T: int) -> np.ndarray:
        k = self.config.horizon
        load = self._task if key == keys.ACTION_TASK else self._load
        chunk = load(ep, key, slice(t, min(t + k, T)))
        if len(chunk) < k:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], k - len(chunk), axis=0)])
        return chunk

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = self.unfiltered_index(i)          # random draws below use the unfiltered index
        seg, t = self._locate(i)
        cfg = self.config
        k, T, ep = cfg.horizon, seg.length, seg.episode
        sample: dict[str, Any] = self._obs(ep, t)
        for key in self._action_keys():
            sample[key] = self._chunk(ep, key, t, T)
        sample["action_mask"] = np.arange(t, t + k) < T
        j = k if cfg.next_offset == "chunk" else \
            int(np.random.default_rng([cfg.seed, self.epoch, i, 1]).integers(1, k + 1))
        done = t + j >= T
        sample["reward"] = np.float32(sparse_reward(seg.success, T - t, done, cfg.gamma))
        sample["done"], sample["offset"] = done, j
        t_next = min(t + j, T - 1)
        for key, value in self._obs(ep, t_next).items():
            sample[NEXT + key] = value
        if cfg.next_actions:
            for key in self._action_keys():
                sample[NEXT + key] = self._chunk(ep, key, t_next, T)
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
