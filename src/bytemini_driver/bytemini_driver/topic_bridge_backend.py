"""Topic-bridge backend: drive any ros2_control robot (real, Gazebo, Isaac, ...) through its
standard topics, so the rest of GR-RL sees the usual ``bytemini/...`` interface.

It reads the robot's ``sensor_msgs/JointState`` and its three camera topics (raw
``sensor_msgs/Image`` or, for topics ending in ``/compressed``, ``sensor_msgs/CompressedImage``)
and sends each control tick's target to a ``JointTrajectoryController`` as a one-point
``JointTrajectory``. Joint names may differ: ``bridge.joint_names`` lists the robot's names
in the order of :func:`bytemini_driver.description.actuated_joint_names`. Tcp poses come from
the URDF kinematics. Stale or missing joint states are a :class:`DriverFault`, so the driver
node holds instead of commanding from old data.

Parameters (declared on the driver node when this backend is chosen):
  bridge.joint_states_topic, bridge.trajectory_topic, bridge.camera_topics (head, left
  wrist, right wrist), bridge.joint_names, bridge.command_horizon (s), bridge.state_timeout (s)
"""
from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from bytemini_driver import description as desc
from bytemini_driver.driver import DriverFault, RobotDriver
from grrl_tools.image_codec import ImageError, decode_compressed, decode_raw
from bytemini_driver.trajectory import DriverLimits

DEFAULTS = {
    "bridge.joint_states_topic": "/joint_states",
    "bridge.trajectory_topic": "/joint_trajectory_controller/joint_trajectory",
    "bridge.camera_topics": ["/camera/head/image_raw", "/camera/left_wrist/image_raw",
                             "/camera/right_wrist/image_raw"],
    "bridge.joint_names": desc.actuated_joint_names(),
    "bridge.command_horizon": 0.1,
    "bridge.state_timeout": 0.5,
}


class TopicBridgeDriver(RobotDriver):
    simulated = False

    def __init__(self) -> None:
        self.node = None
        self.lock = threading.Lock()
        self.q = self.v = None
        self.q_time = 0.0
        self.frames: dict[str, np.ndarray] = {}
        self.subs: list = []
        self.pub = None

    def configure(self, params: dict[str, Any], node: Any = None) -> None:
        if node is None:
            raise DriverFault("the topic bridge needs the driver's ROS node")
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image, JointState
        from trajectory_msgs.msg import JointTrajectory

        from bytemini_driver.ik import DualArmIK

        self.node = node
        cfg = {}
        for name, default in DEFAULTS.items():
            if not node.has_parameter(name):
                node.declare_parameter(name, default)
            cfg[name] = node.get_parameter(name).value
        self.robot_names = list(cfg["bridge.joint_names"])
        if len(self.robot_names) != len(desc.actuated_joint_names()):
            raise DriverFault(f"bridge.joint_names needs {len(desc.actuated_joint_names())} "
                              f"names, got {len(self.robot_names)}")
        cams = list(cfg["bridge.camera_topics"])
        if len(cams) != len(desc.CAMERAS):
            raise DriverFault(f"bridge.camera_topics needs {len(desc.CAMERAS)} topics")
        self.horizon = float(cfg["bridge.command_horizon"])
        self.timeout = float(cfg["bridge.state_timeout"])
        self.ik = DualArmIK()
        self.subs.append(node.create_subscription(
            JointState, cfg["bridge.joint_states_topic"], self._on_joints, qos_profile_sensor_data))
        for cam, topic in zip(desc.CAMERAS, cams):
            compressed = topic.rstrip("/").endswith("/compressed")
            self.subs.append(node.create_subscription(
                CompressedImage if compressed else Image, topic,
                lambda msg, c=cam, z=compressed: self._on_image(c, msg, z),
                qos_profile_sensor_data))
        self.pub = node.create_publisher(JointTrajectory, cfg["bridge.trajectory_topic"], 10)
        self._JointTrajectory = JointTrajectory
        deadline = time.monotonic() + 5.0
        while self.q is None and time.monotonic() < deadline:
            time.sleep(0.02)  # the executor is not spinning yet in configure: poll directly
            try:
                import rclpy

                rclpy.spin_once(node, timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - spinning from a callback is not allowed
                break
        if self.q is None:
            raise DriverFault(f"no joint states on {cfg['bridge.joint_states_topic']}")

    def cleanup(self) -> None:
        if self.node is not None:
            for s in self.subs:
                self.node.destroy_subscription(s)
            if self.pub is not None:
                self.node.destroy_publisher(self.pub)
        self.subs, self.pub, self.node = [], None, None

    # ---------------------------------------------------------------- callbacks
    def _on_joints(self, msg: Any) -> None:
        index = {n: i for i, n in enumerate(msg.name)}
        missing = [n for n in self.robot_names if n not in index]
        if missing:
            self.node.get_logger().warn(f"joint states lack {missing}", throttle_duration_sec=5)
            return
        q = np.array([msg.position[index[n]] for n in self.robot_names])
        v = np.array([msg.velocity[index[n]] if len(msg.velocity) == len(msg.name) else 0.0
                      for n in self.robot_names])
        if not np.all(np.isfinite(q)):
            self.node.get_logger().error("non-finite joint state ignored",
                                         throttle_duration_sec=5)
            return
        with self.lock:
            self.q, self.v, self.q_time = q, v, time.monotonic()

    def _on_image(self, cam: str, msg: Any, compressed: bool) -> None:
        try:
            img = decode_compressed(msg.format, msg.data) if compressed else decode_raw(
                msg.encoding, msg.height, msg.width, msg.step, msg.data)
        except ImageError as exc:
            self.node.get_logger().error(f"{cam} image dropped: {exc}", throttle_duration_sec=5)
            return
        with self.lock:
            self.frames[cam] = img

    # ------------------------------------------------------------------ driver API
    def joint_limits(self) -> DriverLimits:
        lo, hi, vel = [], [], []
        for side in desc.SIDES:
            for j in desc.ARM_JOINTS:
                a, b, v, _ = desc.ARM_LIMITS[j]
                lo.append(a), hi.append(b), vel.append(v)
            a, b, v, _ = desc.GRIPPER_LIMITS
            lo.append(a), hi.append(b), vel.append(v)
        return DriverLimits(desc.actuated_joint_names(), np.array(lo), np.array(hi),
                           np.array(vel))

    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            q, v, t = self.q, self.v, self.q_time
        if q is None or time.monotonic() - t > self.timeout:
            raise DriverFault(f"joint states stale for {time.monotonic() - t:.2f} s")
        return q.copy(), v.copy()

    def tcp_poses(self) -> dict[str, np.ndarray]:
        q, _ = self.joint_state()
        return {s: self.ik.fk(q, s) for s in desc.SIDES}

    def command(self, q: np.ndarray) -> None:
        from builtin_interfaces.msg import Duration
        from trajectory_msgs.msg import JointTrajectoryPoint

        h = self.horizon
        point = JointTrajectoryPoint(positions=[float(x) for x in q],
                                     time_from_start=Duration(sec=int(h),
                                                              nanosec=int((h % 1) * 1e9)))
        self.pub.publish(self._JointTrajectory(joint_names=self.robot_names, points=[point]))

    def images(self) -> dict[str, np.ndarray]:
        with self.lock:
            frames, self.frames = self.frames, {}
        return frames
