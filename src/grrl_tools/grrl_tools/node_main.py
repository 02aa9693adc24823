"""The one way our nodes run: init, build, spin, and a clean exit on Ctrl-C or SIGTERM; and the
controllers' ready handshake: a controller (policy, expert, an integrator's own) publishes its
name on the latched ``grrl/controller_ready`` once it can act, and whoever starts episodes
waits for it (an episode's clock must not run while its controller is still loading)."""
from __future__ import annotations

import atexit
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable, NoReturn, TypeVar

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

N = TypeVar("N", bound=Node)

#: numeric parameters accept ints and floats alike (``rate:=10`` or ``rate:=10.0``)
NUMBER = ParameterDescriptor(dynamic_typing=True)


READY_TOPIC = "grrl/controller_ready"
"""std_msgs/String: the name of a controller that can act (latched)"""
READY_QOS = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                       reliability=ReliabilityPolicy.RELIABLE)

HOLD_TOPIC = "grrl/hold_episodes"
"""std_msgs/Bool (latched): True while whoever publishes it (the online trainer, during its
critic warm-up updates) asks that no new episode start; an episode node waits before its next
reset while a live publisher says True"""
HOLD_QOS = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                      reliability=ReliabilityPolicy.RELIABLE)


def announce_ready(node: Node):
    """Publish ``node``'s name on :data:`READY_TOPIC` (latched); returns the publisher, which
    the node must keep."""
    from std_msgs.msg import String

    pub = node.create_publisher(String, READY_TOPIC, READY_QOS)
    pub.publish(String(data=node.get_fully_qualified_name()))
    return pub


STOP_DEADLINE_S = 3.0
"""a node still running this long after its stop signal prints every thread's stack, says so,
and ends (status 0: it was asked to stop, and it stopped). A stop takes 0.1-0.7 s (measured by
test_shutdown, which fails on the forced exit's line); the deadline is the bound when something
in a callback or a library's teardown hangs, well before a launcher escalates (5 s)"""

FORCED_EXIT = "did not stop within"
"""the start of the forced exit's line on stderr"""


def _force_exit(deadline_s: float) -> None:
    time.sleep(deadline_s)
    try:
        sys.stderr.write(f"[{os.path.basename(sys.argv[0])}] {FORCED_EXIT} {deadline_s:g} s of "
                         "its stop signal: forced exit; every thread's stack:\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(all_threads=True)
    finally:
        os._exit(0)


class StopSignal:
    """SIGINT and SIGTERM set :attr:`event` instead of shutting the context down under running
    callbacks (rclpy's own handler does, and a callback that publishes then dies with an
    RCLError traceback). Install it in the main thread, after ``rclpy.init(...,
    signal_handler_options=SignalHandlerOptions.NO)``."""

    def __init__(self, deadline_s: float | None = STOP_DEADLINE_S) -> None:
        self.event = threading.Event()
        self.deadline_s = deadline_s
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - the signal module's signature
        if not self.event.is_set() and self.deadline_s is not None:
            threading.Thread(target=_force_exit, args=(self.deadline_s,), daemon=True,
                             name="stop-deadline").start()
        self.event.set()

    def __bool__(self) -> bool:
        return self.event.is_set()


STACKS_SIGNAL = signal.SIGUSR1
"""``kill -USR1 PID`` prints every thread's stack of a node to its stderr (``grrl-launch`` does
so to a process that did not stop after SIGINT, before escalating): a hang shows where it is,
even with the main thread stuck in C code, since the dump needs no interpreter lock"""


def init_with_stop_signal(argv: list[str] | None = None,
                          deadline_s: float | None = STOP_DEADLINE_S) -> StopSignal:
    """``rclpy.init`` without rclpy's signal handlers, and a :class:`StopSignal` (with its
    ``deadline_s``, None = none) in their place; :data:`STACKS_SIGNAL` dumps the stacks."""
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    faulthandler.register(STACKS_SIGNAL, all_threads=True, chain=False)
    return StopSignal(deadline_s)


STOP_POLL_S = 0.1
"""how often a spinning node looks at the stop signal: the bound on its reaction to Ctrl-C"""


def _drain(executor: Executor, timeout: float = 1.0) -> None:
    """Let callbacks already handed to a multi-threaded executor's threads finish: its
    ``shutdown`` destroys the guard condition they trigger without waiting for them (they then
    fail with 'cannot use Destroyable', printed as an exception never retrieved)."""
    deadline = time.monotonic() + timeout
    for future in list(getattr(executor, "_futures", ())):
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.005)


def exit_process(code: int = 0) -> NoReturn:
    """End a node's process once it has stopped, closed its files and shut ROS down: run the
    exit handlers, flush logging and the standard streams, and skip the interpreter's teardown.
    That teardown (torch's and the DDS libraries' globals) took 3-4 s after a policy node had
    already stopped, on a 2-core machine running an evaluation beside it; a launcher escalates
    to SIGTERM after 5 s and the issue asks for 1 s. Nothing of ours relies on it: files are
    closed by the nodes' ``stop()``/``destroy_node()`` before this."""
    atexit._run_exitfuncs()  # noqa: SLF001 - the handlers os._exit would skip
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def run_node(factory: Callable[[], N], argv: list[str] | None = None,
             before_spin: Callable[[N], None] | None = None,
             make_executor: Callable[[], Executor] = SingleThreadedExecutor) -> None:
    """Init, build the node, spin it until SIGINT/SIGTERM, then stop it in order (its own
    ``stop()`` first, if it has one: finish what is in flight while the context is still
    valid), destroy it, shut down, exit 0 (:func:`exit_process`). An exception while building
    or spinning propagates as usual: a traceback and a failing status."""
    stop = init_with_stop_signal(argv)
    node = None
    executor = make_executor()
    try:
        node = factory()
        if before_spin is not None:
            before_spin(node)
        executor.add_node(node)
        while not stop and rclpy.ok():
            executor.spin_once(timeout_sec=STOP_POLL_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None and hasattr(node, "stop"):
            node.stop()
        _drain(executor)
        executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    exit_process(0)
