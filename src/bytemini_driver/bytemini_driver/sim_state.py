"""The low-dimensional simulator-state observation (the ``tiny-state`` model's "camera").

The layout is the policy's contract, :mod:`grrl_policy.sim_state_spec` (11 lace points, the
target eyelet's centre, the threading direction and the shoe's forward axis, all world-frame
3-vectors; see there). This module is the simulator's side of it: the same vector from the
dataset's per-episode scene parameters (:func:`eyelet_from_scene`) as from the live
simulator's ``TaskState``, so training, evaluation and the policy node see the same numbers.
The spec's functions are re-exported under their old names for this package's callers.
"""
from __future__ import annotations

import numpy as np

from grrl_policy.sim_state_spec import (LACE_POINTS, MIRROR, STATE_DIM, lace_samples,
                                        mirror_state, state_from_task_state, state_vector)

from .scene import SceneConfig, eyelet_local, shoe_frame, threading_direction_local

__all__ = ["LACE_POINTS", "MIRROR", "STATE_DIM", "eyelet_from_scene", "lace_samples",
           "mirror_state", "state_from_task_state", "state_vector"]

# The simulator fills every row of the spec: its lace has at least LACE_POINTS vertices and it
# knows the eyelet, the threading direction and the shoe's yaw of every episode.
assert SceneConfig().lace_vertices >= LACE_POINTS, "the lace is too coarse for the state spec"


def eyelet_from_scene(scene: dict, config: SceneConfig | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """(eyelet centre, threading direction, shoe yaw) in the world frame from a dataset's
    per-episode scene parameters (``SceneParams.as_dict``): the spec's rows 11-13."""
    config = config or SceneConfig()
    yaw = float(scene["shoe_yaw"])
    T = shoe_frame((float(scene["shoe_x"]), float(scene["shoe_y"])), yaw)
    c, _ = eyelet_local(config, scene["eyelet_side"], int(scene["eyelet_index"]))
    d = threading_direction_local(scene["end_side"])
    return T[:3, :3] @ c + T[:3, 3], T[:3, :3] @ d, yaw
