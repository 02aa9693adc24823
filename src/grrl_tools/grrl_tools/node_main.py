"""The one way our nodes run: init, build, spin, and a clean exit on Ctrl-C or SIGTERM; and the
controllers' ready handshake: a controller (policy, expert, an integrator's own) publishes its
name on the latched ``grrl/controller_ready`` once it can act, and whoever starts episodes
waits for it (an episode's clock must not run while its controller is still loading)."""
from __future__ import annotations

from typing import Callable, TypeVar

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

N = TypeVar("N", bound=Node)

#: numeric parameters accept ints and floats alike (``rate:=10`` or ``rate:=10.0``)
NUMBER = ParameterDescriptor(dynamic_typing=True)


READY_TOPIC = "grrl/controller_ready"
"""std_msgs/String: the name of a controller that can act (latched)"""
READY_QOS = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                       reliability=ReliabilityPolicy.RELIABLE)


def announce_ready(node: Node):
    """Publish ``node``'s name on :data:`READY_TOPIC` (latched); returns the publisher, which
    the node must keep."""
    from std_msgs.msg import String

    pub = node.create_publisher(String, READY_TOPIC, READY_QOS)
    pub.publish(String(data=node.get_fully_qualified_name()))
    return pub


def run_node(factory: Callable[[], N], argv: list[str] | None = None,
             before_spin: Callable[[N], None] | None = None) -> None:
    rclpy.init(args=argv)
    node = factory()
    try:
        if before_spin is not None:
            before_spin(node)
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        # rclpy can fail a take that races with Ctrl-C/SIGTERM; during shutdown that is
        # not an error of the node
        if rclpy.ok():
            raise
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
