#!/usr/bin/env python3
"""Test node for the launcher and the stop deadline: installs our stop signal
(grrl_tools.node_main), then, once asked to stop, wedges its main thread in a lock that is never
released, as a node that hangs in its shutdown would. With ``--no-deadline`` (a hang the
deadline cannot end, e.g. in C code holding the interpreter lock) the launcher must ask it for
its stacks, then escalate; without, its own deadline ends it."""
import sys
import threading

import rclpy
from rclpy.node import Node

from grrl_tools.node_main import init_with_stop_signal


def wedged_on_purpose(lock: threading.Lock) -> None:
    lock.acquire()          # held already: blocks for ever (signals run, nothing releases it)


def main():
    stop = init_with_stop_signal(deadline_s=None if "--no-deadline" in sys.argv else 1.0)
    node = Node("stuck_on_stop")
    while not stop:
        rclpy.spin_once(node, timeout_sec=0.1)
    lock = threading.Lock()
    lock.acquire()
    wedged_on_purpose(lock)


if __name__ == "__main__":
    main()
