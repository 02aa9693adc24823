"""Task-space (wrist pose) actions and proprioception, and their conversion to joint targets.

The paper's policy acts in wrist poses (its mirror augmentation converts "proprioception states
and actions ... via mirror symmetry in the world frame"). A ``action_space='task'`` model
works on the 20-vector

    per arm (left, then right): tcp position xyz (m, base_link), tcp rotation as its first two
    columns (6, continuous, no sign ambiguity unlike quaternions), gripper opening (m)

for both its proprioception (the measured tcp poses, by forward kinematics of the joint state)
and its action chunks (the commanded tcp poses). The robot takes joint trajectories, so a
chunk is turned into joint targets by differential IK (:class:`TaskSpaceDecoder`), step by step
from the measured joints, before the joint-space trajectory optimizer and the driver: the rest
of the command path (limits, jerk-limited splicing, validation, hold on error) is the same for
both action spaces.

Everything robot-specific (the side names, the joint order, the tcp frames, the IK's model and
limits) comes from a :class:`~grrl_policy.robot.RobotDescription`; every ``robot=None``
argument means the default robot (ByteMini-v2).
"""
from __future__ import annotations

import numpy as np

from .robot import RobotDescription, resolve

ARM_DIM = 10
TASK_DIM = 2 * ARM_DIM
GRIP = 9
"""index of the gripper within an arm's 10 values"""


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) unit quaternions wxyz → (..., 3, 3) rotation matrices."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def rot6d_to_matrix(r: np.ndarray) -> np.ndarray:
    """(..., 6) first two columns (c1, c2), not necessarily orthonormal (a network's output)
    → (..., 3, 3) the nearest rotation by Gram-Schmidt."""
    r = np.asarray(r, dtype=np.float64)
    a, b = r[..., :3], r[..., 3:6]
    c1 = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-9)
    b = b - (c1 * b).sum(-1, keepdims=True) * c1
    c2 = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-9)
    return np.stack([c1, c2, np.cross(c1, c2)], -1)


def task_vector(tcp: np.ndarray, gripper: np.ndarray) -> np.ndarray:
    """tcp (..., 2, 7) position + quaternion wxyz per side, gripper (..., 2) → (..., 20)."""
    tcp, gripper = np.asarray(tcp, np.float64), np.asarray(gripper, np.float64)
    R = quat_to_matrix(tcp[..., 3:7])                                  # (..., 2, 3, 3)
    r6 = np.concatenate([R[..., :, 0], R[..., :, 1]], -1)              # (..., 2, 6)
    arms = np.concatenate([tcp[..., :3], r6, gripper[..., None]], -1)  # (..., 2, 10)
    return arms.reshape(*arms.shape[:-2], TASK_DIM).astype(np.float32)


def _sides(robot: RobotDescription | None) -> tuple[str, ...]:
    sides = resolve(robot).sides
    if len(sides) != 2:
        raise ValueError(f"the task-space vector describes two arms; the robot has {sides}")
    return sides


def task_vector_from_poses(poses: dict[str, np.ndarray], gripper: np.ndarray,
                           robot: RobotDescription | None = None) -> np.ndarray:
    """side → 4x4 tcp pose and gripper (2,) (in ``robot.sides`` order) → (20,)."""
    arms = [np.r_[poses[s][:3, 3], poses[s][:3, 0], poses[s][:3, 1], gripper[i]]
            for i, s in enumerate(_sides(robot))]
    return np.concatenate(arms).astype(np.float32)


