"""A dataset's non-image steps in memory as flat arrays, for vectorised batches (state models).

Every step of the chosen episodes is one row: the simulator-state observation, the model's
proprioception and the recorded action, in the model's action space (``task``: the 20-vector of
:mod:`grrl_policy.task_space`; ``joint``: joint positions). A chunk a_{t:t+k} is gathered by
index arithmetic (:meth:`EpisodeArrays.chunks`), padded past the episode's end with its last
action as the per-sample loader does (:mod:`grrl_trainer.data.windows`), so a batch costs a few
numpy gathers instead of k HDF5 reads per sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bytemini_driver.sim_state import eyelet_from_scene, state_vector
from grrl_trainer import keys
from grrl_trainer.data.dataset import EpisodeDataset
from grrl_trainer.data.windows import episode_task_arrays


def episode_states(dataset: EpisodeDataset, ep: int) -> np.ndarray:
    """(T, state_dim) float32 simulator-state observations of episode ``ep`` (it must have the
    lace recorded)."""
    meta = dataset.episodes[ep]
    if not meta["has_lace"]:
        raise ValueError(f"episode {ep} has no lace: state observations need it")
    scene = eyelet_from_scene(meta["scene"])
    return np.stack([state_vector(p, *scene) for p in dataset.load(ep, "observation/lace")]
                    ).astype(np.float32)


@dataclass
class EpisodeArrays:
    """Rows = steps of the episodes, concatenated in episode order."""

    state: np.ndarray
    """(N, state_dim) float32 simulator-state observation"""
    proprio: np.ndarray
    """(N, P) float32 the model's proprioception"""
    actions: np.ndarray
    """(N, D) float32 the recorded action of each step"""
    episode: np.ndarray
    """(N,) int64 dataset episode index of each row"""
    timestep: np.ndarray
    """(N,) int64 step within its episode"""
    start: np.ndarray
    """(E,) int64 first row of each loaded episode"""
    length: np.ndarray
    """(E,) int64 steps of each loaded episode"""
    episodes: list[int]
    """dataset indices of the loaded episodes"""
    instructions: list[str]
    """(E,) instruction of each loaded episode"""
    success: np.ndarray
    """(E,) bool"""
    seeds: list[int]
    """(E,) scene seed of each loaded episode"""

    @classmethod
    def load(cls, dataset: EpisodeDataset, space: str = "task",
             episodes: list[int] | None = None) -> "EpisodeArrays":
        """The steps of ``episodes`` (default: all) of ``dataset`` (which must have the lace)."""
        chosen = list(range(len(dataset.episodes))) if episodes is None else list(episodes)
        if not chosen:
            raise ValueError("no episodes to load")
        states, props, acts, lens = [], [], [], []
        for ep in chosen:
            states.append(episode_states(dataset, ep))
            if space == "task":
                p, a = episode_task_arrays(dataset, ep)
            elif space == "joint":
                p, a = dataset.load(ep, keys.STATE_JOINTS), dataset.load(ep, keys.ACTION_JOINTS)
            else:
                raise ValueError(f"space must be 'task' or 'joint', got {space!r}")
            props.append(np.asarray(p, np.float32))
            acts.append(np.asarray(a, np.float32))
            lens.append(len(p))
        length = np.asarray(lens, np.int64)
        start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
        return cls(np.concatenate(states), np.concatenate(props), np.concatenate(acts),
                   np.repeat(np.asarray(chosen, np.int64), length),
                   np.concatenate([np.arange(n) for n in length]).astype(np.int64), start, length,
                   chosen, [dataset.episodes[e]["instruction"] for e in chosen],
                   np.array([bool(dataset.episodes[e]["success"]) for e in chosen]),
                   [int(dataset.episodes[e]["seed"]) for e in chosen])

    def __len__(self) -> int:
        return len(self.state)

    def local(self, rows: np.ndarray) -> np.ndarray:
        """(B,) position of each row's episode in the loaded episodes."""
        return np.searchsorted(self.start, rows, side="right") - 1

    def chunks(self, rows: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows (B,) → action chunks (B, k, D) a_{t:t+k} within each row's episode, padded with
        the episode's last action, and the mask (B, k) of real steps."""
        rows = np.asarray(rows, np.int64)
        e = self.local(rows)
        end = self.start[e] + self.length[e]                       # one past the last row
        idx = rows[:, None] + np.arange(horizon)[None, :]
        mask = idx < end[:, None]
        return self.actions[np.minimum(idx, end[:, None] - 1)], mask
