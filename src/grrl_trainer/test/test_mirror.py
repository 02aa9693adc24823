"""Mirror augmentation (paper section 3.2): involution, consistency with the URDF kinematics
and the simulator's cameras, and the decisive test: a mirrored demonstration replayed open
loop in the mirrored scene still succeeds."""
from __future__ import annotations

import mujoco
import numpy as np
import pytest

from bytemini_driver import description as desc
from bytemini_driver.expert import ScriptedExpert
from bytemini_driver.ik import DualArmIK
from bytemini_driver.sim import ShoeLacingSim
from grrl_trainer import keys
from grrl_trainer.data.mirror import (JOINT_SWAP, M, mirror_images, mirror_instruction,
                                 mirror_joints, mirror_pose_matrix, mirror_position_quat,
                                 mirror_rot6d, mirror_sample, mirror_tcp)

RNG = np.random.default_rng(0)


def quat_of(R: np.ndarray) -> np.ndarray:
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, R.flatten())
    return q


def mat_of(q: np.ndarray) -> np.ndarray:
    R = np.zeros(9)
    mujoco.mju_quat2Mat(R, q / np.linalg.norm(q))
    return R.reshape(3, 3)


def random_rotation() -> np.ndarray:
    return mat_of(RNG.normal(size=4))


def random_sample(t: int = 4) -> dict:
    quats = RNG.normal(size=(t, 2, 4))
    quats /= np.linalg.norm(quats, axis=-1, keepdims=True)
    tcp = np.concatenate([RNG.normal(size=(t, 2, 3)), quats], axis=-1)
    return {
        **{k: RNG.integers(0, 255, (t, 8, 10, 3), dtype=np.uint8) for k in keys.IMAGE_KEYS},
        keys.STATE_JOINTS: RNG.normal(size=(t, 16)), keys.ACTION_JOINTS: RNG.normal(size=(t, 16)),
        keys.STATE_TCP: tcp, keys.ACTION_TCP: tcp[::-1].copy(),
        keys.STATE_GRIPPER: RNG.random((t, 2)), keys.ACTION_GRIPPER: RNG.random((t, 2)),
        keys.INSTRUCTION: "thread the left lace end through the first eyelet on the right",
        "reward": np.arange(t, dtype=float),
    }


def test_mirror_twice_is_identity_on_every_field():
    s = random_sample()
    once, twice = mirror_sample(s), mirror_sample(mirror_sample(s))
    assert set(twice) == set(s)
    for k, v in s.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(twice[k], v, err_msg=k)
        else:
            assert twice[k] == v
        if k not in ("reward",):
            assert not (isinstance(v, np.ndarray) and np.array_equal(once[k], v)), k
    assert once[keys.INSTRUCTION] == \
        "thread the right lace end through the first eyelet on the left"
    np.testing.assert_array_equal(once["reward"], s["reward"])


def test_joint_swap_matches_the_urdf_names():
    names = desc.actuated_joint_names()
    assert [names[i] for i in JOINT_SWAP] == [desc._mirror_name(n) for n in names]


def test_quaternion_and_6d_maps_are_the_matrix_conjugation():
    for _ in range(20):
        R = random_rotation()
        p = RNG.normal(size=3)
        pq = mirror_position_quat(np.r_[p, quat_of(R)])
        np.testing.assert_allclose(pq[:3], M @ p)
        np.testing.assert_allclose(mat_of(pq[3:]), M @ R @ M, atol=1e-12)
        r6 = mirror_rot6d(np.r_[R[:, 0], R[:, 1]])
        np.testing.assert_allclose(r6, np.r_[(M @ R @ M)[:, 0], (M @ R @ M)[:, 1]], atol=1e-12)
        # a wrist-frame delta is mirrored by the same conjugation
        T0, T1 = np.eye(4), np.eye(4)
        T0[:3, :3], T1[:3, :3] = R, random_rotation()
        T0[:3, 3], T1[:3, 3] = p, RNG.normal(size=3)
        delta = np.linalg.inv(T0) @ T1
        mdelta = np.linalg.inv(mirror_pose_matrix(T0)) @ mirror_pose_matrix(T1)
        np.testing.assert_allclose(mdelta, mirror_pose_matrix(delta), atol=1e-12)


