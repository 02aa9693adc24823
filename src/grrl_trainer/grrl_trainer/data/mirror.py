"""Morphological symmetry augmentation (paper section 3.2).

A sample is mirrored about the robot's sagittal plane (y = 0 of base_link):

* images are flipped horizontally and the left and right wrist images swapped (the URDF's
  mirrored optical frames make this exact, see ``bytemini_driver.description``);
* proprioception and actions are mirrored in the world frame and re-expressed in the local
  wrist frames with left and right swapped: a pose T becomes M T M with M = diag(1, -1, 1)
  (positions y -> -y; quaternion wxyz -> (w, -x, y, -z)), which also maps wrist-frame deltas
  T_t^-1 T_t+1 to their mirrors; joint vectors swap the left and right values (the URDF is
  built so that FK(swap(q)) = M FK(q) M);
* the instruction swaps left/right words and the phrases they imply.

Every map here is an involution: mirroring twice gives back the sample exactly. The functions
work on numpy arrays with any leading dims, on the fly in the loader or offline.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from bytemini_driver.sim_state import mirror_state
from grrl_policy.task_space import mirror_task
from grrl_trainer import keys

M = np.diag([1.0, -1.0, 1.0])

#: joint index permutation that swaps the left and right arms and grippers (16 joints)
JOINT_SWAP = np.r_[8:16, 0:8]

_WORDS = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost",
          "clockwise": "counterclockwise", "counterclockwise": "clockwise",
          "anticlockwise": "clockwise", "lefthand": "righthand", "righthand": "lefthand"}
_WORD_RE = re.compile(r"\b(" + "|".join(sorted(_WORDS, key=len, reverse=True)) + r")\b",
                      re.IGNORECASE)


def mirror_instruction(text: str) -> str:
    """Swap left/right (and clockwise/counterclockwise) words, keeping capitalisation."""
    def swap(m: re.Match) -> str:
        word = m.group(0)
        out = _WORDS[word.lower()]
        if word.isupper():
            return out.upper()
        return out.capitalize() if word[0].isupper() else out
    return _WORD_RE.sub(swap, text)


def mirror_joints(q: np.ndarray) -> np.ndarray:
    """(..., 16) joint vector of the mirrored robot."""
    return np.asarray(q)[..., JOINT_SWAP]


def mirror_pose_matrix(T: np.ndarray) -> np.ndarray:
    """(..., 4, 4) pose mirrored in the world frame: M T M (side swapping is the caller's)."""
    M4 = np.diag([1.0, -1.0, 1.0, 1.0])
    return M4 @ np.asarray(T) @ M4


def mirror_position_quat(pq: np.ndarray) -> np.ndarray:
    """(..., 7) position + quaternion wxyz mirrored in the world frame."""
    out = np.array(pq, dtype=float, copy=True)
    out[..., 1] *= -1.0                       # y
    out[..., 4] *= -1.0                       # quaternion x
    out[..., 6] *= -1.0                       # quaternion z
    return out


def mirror_rot6d(r: np.ndarray) -> np.ndarray:
    """(..., 6) rotation as its first two columns (c1, c2): M R M -> (M c1, -M c2)."""
    out = np.array(r, dtype=float, copy=True)
    out[..., 1] *= -1.0                        # M c1
    out[..., 3] *= -1.0                        # -M c2 = (-x, y, -z)
    out[..., 5] *= -1.0
    return out


def mirror_tcp(poses: np.ndarray) -> np.ndarray:
    """(..., 2, 7) per-side tcp poses: mirror each and swap the sides."""
    return mirror_position_quat(np.asarray(poses)[..., ::-1, :])


def mirror_sides(values: np.ndarray) -> np.ndarray:
    """(..., 2) per-side scalars (gripper openings): swap the sides."""
    return np.asarray(values)[..., ::-1]


def mirror_images(images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """camera -> (..., H, W, 3): flip every image horizontally, swap the wrist cameras."""
    swap = {"head": "head", "left_wrist": "right_wrist", "right_wrist": "left_wrist"}
    return {swap[cam]: np.ascontiguousarray(img[..., :, ::-1, :])
            for cam, img in images.items()}


_FIELD_MAPS = {
    keys.STATE_JOINTS: mirror_joints, keys.ACTION_JOINTS: mirror_joints,
    keys.STATE_TCP: mirror_tcp, keys.ACTION_TCP: mirror_tcp,
    keys.STATE_GRIPPER: mirror_sides, keys.ACTION_GRIPPER: mirror_sides,
    keys.STATE_SIM: mirror_state,
    keys.STATE_TASK: mirror_task, keys.ACTION_TASK: mirror_task,
}


def mirror_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Mirror every known field of a sample (see :mod:`grrl_trainer.keys`); other fields
    (rewards, done flags, indices) are copied unchanged."""
    out: dict[str, Any] = {}
    images = {}
    for key, value in sample.items():
        if key in keys.IMAGE_KEYS:
            images[key.rsplit(".", 1)[1]] = value
        elif key in _FIELD_MAPS:
            out[key] = _FIELD_MAPS[key](value)
        elif key == keys.INSTRUCTION:
            out[key] = mirror_instruction(value) if isinstance(value, str) else \
                [mirror_instruction(v) for v in value]
        else:
            out[key] = value
    for cam, img in mirror_images(images).items():
        out[keys.IMAGE.format(camera=cam)] = img
    return out
