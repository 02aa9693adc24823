"""Task-space actions: the 20-vector, its mirror image, forward kinematics and the IK decoder."""
import numpy as np
import pytest

from bytemini_driver import description as desc
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
    from bytemini_driver.sim import ShoeLacingSim
    sim = ShoeLacingSim()
    try:
        return sim.home_q.copy()
    finally:
        sim.close()


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
    for i, s in enumerate(desc.SIDES):
        assert np.allclose(poses[s][:3, 3], tcp[i, :3], atol=1e-6)
        assert np.allclose(poses[s][:3, :3], quat_to_matrix(tcp[i, 3:]), atol=1e-6)


def test_mirror_is_the_mirrored_robots_forward_kinematics(decoder, home):
    from grrl_trainer.mirror import mirror_joints
    rng = np.random.default_rng(2)
    for _ in range(5):
        q = home + rng.uniform(-0.3, 0.3, size=home.shape)
        v, vm = decoder.proprio(q), decoder.proprio(mirror_joints(q))
        assert np.abs(mirror_task(v) - vm).max() < 1e-5
        assert np.allclose(mirror_task(mirror_task(v)), v)


def test_decoder_tracks_a_reachable_chunk_to_about_a_tenth_of_a_millimetre(decoder, home):
    rng = np.random.default_rng(3)
    # a smooth joint-space motion: its forward kinematics is a chunk the IK must reproduce
    target_q = home + rng.uniform(-0.25, 0.25, size=home.shape)
    s = np.linspace(0.0, 1.0, 16)[:, None]
    qs = home + s * (target_q - home)
    grips = desc.actuated_joint_names()
    chunk = np.stack([decoder.proprio(q) for q in qs])
    decoder.reset(home)
    joints = decoder.joints(chunk, home)
    assert joints.shape == (16, 16)
    reached = np.stack([decoder.proprio(q) for q in joints])
    pos = [0, 1, 2, 10, 11, 12]
    err = np.abs(reached[:, pos] - chunk[:, pos]).max(1)
    assert np.median(err) < 2e-4 and err.max() < 1.5e-3 and err[-1] < 2e-4
    gi = [grips.index(desc.gripper_joint_name(sd)) for sd in desc.SIDES]
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