def poses_from_task_vector(v: np.ndarray, robot: RobotDescription | None = None
                           ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(20,) → side → 4x4 tcp pose (rotation orthonormalised), gripper (2,)."""
    v = np.asarray(v, np.float64).reshape(2, ARM_DIM)
    poses = {}
    for i, s in enumerate(_sides(robot)):
        T = np.eye(4)
        T[:3, :3] = rot6d_to_matrix(v[i, 3:9])
        T[:3, 3] = v[i, :3]
        poses[s] = T
    return poses, v[:, GRIP].copy()


def mirror_task(v: np.ndarray) -> np.ndarray:
    """(..., 20) task vector of the mirrored robot: each pose mirrored in the world frame
    (y → -y, R → M R M, i.e. columns (M c1, -M c2)) and the arms swapped."""
    v = np.array(v, copy=True)
    arms = v.reshape(*v.shape[:-1], 2, ARM_DIM)[..., ::-1, :].copy()
    arms[..., [1, 4, 6, 8]] *= -1.0       # y, c1.y, c2.x, c2.z
    return arms.reshape(v.shape)


def task_names(robot: RobotDescription | None = None) -> list[str]:
    """Dimension names of the 20-vector (for ActionChunk messages and logs)."""
    fields = ("x", "y", "z", "r11", "r21", "r31", "r12", "r22", "r32", "gripper")
    return [f"{s}_{f}" for s in _sides(robot) for f in fields]


class TaskSpaceDecoder:
    """Forward kinematics for proprioception, differential IK for action chunks.

    The IK is the scripted expert's (dual-arm ``mink``, joint position and velocity limits, a
    light posture task towards the configuration the episode started in, which resolves the
    seventh joint as the demonstrations did). Call :meth:`reset` at the start of an episode.
    Joint vectors are (n,) in ``robot.actuated_joint_names`` order (16 for ByteMini-v2)."""

    def __init__(self, step_period: float = 0.1, iterations: int = 3,
                 robot: RobotDescription | None = None):
        from .kinematics import DualArmIK      # mink/MuJoCo: only where it is used
        self.robot = resolve(robot)
        self.sides = _sides(self.robot)
        self.ik = DualArmIK(robot=self.robot)
        self.step_period = float(step_period)
        self.iterations = int(iterations)
        self.names = list(self.robot.actuated_joint_names)
        self.grippers = self.robot.gripper_indices()
        self._posture_set = False

    def reset(self, q: np.ndarray | None = None) -> None:
        """New episode: the posture target becomes ``q`` (or the next joints seen)."""
        self._posture_set = False
        if q is not None:
            self._set_posture(q)

    def _set_posture(self, q: np.ndarray) -> None:
        self.ik.set_posture(np.asarray(q, np.float64))
        self._posture_set = True

    def proprio(self, q: np.ndarray) -> np.ndarray:
        """Joint positions (n,) → task vector (20,) of the tcps they put the arms at."""
        q = np.asarray(q, np.float64)
        poses = {s: self.ik.fk(q, s) for s in self.sides}
        return task_vector_from_poses(poses, q[self.grippers], self.robot)

    def joints(self, chunk: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Task-space chunk (k, 20) → joint targets (k, n), each step solved from the last
        (the first from the measured joints ``q``) within one step period of joint velocity."""
        chunk = np.asarray(chunk, np.float64)
        if chunk.ndim != 2 or chunk.shape[1] != TASK_DIM:
            raise ValueError(f"task-space chunk must be (k, {TASK_DIM}), got {chunk.shape}")
        if not np.isfinite(chunk).all():
            raise ValueError("task-space chunk has non-finite values")
        q = np.asarray(q, np.float64).copy()
        if not self._posture_set:
            self._set_posture(q)
        out = np.empty((len(chunk), len(self.names)))
        for i, v in enumerate(chunk):
            poses, grip = poses_from_task_vector(v, self.robot)
            q = self.ik.solve(q, poses, self.step_period, self.iterations)
            q[self.grippers] = grip
            out[i] = q
        return out


class JointSpaceCodec:
    """The identity for ``action_space='joint'`` models (same interface as the decoder)."""

    def reset(self, q: np.ndarray | None = None) -> None:
        pass

    def proprio(self, q: np.ndarray) -> np.ndarray:
        return np.asarray(q, np.float32)

    def joints(self, chunk: np.ndarray, q: np.ndarray) -> np.ndarray:
        return np.asarray(chunk)


def check_executable(action_space: str, action_dim: int, proprio_dim: int, who: str,
                     robot: RobotDescription | None = None) -> None:
    """ValueError unless the model's chunks can become the robot's n joint targets (16 for
    ByteMini-v2): n joint targets from n joint positions, or 20 task-space values through IK."""
    n = len(resolve(robot).actuated_joint_names)
    expected = {"joint": n, "task": TASK_DIM}.get(action_space)
    if expected is None or action_dim != expected or proprio_dim != expected:
        raise ValueError(f"{who} executes {n} joint targets from {n} joint positions, or 20 "
                         f"task-space values through IK; the model has action_space="
                         f"{action_space}, action_dim={action_dim}, proprio_dim={proprio_dim}")


def action_codec(action_space: str, step_period: float = 0.1,
                 robot: RobotDescription | None = None) -> TaskSpaceDecoder | JointSpaceCodec:
    """What turns joint states into the model's proprioception and its chunks into joint
    targets, for a model's ``action_space``, on ``robot`` (default: ByteMini-v2)."""
    if action_space == "task":
        return TaskSpaceDecoder(step_period, robot=robot)
    if action_space == "joint":
        return JointSpaceCodec()
    raise ValueError(f"action_space must be 'joint' or 'task', got {action_space!r}")
