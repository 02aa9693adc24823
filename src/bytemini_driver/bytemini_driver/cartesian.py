"""Task-space (wrist pose) servoing: tcp pose targets -> joint targets, one control period at
a time, through the velocity-limited dual-arm IK."""
from __future__ import annotations

import numpy as np

from bytemini_driver.ik import DualArmIK


class PoseError(ValueError):
    """A tcp target that must not be tracked; the message says why."""


def check_pose(T: np.ndarray, workspace_radius: float = 1.5) -> None:
    """Refuse non-finite, non-rigid or absurdly far targets."""
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise PoseError("non-finite tcp target")
    R = T[:3, :3]
    if not np.allclose(R.T @ R, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0:
        raise PoseError("tcp target orientation is not a rotation (bad quaternion?)")
    if np.linalg.norm(T[:3, 3]) > workspace_radius:
        raise PoseError(f"tcp target {np.round(T[:3, 3], 3).tolist()} is out of reach")


class CartesianServo:
    """Moves the tcps towards their latest targets; arms without a target hold."""

    def __init__(self, ik: DualArmIK | None = None):
        self.ik = ik or DualArmIK()
        self.targets: dict[str, np.ndarray] = {}

    @property
    def active(self) -> bool:
        return bool(self.targets)

    def set_target(self, side: str, T: np.ndarray) -> None:
        check_pose(T)
        self.targets[side] = np.asarray(T, float).copy()

    def clear(self) -> None:
        self.targets.clear()

    def step(self, q: np.ndarray, dt: float) -> np.ndarray:
        """Joint targets one period ``dt`` later (grippers unchanged)."""
        goals = dict(self.targets)
        for side in ("left", "right"):
            goals.setdefault(side, self.ik.fk(q, side))
        return self.ik.solve(q, goals, dt, iterations=2)
