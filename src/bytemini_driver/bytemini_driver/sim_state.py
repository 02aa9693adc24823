"""The low-dimensional simulator-state observation (the ``tiny-state`` model's "camera").

A vector of world-frame (= base_link) 3-vectors, so that the mirror map is y -> -y on every
triple (and the lace points in reverse order: vertex 0 is always the left end):

    11 lace points (evenly spaced along the 41 vertices, both ends included),
    the target eyelet's centre, the direction the instructed end is threaded through it,
    and the shoe's forward axis (its yaw).

Built from ground truth the simulator has at every step (``TaskState`` on the ROS side, the
dataset's per-step lace and per-episode scene parameters offline), so training, evaluation and
the policy node see the same numbers.
"""
from __future__ import annotations

import math

import numpy as np

from .scene import SceneConfig, eyelet_local, shoe_frame, threading_direction_local

LACE_POINTS = 11
STATE_DIM = 3 * (LACE_POINTS + 3)
MIRROR = np.array([1.0, -1.0, 1.0])


def lace_samples(lace: np.ndarray) -> np.ndarray:
    """(..., V, 3) lace vertices → (..., LACE_POINTS, 3) evenly spaced ones."""
    lace = np.asarray(lace)
    idx = np.round(np.linspace(0, lace.shape[-2] - 1, LACE_POINTS)).astype(int)
    return lace[..., idx, :]


def state_vector(lace: np.ndarray, eyelet_center: np.ndarray, threading_direction: np.ndarray,
                 shoe_yaw: float) -> np.ndarray:
    """lace: (..., V, 3); the rest per episode. Returns (..., STATE_DIM) float32."""
    pts = lace_samples(lace)
    lead = pts.shape[:-2]
    extra = np.stack([np.asarray(eyelet_center, float), np.asarray(threading_direction, float),
                      np.array([math.cos(shoe_yaw), math.sin(shoe_yaw), 0.0])])
    extra = np.broadcast_to(extra, lead + extra.shape)
    return np.concatenate([pts, extra], axis=-2).reshape(*lead, STATE_DIM).astype(np.float32)


def state_from_task_state(msg) -> np.ndarray:
    """The state vector of a ``grrl_interfaces/TaskState`` message (read by attribute, so a
    deserialised record works too); ValueError if it carries no usable lace."""
    if len(msg.lace) < 2:
        raise ValueError(f"the task state has {len(msg.lace)} lace points")
    c, d = msg.eyelet_center, msg.threading_direction
    return state_vector(np.array([[p.x, p.y, p.z] for p in msg.lace], float),
                        np.array([c.x, c.y, c.z]), np.array([d.x, d.y, d.z]),
                        float(getattr(msg, "shoe_yaw", 0.0)))


def mirror_state(state: np.ndarray) -> np.ndarray:
    """The state of the mirrored scene (an involution)."""
    s = np.asarray(state)
    triples = s.reshape(*s.shape[:-1], -1, 3) * MIRROR
    triples[..., :LACE_POINTS, :] = triples[..., LACE_POINTS - 1::-1, :]
    return triples.reshape(s.shape).astype(s.dtype)


def eyelet_from_scene(scene: dict, config: SceneConfig | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(eyelet centre, threading direction, shoe yaw) in the world frame from a dataset's
    per-episode scene parameters (``SceneParams.as_dict``)."""
    config = config or SceneConfig()
    yaw = float(scene["shoe_yaw"])
    T = shoe_frame((float(scene["shoe_x"]), float(scene["shoe_y"])), yaw)
    c, _ = eyelet_local(config, scene["eyelet_side"], int(scene["eyelet_index"]))
    d = threading_direction_local(scene["end_side"])
    return T[:3, :3] @ c + T[:3, 3], T[:3, :3] @ d, yaw