def test_mirrored_state_agrees_with_the_kinematics():
    ik = DualArmIK()
    for _ in range(10):
        q = RNG.uniform(-1.0, 1.0, 16) * 0.8
        q[[3, 11]] = -np.abs(q[[3, 11]])          # elbows within their range
        q[[7, 15]] = 0.02
        tcp = np.stack([np.r_[ik.fk(q, s)[:3, 3], quat_of(ik.fk(q, s)[:3, :3])]
                        for s in desc.SIDES])
        qm = mirror_joints(q)
        tcp_of_mirrored_q = np.stack([np.r_[ik.fk(qm, s)[:3, 3], quat_of(ik.fk(qm, s)[:3, :3])]
                                      for s in desc.SIDES])
        mirrored = mirror_tcp(tcp)
        np.testing.assert_allclose(tcp_of_mirrored_q[:, :3], mirrored[:, :3], atol=1e-9)
        for s in range(2):  # quaternions up to sign
            assert abs(abs(tcp_of_mirrored_q[s, 3:] @ mirrored[s, 3:]) - 1) < 1e-9


@pytest.fixture(scope="module")
def sim() -> ShoeLacingSim:
    s = ShoeLacingSim()
    yield s
    s.close()


def _pose_and_render(sim: ShoeLacingSim, mirrored: bool, q: np.ndarray) -> dict:
    sim.reset(4, mirrored=mirrored)
    sim.data.qpos[sim._qpos_ids()] = q
    for side, k in (("left", 7), ("right", 15)):
        j = mujoco.mj_name2id(sim.model, mujoco.mjtObj.mjOBJ_JOINT,
                              f"{side}_gripper_finger_mimic_joint")
        sim.data.qpos[sim.model.jnt_qposadr[j]] = q[k]
    mujoco.mj_forward(sim.model, sim.data)
    return {c: sim.render(c).astype(int) for c in desc.CAMERAS}


def test_flipped_swapped_images_match_the_mirrored_scene(sim: ShoeLacingSim):
    q = sim.home_q.copy()
    q[[0, 1, 3, 7]] += [-0.5, 0.4, 0.3, -0.03]   # an asymmetric posture
    original = _pose_and_render(sim, False, q)
    mirrored_scene = _pose_and_render(sim, True, mirror_joints(q))
    augmented = mirror_images(original)
    for cam in desc.CAMERAS:
        err = np.abs(augmented[cam] - mirrored_scene[cam]).mean()
        unflipped = np.abs(original[cam] - mirrored_scene[cam]).mean()
        assert err < 0.35 * unflipped, (cam, err, unflipped)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 2])
def test_mirrored_demonstration_replays_open_loop_in_the_mirrored_scene(sim, seed):
    p = sim.reset(seed)
    center, direction = sim.eyelet_world(p.eyelet_side, p.eyelet_index, p.end_side)
    expert = ScriptedExpert()
    expert.reset(p.end_side, center, direction, sim.joint_positions(),
                 sim.config.scene.lace_vertices, 0.02)
    actions = []
    while sim.data.time < 40.0:
        q = expert.act(sim.lace_points(), sim.joint_positions())
        actions.append(q)
        sim.set_joint_targets(q)
        sim.step(10)
        if sim.update_task().success:
            break
    assert sim.tracker.state.success
    mp = sim.reset(seed, mirrored=True)
    assert mirror_instruction(sim.instruction) == \
        f"thread the {p.end_side} lace end through the " \
        f"{['first', 'second'][p.eyelet_index]} eyelet on the {p.eyelet_side}"
    assert mp.end_side != p.end_side
    for q in mirror_joints(np.array(actions)):
        sim.set_joint_targets(q)
        sim.step(10)
        state = sim.update_task()
    assert state.success, state


def test_instruction_words():
    assert mirror_instruction("Left end, RIGHT eyelet, turn clockwise; leftover") == \
        "Right end, LEFT eyelet, turn counterclockwise; leftover"
