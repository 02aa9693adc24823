"""The robot description from a URDF: the default robot's joints and limits, another robot with
other names through a RobotConfig (joint order, mimics, meshes MuJoCo cannot load), the IK
decode on it, and URDFs that lack what the policy needs refused."""
import numpy as np
import pytest

from grrl_policy.chunk_executor import joint_limits
from grrl_policy.robot import RobotConfig, default_robot, default_urdf_path, load_robot
from grrl_policy.task_space import TASK_DIM, TaskSpaceDecoder, check_executable, task_names

ARM = [("j1", "0 0 1", "0 0 0"), ("j2", "0 1 0", "0 0 -0.05"), ("j3", "0 1 0", "0 0 -0.30"),
       ("j4", "0 0 1", "0 0 -0.15"), ("j5", "0 1 0", "0 0 -0.15"), ("j6", "0 0 1", "0 0 -0.05")]


def _inertial(mass: float = 0.5) -> str:
    return (f'<inertial><origin xyz="0 0 0"/><mass value="{mass}"/>'
            '<inertia ixx="1e-3" ixy="0" ixz="0" iyy="1e-3" iyz="0" izz="1e-3"/></inertial>')


def two_arm_urdf() -> str:
    """A 2 x 6-DoF robot named unlike ByteMini-v2: arms 'port'/'starboard', tcp '<side>_tool0',
    gripper '<side>_hand_joint' with a second finger coupled without a <mimic> tag, the last
    joint continuous, one moving link with neither inertial nor geometry, mesh visuals."""
    parts = ['<?xml version="1.0"?>', '<robot name="other">',
             f'<link name="chassis">{_inertial(20.0)}</link>']
    for side, y in (("port", 0.25), ("starboard", -0.25)):
        parts += [f'<link name="{side}_mount"/>',
                  f'<joint name="{side}_mount_joint" type="fixed"><parent link="chassis"/>'
                  f'<child link="{side}_mount"/><origin xyz="0.1 {y} 1.0" rpy="0 0 0"/></joint>']
        parent = f"{side}_mount"
        for i, (j, axis, xyz) in enumerate(ARM):
            link = f"{side}_{j}_link"
            body = "" if j == "j5" else _inertial()
            parts.append(f'<link name="{link}">{body}<visual><geometry><mesh filename='
                         f'"package://other_description/meshes/{j}.stl"/></geometry></visual></link>')
            kind = "continuous" if j == "j6" else "revolute"
            parts.append(f'<joint name="{side}_{j}" type="{kind}"><parent link="{parent}"/>'
                         f'<child link="{link}"/><origin xyz="{xyz}" rpy="0 0 0"/>'
                         f'<axis xyz="{axis}"/><limit lower="-2.5" upper="2.5" velocity="{1.5 + i / 10}"'
                         ' effort="10"/></joint>')
            parent = link
        for finger, axis in (("hand", "0 1 0"), ("finger2", "0 -1 0")):
            parts += [f'<link name="{side}_{finger}_link">{_inertial(0.05)}</link>',
                      f'<joint name="{side}_{finger}_joint" type="prismatic"><parent link="{parent}"/>'
                      f'<child link="{side}_{finger}_link"/><origin xyz="0 0 -0.05"/>'
                      f'<axis xyz="{axis}"/><limit lower="0" upper="0.03" velocity="0.2" effort="5"/>'
                      '</joint>']
        parts += [f'<link name="{side}_tool0"/>',
                  f'<joint name="{side}_tool0_joint" type="fixed"><parent link="{parent}"/>'
                  f'<child link="{side}_tool0"/><origin xyz="0 0 -0.12"/></joint>']
    parts.append("</robot>")
    return "\n".join(parts)


OTHER = RobotConfig(sides=("port", "starboard"), tcp_frame="{side}_tool0",
                    gripper_joint="{side}_hand_joint",
                    extra_mimics=(("port_finger2_joint", "port_hand_joint", 1.0, 0.0),
                                  ("starboard_finger2_joint", "starboard_hand_joint", 1.0, 0.0)))


