"""Task-space (wrist pose) control of both arms: the project's one differential IK.

The solver lives in :mod:`grrl_policy.kinematics` (the policy decodes its task-space chunks
with it, so the scripted expert's demonstrations and the policy's actions go through the same
IK); this module keeps the names the driver, the expert and the simulator use. With no
``robot`` argument :class:`DualArmIK` runs on ByteMini-v2 (``grrl_policy.robot.default_robot``:
the same ``urdf/bytemini_v2.urdf`` as :func:`bytemini_driver.description.default_urdf_path`),
joint vectors in :func:`bytemini_driver.description.actuated_joint_names` order.
"""
from __future__ import annotations

from grrl_policy.kinematics import DualArmIK, IKConfig, pose_matrix, yaw_down

__all__ = ["DualArmIK", "IKConfig", "pose_matrix", "yaw_down"]
