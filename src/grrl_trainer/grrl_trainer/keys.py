"""Names and layouts of the fields of a sample, shared by the dataset, the loader, the mirror
augmentation and the models (batch keys are constants, never string literals elsewhere).

Layouts (leading dims ``...`` are time, chunk or batch):
  images:        (..., H, W, 3) uint8, one key per camera
  joint vectors: (..., 16) in :func:`bytemini_driver.description.actuated_joint_names` order
                 (left arm 7, left gripper, right arm 7, right gripper)
  tcp poses:     (..., 2, 7) per side (left, right): position xyz (m, base_link) and
                 orientation quaternion wxyz
  grippers:      (..., 2) finger opening (m), left then right
"""
from __future__ import annotations

CAMERAS = ("head", "left_wrist", "right_wrist")

IMAGE = "observation.images.{camera}"
IMAGE_KEYS = tuple(IMAGE.format(camera=c) for c in CAMERAS)
STATE_JOINTS = "observation.joint_positions"
STATE_TCP = "observation.tcp_pose"
STATE_GRIPPER = "observation.gripper"
STATE_SIM = "observation.state"
"""(..., bytemini_driver.sim_state.STATE_DIM) simulator-state observation (tiny-state model)"""
STATE_TASK = "observation.task"
"""(..., 20) task-space proprioception (grrl_policy.task_space): FK of the joint positions"""
ACTION_TCP = "action.tcp_pose"
ACTION_GRIPPER = "action.gripper"
ACTION_JOINTS = "action.joint_positions"
ACTION_TASK = "action.task"
"""(..., 20) task-space action (grrl_policy.task_space): commanded tcp poses and grippers"""
INSTRUCTION = "instruction"
