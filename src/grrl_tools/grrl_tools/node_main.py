"""The one way our nodes run: init, build, spin, and a clean exit on Ctrl-C or SIGTERM."""
from __future__ import annotations

from typing import Callable, TypeVar

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

N = TypeVar("N", bound=Node)

#: numeric parameters accept ints and floats alike (``rate:=10`` or ``rate:=10.0``)
NUMBER = ParameterDescriptor(dynamic_typing=True)


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
