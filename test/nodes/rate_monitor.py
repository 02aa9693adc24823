"""Writes the arrival time (time.monotonic, one line each) of every message on a JointState
topic to a file: a process of its own, so that what a test does to the graph (publishing
100,000-point messages, say) cannot delay the measurement itself.

Usage: rate_monitor.py TOPIC OUT_FILE"""
from __future__ import annotations

import sys
import time

import rclpy
from sensor_msgs.msg import JointState

from grrl_tools.node_main import init_with_stop_signal


def main() -> None:
    topic, out_path = sys.argv[1], sys.argv[2]
    stop = init_with_stop_signal()
    node = rclpy.create_node("rate_monitor")
    with open(out_path, "w", encoding="utf-8", buffering=1) as out:
        node.create_subscription(JointState, topic,
                                 lambda _msg: out.write(f"{time.monotonic():.6f}\n"), 50)
        while not stop and rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