def test_the_default_robot_is_bytemini_v2_with_its_joint_order_and_limits():
    robot = default_robot()
    names = robot.actuated_joint_names
    assert len(names) == 16 and robot.sides == ("left", "right")
    assert names[7] == "left_gripper_finger_joint" and names[15] == "right_gripper_finger_joint"
    assert names[:7] == robot.arm_joints["left"] and names[0] == "left_shoulder_pitch_joint"
    assert names[8:15] == tuple(n.replace("left_", "right_") for n in names[:7])
    assert robot.gripper_indices() == [7, 15] and robot.tcp_frame("right") == "right_tcp"
    assert robot.mimics["left_gripper_finger_mimic_joint"] == ("left_gripper_finger_joint", 1.0, 0.0)
    lo, hi, vel = robot.joint_limits()
    assert lo.shape == hi.shape == vel.shape == (16,) and np.all(lo < hi) and np.all(vel > 0)
    lo[0] = 99.0                                            # a copy: the description is unchanged
    assert robot.lower[0] != 99.0 and not robot.lower.flags.writeable
    np.testing.assert_array_equal(joint_limits(1.0).upper, robot.upper)


def test_a_robot_description_string_reads_like_its_file():
    robot = default_robot()
    from_text = load_robot(default_urdf_path().read_text())
    assert from_text.path is None and robot.path is not None
    assert from_text.actuated_joint_names == robot.actuated_joint_names
    for a, b in zip(from_text.joint_limits(), robot.joint_limits()):
        np.testing.assert_array_equal(a, b)


def test_another_robot_is_read_through_its_config():
    robot = load_robot(two_arm_urdf(), OTHER)
    assert robot.name == "other" and robot.root_link == "chassis"
    assert robot.actuated_joint_names == tuple(
        [f"port_{j}" for j, _, _ in ARM] + ["port_hand_joint"]
        + [f"starboard_{j}" for j, _, _ in ARM] + ["starboard_hand_joint"])
    assert robot.gripper_indices() == [6, 13]
    assert robot.velocity[1] == pytest.approx(1.6) and robot.velocity[6] == pytest.approx(0.2)
    assert robot.lower[5] == -np.inf and robot.upper[5] == np.inf      # continuous joint
    assert robot.mimics["port_finger2_joint"] == ("port_hand_joint", 1.0, 0.0)
    assert task_names(robot)[0] == "port_x" and len(task_names(robot)) == TASK_DIM
    check_executable("joint", 14, 14, "test", robot)
    with pytest.raises(ValueError, match="14 joint targets"):
        check_executable("joint", 16, 16, "test", robot)


def test_the_ik_decode_runs_on_another_robot():
    robot = load_robot(two_arm_urdf(), OTHER)
    dec = TaskSpaceDecoder(0.1, robot=robot)
    home = np.array([0.0, 0.4, -0.9, 0.0, 0.6, 0.0, 0.02] * 2)
    # a smooth joint-space motion: its forward kinematics is a chunk the IK must reproduce
    qs = home + np.linspace(0.0, 1.0, 16)[:, None] * np.r_[0.1, 0.1, -0.15, 0.1, 0.1, 0.1, 0.0,
                                                           -0.1, 0.1, 0.1, -0.1, 0.1, -0.1, 0.0]
    chunk = np.stack([dec.proprio(q) for q in qs])
    dec.reset(home)
    joints = dec.joints(chunk, home)
    assert joints.shape == (16, 14)
    reached = np.stack([dec.proprio(q) for q in joints])
    pos = [0, 1, 2, 10, 11, 12]
    assert np.abs(reached[-1, pos] - chunk[-1, pos]).max() < 1e-3
    # the uncoupled finger follows the gripper command through the configured mimic
    full = dec.ik._full(joints[-1])
    assert full[dec.ik._qadr("port_finger2_joint")] == joints[-1, 6]


def test_urdfs_that_lack_what_the_policy_needs_are_refused(tmp_path):
    text = two_arm_urdf()
    with pytest.raises(ValueError, match="no tcp link 'port_tcp'"):
        load_robot(text, RobotConfig(sides=("port", "starboard"), gripper_joint="{side}_hand_joint"))
    with pytest.raises(ValueError, match="no movable gripper joint"):
        load_robot(text, RobotConfig(sides=("port", "starboard"), tcp_frame="{side}_tool0"))
    with pytest.raises(ValueError, match="not below"):
        load_robot(text, RobotConfig(sides=("port", "starboard"), tcp_frame="{side}_tool0",
                                     gripper_joint="{side}_hand_joint", arm_root_link="port_mount"))
    with pytest.raises(ValueError, match="<robot>"):
        load_robot("<sdf/>")
    with pytest.raises(FileNotFoundError, match="robot_description"):
        load_robot(tmp_path / "missing.urdf")
    with pytest.raises(ValueError, match="side"):
        RobotConfig(tcp_frame="tcp")
    with pytest.raises(ValueError, match="distinct"):
        RobotConfig(sides=("left", "left"))
