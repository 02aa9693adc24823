#!/usr/bin/env python3
"""A stand-in for a ros2_control robot: /joint_states (its own joint names, plus an extra
joint), three /cam/* cameras (one compressed), and a JointTrajectoryController topic whose
last point it moves to."""
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from trajectory_msgs.msg import JointTrajectory

from bytemini_driver.description import actuated_joint_names
from grrl_tools.image_codec import encode_compressed, encode_raw

NAMES = ["hw_" + n for n in actuated_joint_names()]


class FakeRobot(Node):
    def __init__(self):
        super().__init__("fake_ros2_control_robot")
        self.q = np.zeros(len(NAMES))
        self.q[3] = self.q[11] = -1.0          # elbows bent
        self.goal = self.q.copy()
        self.js = self.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        self.head = self.create_publisher(Image, "/cam/head/image_raw", qos_profile_sensor_data)
        self.left = self.create_publisher(Image, "/cam/left/image_raw", qos_profile_sensor_data)
        self.right = self.create_publisher(CompressedImage, "/cam/right/image_raw/compressed",
                                           qos_profile_sensor_data)
        self.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory",
                                 self.on_traj, 10)
        self.create_timer(0.02, self.tick)
        self.create_timer(0.1, self.cams)

    def on_traj(self, msg):
        order = {n: i for i, n in enumerate(msg.joint_names)}
        for k, n in enumerate(NAMES):
            if n in order:
                self.goal[k] = msg.points[-1].positions[order[n]]

    def tick(self):
        self.q += np.clip(self.goal - self.q, -0.02, 0.02)
        names = NAMES + ["hw_wheel_joint"]
        self.js.publish(JointState(name=names, position=list(self.q) + [0.0],
                                   velocity=[0.0] * len(names)))

    def cams(self):
        img = np.full((48, 64, 3), 120, np.uint8)
        for pub in (self.head, self.left):
            enc, h, w, step, data = encode_raw(img)
            pub.publish(Image(encoding=enc, height=h, width=w, step=step, data=data))
        fmt, data = encode_compressed(img, "png")
        self.right.publish(CompressedImage(format=fmt, data=data))


def main():
    rclpy.init()
    node = FakeRobot()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
