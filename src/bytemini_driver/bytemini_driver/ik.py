"""Task-space (wrist pose) control of both arms by differential IK with ``mink``.

Runs on a robot-only model compiled from the URDF (no scene, no lace), as recommended for
speed. Targets are tcp poses in base_link; the solver respects joint position and velocity
limits and keeps a light posture task so the redundant seventh joint stays near home.
"""
from __future__ import annotations

from dataclasses import dataclass

import mink
import mujoco
import numpy as np

from bytemini_driver import description as desc


@dataclass
class IKConfig:
    """Differential-IK settings."""

    position_cost: float = 1.0
    orientation_cost: float = 1.0
    posture_cost: float = 2e-3
    """pull towards the home posture (resolves the 7th DoF)"""
    damping: float = 1e-4
    solver: str = "daqp"
    velocity_scale: float = 1.0
    """fraction of the URDF velocity limits the IK may use"""


def pose_matrix(position: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = rotation
    T[:3, 3] = position
    return T


def yaw_down(yaw: float) -> np.ndarray:
    """Rotation of a tcp whose fingers point straight down, turned by ``yaw`` about z."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class DualArmIK:
    """IK for both tcps at once. Joint vectors use :func:`description.actuated_joint_names`."""

    def __init__(self, config: IKConfig | None = None):
        self.config = config or IKConfig()
        self.model = mujoco.MjSpec.from_file(str(desc.default_urdf_path())).compile()
        self.names = desc.actuated_joint_names()
        self.qadr = np.array([self.model.jnt_qposadr[mujoco.mj_name2id(
            self.model, mujoco.mjtObj.mjOBJ_JOINT, n)] for n in self.names])
        self.mimic_qadr = {side: self.model.jnt_qposadr[mujoco.mj_name2id(
            self.model, mujoco.mjtObj.mjOBJ_JOINT, f"{side}_gripper_finger_mimic_joint")]
            for side in desc.SIDES}
        self.configuration = mink.Configuration(self.model)
        c = self.config
        self.tasks = {side: mink.FrameTask(desc.tcp_frame(side), "body", c.position_cost,
                                           c.orientation_cost) for side in desc.SIDES}
        self.posture = mink.PostureTask(self.model, cost=c.posture_cost)
        velocities = {}
        for side in desc.SIDES:
            for i, name in enumerate(desc.arm_joint_names(side)):
                velocities[name] = desc.ARM_LIMITS[desc.ARM_JOINTS[i]][2] * c.velocity_scale
        self.limits = [mink.ConfigurationLimit(self.model),
                       mink.VelocityLimit(self.model, velocities)]
        self.home_q: np.ndarray | None = None

    def _full(self, q: np.ndarray) -> np.ndarray:
        full = self.model.qpos0.copy()
        full[self.qadr] = q
        for side in desc.SIDES:
            full[self.mimic_qadr[side]] = q[self.names.index(desc.gripper_joint_name(side))]
        return full

    def fk(self, q: np.ndarray, side: str) -> np.ndarray:
        """tcp pose (4x4, base_link) at joint vector ``q``."""
        self.configuration.update(self._full(q))
        return self.configuration.get_transform_frame_to_world(desc.tcp_frame(side), "body").as_matrix()

    def set_posture(self, q: np.ndarray) -> None:
        self.home_q = q.copy()
        self.posture.set_target(self._full(q))

    def solve(self, q: np.ndarray, targets: dict[str, np.ndarray], dt: float,
              iterations: int = 1) -> np.ndarray:
        """Joint vector moving the tcps towards ``targets`` (side -> 4x4 pose) within one
        control period ``dt`` (velocity-limited); arms without a target hold still."""
        self.configuration.update(self._full(q))
        if self.home_q is None:
            self.set_posture(q)
        tasks: list = [self.posture]
        for side, T in targets.items():
            task = self.tasks[side]
            task.set_target(mink.SE3.from_matrix(T))
            tasks.append(task)
        for side in desc.SIDES:
            if side not in targets:  # hold: target its current pose
                hold = self.tasks[side]
                hold.set_target(self.configuration.get_transform_frame_to_world(
                    desc.tcp_frame(side), "body"))
                tasks.append(hold)
        step = dt / iterations
        for _ in range(iterations):
            vel = mink.solve_ik(self.configuration, tasks, step, self.config.solver,
                                damping=self.config.damping, limits=self.limits)
            self.configuration.integrate_inplace(vel, step)
        out = self.configuration.q[self.qadr].copy()
        # grippers are not the IK's business
        for side in desc.SIDES:
            k = self.names.index(desc.gripper_joint_name(side))
            out[k] = q[k]
        return out

    def converge(self, q: np.ndarray, targets: dict[str, np.ndarray], steps: int = 200,
                 dt: float = 0.05, tol: float = 1e-4) -> np.ndarray:
        """Iterate :meth:`solve` until the tcps reach ``targets`` (for home poses and tests)."""
        for _ in range(steps):
            q = self.solve(q, targets, dt)
            err = max(np.linalg.norm(self.fk(q, s)[:3, 3] - T[:3, 3]) for s, T in targets.items())
            if err < tol:
                break
        return q
