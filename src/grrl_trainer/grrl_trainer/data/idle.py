"""Steps at which a demonstrator holds still: its hesitations.

A policy that sees only the present (state and proprioception, no history) cannot tell how long
it has been standing still. A demonstration that pauses for a second at a place contributes
ten samples "stay here" and one "go on" at nearly the same state, so the clone learns the place
as one to stay at, and stays for good: the episode times out. Which steps are such pauses is
read from the recorded actions alone (no flaw label): the arms' commands for the next
``window`` steps all stay within ``tolerance`` of where the robot is, and the grippers do not
change. A pause's last steps (where the next motion is already inside the window) are kept.
"""
from __future__ import annotations

import numpy as np

#: task-space layout (grrl_policy.task_space): per arm x y z, rotation (6), gripper
TASK_POSITIONS = np.r_[0:3, 10:13]
TASK_GRIPPERS = np.array([9, 19])
GRIPPER_TOLERANCE = 0.0005
"""m of finger opening that still counts as unchanged"""


def idle_steps(proprio: np.ndarray, actions: np.ndarray, window: int, tolerance: float,
               space: str = "task") -> np.ndarray:
    """(T,) bool: step t holds still for the next ``window`` recorded actions.

    proprio, actions: (T, D) of one episode in the model's action space ('task': the 20-vector,
    positions compared to ``tolerance`` m, grippers to :data:`GRIPPER_TOLERANCE`; 'joint':
    every joint to ``tolerance`` rad). Steps whose window runs past the episode's end compare
    what there is."""
    proprio = np.asarray(proprio, np.float64)
    actions = np.asarray(actions, np.float64)
    T = len(proprio)
    if window <= 0 or T == 0:
        return np.zeros(T, bool)
    if space == "task":
        pos, grip = TASK_POSITIONS, TASK_GRIPPERS
    elif space == "joint":
        pos, grip = np.arange(actions.shape[1]), np.zeros(0, int)
    else:
        raise ValueError(f"space must be 'task' or 'joint', got {space!r}")
    still = np.ones(T, bool)
    for i in range(window):
        a = actions[np.minimum(np.arange(T) + i, T - 1)]
        still &= np.abs(a[:, pos] - proprio[:, pos]).max(axis=1) <= tolerance
        if len(grip):
            still &= np.abs(a[:, grip] - proprio[:, grip]).max(axis=1) <= GRIPPER_TOLERANCE
    return still
