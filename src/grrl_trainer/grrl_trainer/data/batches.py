"""From loader samples (:mod:`grrl_trainer.data.windows`) to the model's batched inputs, and the
dataset statistics the model normalises with. Shared by critic training, BC and evaluation.

A batch is a dict:
  obs, next_obs:   {"instruction": list[str], "images": (B, 3, H, W, 3) uint8 | "state": (B, S)}
  proprio, next_proprio: (B, P) joint positions (16) or task-space proprioception (20)
  actions: (B, k, D) joint targets (16) or task-space targets (20), mask: (B, k) bool,
  next_actions (optional, same shape)
  reward (B,), done (B,) bool, offset (B,) long: the number of chunk steps to the next obs
  episode, timestep, length (B,) long; success, hindsight (B,) bool
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from grrl_trainer import keys
from grrl_trainer.data.dataset import EpisodeDataset
from grrl_trainer.data.windows import NEXT

OBSERVATIONS = ("images", "state")


def _obs(samples: list[dict[str, Any]], prefix: str, observation: str) -> dict[str, Any]:
    out: dict[str, Any] = {"instruction": [s[keys.INSTRUCTION] for s in samples]}
    if observation == "images":
        out["images"] = torch.from_numpy(np.stack([
            np.stack([s[prefix + k] for k in keys.IMAGE_KEYS]) for s in samples]))
    elif observation == "state":
        out["state"] = torch.from_numpy(np.stack([s[prefix + keys.STATE_SIM] for s in samples])).float()
    else:
        raise ValueError(f"observation must be one of {OBSERVATIONS}, got {observation!r}")
    return out


SPACE_KEYS = {"joint": (keys.STATE_JOINTS, keys.ACTION_JOINTS),
              "task": (keys.STATE_TASK, keys.ACTION_TASK)}
"""action space of the model → (proprioception key, action key) of the samples"""


def space_keys(space: str) -> tuple[str, str]:
    if space not in SPACE_KEYS:
        raise ValueError(f"action space must be one of {sorted(SPACE_KEYS)}, got {space!r}")
    return SPACE_KEYS[space]


def collate(samples: list[dict[str, Any]], observation: str = "images",
            space: str = "joint") -> dict[str, Any]:
    """Stack loader samples into model inputs (see the module docstring); ``space`` is the
    model's action space ('task' samples come from windows with ``task_space=True``)."""
    proprio_key, action_key = space_keys(space)
    f = lambda key, dtype=torch.float32: torch.as_tensor(np.stack([s[key] for s in samples]), dtype=dtype)  # noqa: E731
    batch: dict[str, Any] = {
        "obs": _obs(samples, "", observation),
        "next_obs": _obs(samples, NEXT, observation),
        "proprio": f(proprio_key), "next_proprio": f(NEXT + proprio_key),
        "actions": f(action_key), "mask": f("action_mask", torch.bool),
        "reward": f("reward"), "done": f("done", torch.bool),
        "offset": torch.as_tensor([int(s.get("offset", len(s["action_mask"]))) for s in samples]),
    }
    if NEXT + action_key in samples[0]:
        batch["next_actions"] = f(NEXT + action_key)
    for key in ("episode", "timestep", "length"):
        batch[key] = torch.as_tensor([int(s[key]) for s in samples])
    for key in ("success", "hindsight"):
        batch[key] = torch.as_tensor([bool(s[key]) for s in samples])
    return batch


def normalization_stats(dataset: EpisodeDataset, max_episodes: int | None = None,
                        action_mode: str = "absolute", horizon: int = 16,
                        space: str = "joint") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-dimension mean and std of the actions and joint positions over the dataset's steps
    (mirror-symmetric: the statistics of the data and of its mirror image are pooled, so that
    the same normaliser serves mirrored samples). ``action_mode='delta'``: statistics of the
    targets of whole chunks relative to the joint positions they start from, a_{t+i} - q_t for
    i < ``horizon`` (see ModelConfig.action_mode). ``space='task'``: of the task-space vectors
    (grrl_policy.task_space)."""
    from grrl_policy.task_space import mirror_task
    from grrl_trainer.data.mirror import mirror_joints
    from grrl_trainer.data.windows import episode_task_arrays
    space_keys(space)
    mirror = mirror_task if space == "task" else mirror_joints
    acts, props = [], []
    n = len(dataset.episodes) if max_episodes is None else min(max_episodes, len(dataset.episodes))
    for ep in range(n):
        if space == "task":
            q, a = episode_task_arrays(dataset, ep)
        else:
            q, a = dataset.load(ep, keys.STATE_JOINTS), dataset.load(ep, keys.ACTION_JOINTS)
        if action_mode == "delta":
            acts += [a[i:] - q[:len(q) - i] for i in range(min(horizon, len(q)))]
        else:
            acts.append(a)
        props.append(q)
    if not acts:
        raise ValueError("the dataset has no episodes to compute statistics from")
    out = {}
    for name, rows in (("action", np.concatenate(acts)), ("proprio", np.concatenate(props))):
        both = np.concatenate([rows, mirror(rows)])
        out[name] = (both.mean(0).astype(np.float32), both.std(0).astype(np.float32))
    return out


def apply_stats(model, stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Copy dataset statistics into a GR-RL model's normaliser."""
    for name, (mean, std) in stats.items():
        model.normalizer.set(name, torch.from_numpy(mean), torch.from_numpy(std))
