"""The topic-bridge backend drives a ros2_control-style robot through its own topics."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from builtin_interfaces.msg import Duration
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from bytemini_driver.description import actuated_joint_names
from bytemini_driver.driver_node import COMMAND_QOS
from grrl_tools.testing import wait_until

pytestmark = pytest.mark.ros
FAKE = Path(__file__).resolve().parent.parent / "nodes" / "fake_ros2_control_robot.py"
NAMES = actuated_joint_names()


def test_bridge_maps_states_images_and_commands(processes, start_node, ros_node):
    processes.start([sys.executable, str(FAKE)])
    hw = "[" + ",".join(f"'hw_{n}'" for n in NAMES) + "]"
    start_node("bytemini_driver", "driver_node", backend="topic_bridge", autostart=True,
               **{"bridge.joint_names": hw,
                  "bridge.trajectory_topic": "/arm_controller/joint_trajectory",
                  "bridge.camera_topics": "['/cam/head/image_raw','/cam/left/image_raw',"
                                          "'/cam/right/image_raw/compressed']"})
    states = ros_node.collect(JointState, "/bytemini/joint_states")
    images = {c: ros_node.collect(Image, f"/bytemini/camera/{c}/image_raw",
                                  qos_profile_sensor_data)
              for c in ("head", "left_wrist", "right_wrist")}
    wait_until(lambda: len(states) > 5, 30, "bridged joint states")
    assert list(states[-1].name) == NAMES and states[-1].position[3] == pytest.approx(-1.0)
    wait_until(lambda: all(images.values()), 30, "bridged images (raw and compressed)")
    assert images["right_wrist"][-1].width == 64
    pub = ros_node.node.create_publisher(JointTrajectory, "/bytemini/command/joint_trajectory",
                                         COMMAND_QOS)
    ros_node.wait_for_matched(pub)
    target = np.array(states[-1].position)
    target[0] = -0.4
    pub.publish(JointTrajectory(joint_names=NAMES, points=[JointTrajectoryPoint(
        positions=target.tolist(), time_from_start=Duration(sec=1))]))
    wait_until(lambda: abs(states[-1].position[0] + 0.4) < 0.01, 20, "the robot to move")
