"""What a simulator must give a state-observing policy (the ``tiny-state`` presets' "camera").

The policy package does not depend on any simulator: this module is the contract. A simulator
(ours is ``bytemini_driver``, whose ``sim_state`` module fills it) publishes its task state as
``grrl_interfaces/TaskState`` or computes the vector with :func:`state_vector`; the policy reads
the vector, (..., STATE_DIM) float32, laid out as 14 world-frame (= robot base frame) points or
directions of 3 values each:

    rows 0..10   11 points evenly spaced along the lace, both ends included (row 0 is the
                 lace's left end, the end at vertex 0)
    row  11      the instructed eyelet's centre
    row  12      the direction the instructed lace end is threaded through that eyelet (unit)
    row  13      the shoe's forward axis (cos yaw, sin yaw, 0)

Every row is a polar 3-vector in the world frame, so the mirror image of a state (paper section
3.2) is y → -y on every row with the lace rows in reverse order (:func:`mirror_state`).
A model takes the vector under the observation key :data:`grrl_policy.keys.STATE`.
"""
from __future__ import annotations

import math

import numpy as np

LACE_POINTS = 11
"""lace points in the state (evenly spaced along the lace's vertices, both ends included)"""
EXTRA_ROWS = ("eyelet_center", "threading_direction", "shoe_axis")
"""the rows after the lace points, in order"""
STATE_DIM = 3 * (LACE_POINTS + len(EXTRA_ROWS))
"""length of the state vector (42)"""
LACE = slice(0, 3 * LACE_POINTS)
EYELET_CENTER = slice(3 * LACE_POINTS, 3 * LACE_POINTS + 3)
THREADING_DIRECTION = slice(3 * LACE_POINTS + 3, 3 * LACE_POINTS + 6)
SHOE_AXIS = slice(3 * LACE_POINTS + 6, STATE_DIM)
MIRROR = np.array([1.0, -1.0, 1.0])
"""the world-frame mirror (y → -y) applied to every row"""


def lace_samples(lace: np.ndarray) -> np.ndarray:
    """(..., V, 3) lace vertices → (..., LACE_POINTS, 3) evenly spaced ones."""
    lace = np.asarray(lace)
    idx = np.round(np.linspace(0, lace.shape[-2] - 1, LACE_POINTS)).astype(int)
    return lace[..., idx, :]


def state_vector(lace: np.ndarray, eyelet_center: np.ndarray, threading_direction: np.ndarray,
                 shoe_yaw: float) -> np.ndarray:
    """lace: (..., V, 3) vertices; eyelet_center (3,), threading_direction (3,) and shoe_yaw
    (rad) per episode. Returns (..., STATE_DIM) float32."""
    pts = lace_samples(lace)
    lead = pts.shape[:-2]
    extra = np.stack([np.asarray(eyelet_center, float), np.asarray(threading_direction, float),
                      np.array([math.cos(shoe_yaw), math.sin(shoe_yaw), 0.0])])
    extra = np.broadcast_to(extra, lead + extra.shape)
    return np.concatenate([pts, extra], axis=-2).reshape(*lead, STATE_DIM).astype(np.float32)


def state_from_task_state(msg) -> np.ndarray:
    """The (STATE_DIM,) state vector of a ``grrl_interfaces/TaskState`` message (read by
    attribute, so a deserialised record works too); ValueError if it carries no usable lace."""
    if len(msg.lace) < 2:
        raise ValueError(f"the task state has {len(msg.lace)} lace points")
    c, d = msg.eyelet_center, msg.threading_direction
    return state_vector(np.array([[p.x, p.y, p.z] for p in msg.lace], float),
                        np.array([c.x, c.y, c.z]), np.array([d.x, d.y, d.z]),
                        float(getattr(msg, "shoe_yaw", 0.0)))


def mirror_state(state: np.ndarray) -> np.ndarray:
    """(..., STATE_DIM) → the state of the mirrored scene (an involution)."""
    s = np.asarray(state)
    triples = s.reshape(*s.shape[:-1], -1, 3) * MIRROR
    triples[..., :LACE_POINTS, :] = triples[..., LACE_POINTS - 1::-1, :]
    return triples.reshape(s.shape).astype(s.dtype)
