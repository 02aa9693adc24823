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
                        space: str = "joint", per_step: bool = False,
                        state: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mean and std of the actions, the proprioception and (``state``) the simulator state
    over the dataset's steps (mirror-symmetric: the statistics of the data and of its mirror
    image are pooled, so that the same normaliser serves mirrored samples). ``action_mode=
    'delta'``: of chunk targets relative to the pose they start from, a_{t+i} - q_t for
    i < ``horizon`` (see ModelConfig.action_mode); ``per_step``: one mean/std per chunk step i,
    (horizon, D), instead of one over all steps, (D,). ``space='task'``: of the task-space
    vectors (grrl_policy.task_space)."""
    from grrl_policy.sim_state_spec import mirror_state
    from grrl_policy.task_space import mirror_task
    from grrl_trainer.data.arrays import episode_states
    from grrl_trainer.data.mirror import mirror_joints
    from grrl_trainer.data.windows import episode_task_arrays
    space_keys(space)
    mirror = mirror_task if space == "task" else mirror_joints
    acts: list[list[np.ndarray]] = [[] for _ in range(horizon)]
    props, states = [], []
    n = len(dataset.episodes) if max_episodes is None else min(max_episodes, len(dataset.episodes))
    for ep in range(n):
        if space == "task":
            q, a = episode_task_arrays(dataset, ep)
        else:
            q, a = dataset.load(ep, keys.STATE_JOINTS), dataset.load(ep, keys.ACTION_JOINTS)
        for i in range(min(horizon, len(q))):
            acts[i].append(a[i:] - q[:len(q) - i] if action_mode == "delta" else a[i:])
        props.append(q)
        if state:
            states.append(episode_states(dataset, ep))
    if not props:
        raise ValueError("the dataset has no episodes to compute statistics from")

    def stats(rows: np.ndarray, flip) -> tuple[np.ndarray, np.ndarray]:
        both = np.concatenate([rows, flip(rows)])
        return both.mean(0).astype(np.float32), both.std(0).astype(np.float32)

    per = [stats(np.concatenate(a), mirror) for a in acts if a]
    out = {"proprio": stats(np.concatenate(props), mirror)}
    if per_step:       # steps no episode is long enough for keep the last step's statistics
        per += [per[-1]] * (horizon - len(per))
        out["action"] = (np.stack([m for m, _ in per]), np.stack([s for _, s in per]))
    elif action_mode == "delta":
        out["action"] = stats(np.concatenate([x for a in acts for x in a]), mirror)
    else:                                            # every recorded action once
        out["action"] = stats(np.concatenate(acts[0]), mirror)
    if state:
        out["state"] = stats(np.concatenate(states), mirror_state)
    return out


def model_stats(dataset: EpisodeDataset, model_cfg) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """:func:`normalization_stats` of what a model of ``model_cfg`` (a ModelConfig) normalises."""
    return normalization_stats(dataset, action_mode=model_cfg.action_mode, horizon=model_cfg.horizon,
                               space=model_cfg.action_space,
                               per_step=model_cfg.action_norm == "per_step",
                               state=model_cfg.state_norm)


def apply_stats(model, stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Copy dataset statistics into a GR-RL model's normaliser."""
    for name, (mean, std) in stats.items():
        model.normalizer.set(name, torch.from_numpy(mean), torch.from_numpy(std))
