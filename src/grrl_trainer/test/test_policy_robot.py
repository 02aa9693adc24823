"""The policy's robot (read from the URDF by grrl_policy, without the simulator package) is the
simulator's ByteMini-v2 exactly, there is one IK, and the task-space mirror is the mirrored
robot's forward kinematics (grrl_trainer depends on both packages, so these live here)."""
import numpy as np
import pytest

from bytemini_driver import description as desc
from grrl_policy import kinematics
from grrl_policy.chunk_executor import joint_limits
from grrl_policy.robot import default_robot, default_urdf_path
from grrl_policy.task_space import TaskSpaceDecoder, mirror_task


def test_the_default_robot_is_the_simulators_bytemini_v2():
    robot = default_robot()
    assert list(robot.actuated_joint_names) == desc.actuated_joint_names()
    assert robot.sides == desc.SIDES
    for side in desc.SIDES:
        assert list(robot.arm_joints[side]) == desc.arm_joint_names(side)
        assert robot.gripper_joint(side) == desc.gripper_joint_name(side)
        assert robot.tcp_frame(side) == desc.tcp_frame(side)
        assert robot.mimics[f"{side}_gripper_finger_mimic_joint"] == (desc.gripper_joint_name(side), 1.0, 0.0)
    for ours, theirs in zip(robot.joint_limits(), desc.actuated_joint_limits()):
        np.testing.assert_array_equal(ours, theirs)
    # the IK's velocity limits (formerly desc.ARM_LIMITS) are the URDF's
    arm = [robot.actuated_joint_names.index(n) for s in desc.SIDES for n in desc.arm_joint_names(s)]
    np.testing.assert_array_equal(robot.velocity[arm],
                                  [desc.ARM_LIMITS[j][2] for _ in desc.SIDES for j in desc.ARM_JOINTS])
    np.testing.assert_array_equal(joint_limits(0.8).velocity, 0.8 * desc.actuated_joint_limits()[2])
    # the same file (each package installs a copy into its share), as generated
    assert default_urdf_path().read_text() == desc.default_urdf_path().read_text() == desc.build_urdf()


def test_there_is_one_ik_for_the_expert_and_the_policy():
    from bytemini_driver import ik
    assert ik.DualArmIK is kinematics.DualArmIK and ik.IKConfig is kinematics.IKConfig
    assert ik.pose_matrix is kinematics.pose_matrix and ik.yaw_down is kinematics.yaw_down


@pytest.fixture(scope="module")
def home() -> np.ndarray:
    from bytemini_driver.sim import ShoeLacingSim
    sim = ShoeLacingSim()
    try:
        return sim.home_q.copy()
    finally:
        sim.close()


def test_mirror_is_the_mirrored_robots_forward_kinematics(home):
    from grrl_trainer.data.mirror import mirror_joints
    decoder = TaskSpaceDecoder(step_period=0.1)
    rng = np.random.default_rng(2)
    for _ in range(5):
        q = home + rng.uniform(-0.3, 0.3, size=home.shape)
        v, vm = decoder.proprio(q), decoder.proprio(mirror_joints(q))
        assert np.abs(mirror_task(v) - vm).max() < 1e-5
        assert np.allclose(mirror_task(mirror_task(v)), v)
