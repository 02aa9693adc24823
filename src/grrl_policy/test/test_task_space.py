"""Task-space actions: the 20-vector, forward kinematics and the IK decoder, on the default
robot read from its URDF (the mirror test, which needs grrl_trainer's joint mirror, and the
comparison with the simulator's robot are in grrl_trainer/test/test_policy_robot.py)."""
import numpy as np
import pytest

from grrl_policy.bench import working_posture
from grrl_policy.robot import default_robot
from grrl_policy.task_space import (TASK_DIM, JointSpaceCodec, TaskSpaceDecoder, action_codec,
                                    mirror_task, poses_from_task_vector, quat_to_matrix,
                                    rot6d_to_matrix, task_names, task_vector)


def random_rotations(n: int, rng) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def decoder() -> TaskSpaceDecoder:
    return TaskSpaceDecoder(step_period=0.1)


@pytest.fixture(scope="module")
def home(decoder) -> np.ndarray:
    """The home posture: tcps ahead at table height, fingers down."""
    return working_posture(decoder.robot)


def test_quaternions_and_6d_rotations_agree():
    rng = np.random.default_rng(0)
    q = random_rotations(50, rng)
    R = quat_to_matrix(q)
    assert np.allclose(R @ np.swapaxes(R, -1, -2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(R), 1.0)
    assert np.allclose(quat_to_matrix(-q), R)              # no sign ambiguity left
    r6 = np.concatenate([R[..., :, 0], R[..., :, 1]], -1)
    assert np.allclose(rot6d_to_matrix(r6), R, atol=1e-12)
    # a network's non-orthonormal output is projected to the nearest rotation
    noisy = rot6d_to_matrix(r6 + 0.01 * rng.normal(size=r6.shape))
    assert np.allclose(noisy @ np.swapaxes(noisy, -1, -2), np.eye(3), atol=1e-9)
    assert np.abs(noisy - R).max() < 0.05


def test_layout_names_and_pose_round_trip():
    rng = np.random.default_rng(1)
    tcp = np.concatenate([rng.normal(size=(2, 3)), random_rotations(2, rng)], 1)
    v = task_vector(tcp, np.array([0.01, 0.02]))
    assert v.shape == (TASK_DIM,) and len(task_names()) == TASK_DIM
    poses, grip = poses_from_task_vector(v)
    assert np.allclose(grip, [0.01, 0.02])
    for i, s in enumerate(default_robot().sides):
        assert np.allclose(poses[s][:3, 3], tcp[i, :3], atol=1e-6)
        assert np.allclose(poses[s][:3, :3], quat_to_matrix(tcp[i, 3:]), atol=1e-6)


def test_mirror_is_an_involution_that_swaps_the_arms():
    v = np.random.default_rng(2).normal(size=(4, TASK_DIM))
    m = mirror_task(v)
    assert np.allclose(mirror_task(m), v)
    assert np.allclose(m[:, [0, 2, 10, 12]], v[:, [10, 12, 0, 2]])      # x, z swapped sides
    assert np.allclose(m[:, [1, 11]], -v[:, [11, 1]])                   # y negated


def test_decoder_tracks_a_reachable_chunk_to_about_a_tenth_of_a_millimetre(decoder, home):
    rng = np.random.default_rng(3)
    # a smooth joint-space motion: its forward kinematics is a chunk the IK must reproduce
    target_q = home + rng.uniform(-0.25, 0.25, size=home.shape)
    s = np.linspace(0.0, 1.0, 16)[:, None]
    qs = home + s * (target_q - home)
    chunk = np.stack([decoder.proprio(q) for q in qs])
    decoder.reset(home)
    joints = decoder.joints(chunk, home)
    assert joints.shape == (16, 16)
    reached = np.stack([decoder.proprio(q) for q in joints])
    pos = [0, 1, 2, 10, 11, 12]
    err = np.abs(reached[:, pos] - chunk[:, pos]).max(1)
    assert np.median(err) < 2e-4 and err.max() < 1.5e-3 and err[-1] < 2e-4
    gi = decoder.robot.gripper_indices()
    assert np.allclose(joints[:, gi], qs[:, gi])          # grippers are passed through


def test_decoder_refuses_garbage(decoder, home):
    with pytest.raises(ValueError, match="non-finite"):
        decoder.joints(np.full((16, TASK_DIM), np.nan), home)
    with pytest.raises(ValueError, match="must be"):
        decoder.joints(np.zeros((16, 16)), home)


def test_codec_factory():
    assert isinstance(action_codec("joint"), JointSpaceCodec)
    with pytest.raises(ValueError, match="action_space"):
        action_codec("cartesian")
