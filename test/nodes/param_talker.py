#!/usr/bin/env python3
"""Test node for the launcher: reports its name, namespace and parameters on `chatter`.

Parameters: greeting (str), rate (float, Hz), count (int), nested.value (int),
max_messages (int, 0 = forever), exit_code (int, returned after max_messages).
"""
import json
import sys

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from std_msgs.msg import String


class ParamTalker(Node):
    def __init__(self):
        super().__init__("param_talker")
        self.declare_parameter("greeting", "hello")
        self.declare_parameter("rate", 20.0)
        self.declare_parameter("count", 0)
        self.declare_parameter("nested.value", 0)
        self.declare_parameter("max_messages", 0)
        self.declare_parameter("exit_code", 0)
        self.pub = self.create_publisher(String, "chatter", 10)
        self.sent = 0
        self.done = False
        self.create_timer(1.0 / self.get_parameter("rate").value, self.tick)

    def tick(self):
        report = {p: self.get_parameter(p).value for p in
                  ("greeting", "rate", "count", "nested.value")}
        report["fqn"] = self.get_fully_qualified_name()
        report["topic"] = self.pub.topic_name
        self.pub.publish(String(data=json.dumps(report)))
        self.sent += 1
        limit = self.get_parameter("max_messages").value
        if limit and self.sent >= limit:
            self.done = True


def main():
    rclpy.init()
    node = ParamTalker()
    code = 0
    try:
        while rclpy.ok() and not node.done:
            rclpy.spin_once(node, timeout_sec=0.1)
        if node.done:
            code = node.get_parameter("exit_code").value
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    sys.exit(code)


if __name__ == "__main__":
    main()
