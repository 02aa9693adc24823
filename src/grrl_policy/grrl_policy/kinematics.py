"""Task-space (tcp pose) control of all arms at once by differential IK with ``mink``.

The one IK of the project: the scripted expert's demonstrations (``bytemini_driver.ik``
re-exports it) and the policy's task-space decode (:mod:`grrl_policy.task_space`) run this
solver, so a chunk is turned into joints the way the demonstrations were.

Runs on a robot-only MuJoCo model compiled from the URDF of a
:class:`~grrl_policy.robot.RobotDescription` (no scene), as recommended for speed. Targets are
tcp poses in the URDF's root frame; the solver respects the joint position limits of the model
and the URDF's velocity limits of the arm joints, and keeps a light posture task so a redundant
joint stays near the posture the episode started in. Joint vectors are in the description's
:attr:`~grrl_policy.robot.RobotDescription.actuated_joint_names` order.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import mink
import mujoco
import numpy as np

from .robot import RobotDescription, resolve


@dataclass
class IKConfig:
    """Differential-IK settings."""

    position_cost: float = 1.0
    """weight of the tcp position error"""
    orientation_cost: float = 1.0
    """weight of the tcp orientation error"""
    posture_cost: float = 2e-3
    """pull towards the home posture (resolves the 7th DoF)"""
    damping: float = 1e-4
    """Levenberg-Marquardt damping of the QP"""
    solver: str = "daqp"
    """QP solver (a ``qpsolvers`` name)"""
    velocity_scale: float = 1.0
    """fraction of the URDF velocity limits the IK may use"""


def pose_matrix(position: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """position (3,), rotation (3, 3) → homogeneous transform (4, 4)."""
    T = np.eye(4)
    T[:3, :3] = rotation
    T[:3, 3] = position
    return T


def yaw_down(yaw: float) -> np.ndarray:
    """Rotation (3, 3) of a tcp whose fingers point straight down, turned by ``yaw`` about z."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def compile_model(robot: RobotDescription) -> mujoco.MjModel:
    """The robot-only MuJoCo model of ``robot``'s URDF, for kinematics.

    The IK needs frames and joints only, so what an integrator's URDF often has and MuJoCo
    cannot load is dropped: visual elements and mesh collision geometry (``package://`` URIs).
    Fixed links stay bodies (the tcp usually is one). A moving link left with neither inertial
    nor geometry gets a tiny mass: MuJoCo refuses massless moving bodies, kinematics does not
    use masses (other links are left as they are, so the numbers do not change)."""
    root = ET.fromstring(robot.urdf)
    moving = {j.child for j in robot.joints.values() if j.kind != "fixed"}
    for link in root.findall("link"):
        for el in list(link):
            if el.tag == "visual" or (el.tag == "collision" and el.find("geometry/mesh") is not None):
                link.remove(el)
        if link.get("name") in moving and link.find("inertial") is None and link.find("collision") is None:
            inertial = ET.SubElement(link, "inertial")
            ET.SubElement(inertial, "mass", value="1e-3")
            ET.SubElement(inertial, "inertia", ixx="1e-6", ixy="0", ixz="0", iyy="1e-6", iyz="0",
                          izz="1e-6")
    spec = mujoco.MjSpec.from_string(ET.tostring(root, encoding="unicode"))
    spec.compiler.fusestatic = False
    return spec.compile()


class DualArmIK:
    """IK for every arm's tcp at once (two for ByteMini-v2). Joint vectors (n,) are in
    ``robot.actuated_joint_names`` order; poses are (4, 4) in the URDF's root frame."""

    def __init__(self, config: IKConfig | None = None, robot: RobotDescription | None = None):
        self.config = config or IKConfig()
        self.robot = resolve(robot)
        self.model = compile_model(self.robot)
        self.names = list(self.robot.actuated_joint_names)
        self.qadr = np.array([self._qadr(n) for n in self.names])
        # followers (mimic joints) copy their leader's commanded value, so a coupled finger
        # is where the gripper command puts it
        self.mimics = [(self._qadr(f), self.names.index(leader), mult, offset)
                       for f, (leader, mult, offset) in self.robot.mimics.items()
                       if leader in self.names]
        self.grippers = self.robot.gripper_indices()
        self.configuration = mink.Configuration(self.model)
        c = self.config
        sides = self.robot.sides
        self.tasks = {side: mink.FrameTask(self.robot.tcp_frame(side), "body", c.position_cost,
                                           c.orientation_cost) for side in sides}
        self.posture = mink.PostureTask(self.model, cost=c.posture_cost)
        # only the arms are velocity-limited here: the IK never moves a gripper (see solve); a
        # joint whose URDF states no velocity limit (inf) is left unlimited
        velocities = {name: float(self.robot.velocity[self.names.index(name)]) * c.velocity_scale
                      for side in sides for name in self.robot.arm_joints[side]
                      if np.isfinite(self.robot.velocity[self.names.index(name)])}
        self.limits = [mink.ConfigurationLimit(self.model),
                       mink.VelocityLimit(self.model, velocities)]
        self.home_q: np.ndarray | None = None

    def _qadr(self, joint: str) -> int:
        jid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, joint)
        if jid < 0:
            raise ValueError(f"joint {joint!r} is not in the MuJoCo model of {self.robot.name!r}")
        return int(self.model.jnt_qposadr[jid])

    def _full(self, q: np.ndarray) -> np.ndarray:
        """Joint vector (n,) → the model's qpos (nq,), mimic joints following their leaders."""
        full = self.model.qpos0.copy()
        full[self.qadr] = q
        for adr, leader, mult, offset in self.mimics:
            full[adr] = mult * q[leader] + offset
        return full

    def fk(self, q: np.ndarray, side: str) -> np.ndarray:
        """tcp pose (4, 4) of ``side`` at joint vector ``q`` (n,)."""
        self.configuration.update(self._full(q))
        return self.configuration.get_transform_frame_to_world(
            self.robot.tcp_frame(side), "body").as_matrix()

    def set_posture(self, q: np.ndarray) -> None:
        """The posture (n,) the redundant joints are pulled towards."""
        self.home_q = q.copy()
        self.posture.set_target(self._full(q))

    def solve(self, q: np.ndarray, targets: dict[str, np.ndarray], dt: float,
              iterations: int = 1) -> np.ndarray:
        """Joint vector (n,) moving the tcps from ``q`` (n,) towards ``targets`` (side → (4, 4)
        pose) within one control period ``dt`` (velocity-limited); arms without a target
        hold still, grippers keep their value in ``q``."""
        self.configuration.update(self._full(q))
        if self.home_q is None:
            self.set_posture(q)
        tasks: list = [self.posture]
        for side, T in targets.items():
            task = self.tasks[side]
            task.set_target(mink.SE3.from_matrix(T))
            tasks.append(task)
        for side in self.robot.sides:
            if side not in targets:  # hold: target its current pose
                hold = self.tasks[side]
                hold.set_target(self.configuration.get_transform_frame_to_world(
                    self.robot.tcp_frame(side), "body"))
                tasks.append(hold)
        step = dt / iterations
        for _ in range(iterations):
            vel = mink.solve_ik(self.configuration, tasks, step, self.config.solver,
                                damping=self.config.damping, limits=self.limits)
            self.configuration.integrate_inplace(vel, step)
        out = self.configuration.q[self.qadr].copy()
        out[self.grippers] = q[self.grippers]    # grippers are not the IK's business
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
