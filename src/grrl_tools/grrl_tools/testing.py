"""Test harness for nodes over real DDS: isolated domain, graph waits, process clean-up.

Used by the pytest fixtures in the repository's ``conftest.py`` and usable by integrators in
their own tests. Every wait polls the ROS graph (or a condition) until a deadline; nothing
waits a fixed time and hopes.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

#: Environment variable set on every process a test starts; used to find leftovers.
MARKER_ENV = "GRRL_TEST_MARKER"


def isolated_ros_env(ros_home: Path, domain_id: int | None = None) -> dict[str, str]:
    """Environment for a test session: localhost-only discovery on a domain of its own."""
    if domain_id is None:
        # 1..101, away from the default 0; different concurrent sessions differ by pid.
        domain_id = 1 + os.getpid() % 101
    ros_home.mkdir(parents=True, exist_ok=True)
    return {
        "ROS_DOMAIN_ID": str(domain_id),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_HOME": str(ros_home),
        "RMW_IMPLEMENTATION": os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"),
        "PYTHONUNBUFFERED": "1",
    }


GRAPH_WAIT = 60.0
"""default seconds a test waits for the ROS graph (publishers, subscribers, matches, nodes)"""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               period: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; raise ``TimeoutError`` naming
    ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(period)


def processes_with_marker(marker: str) -> list[int]:
    """PIDs of live processes whose environment carries ``GRRL_TEST_MARKER=marker``."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except (OSError, PermissionError):
            continue
        if " Z " in stat[stat.rfind(")"):stat.rfind(")") + 4]:  # zombies are already dead
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


@dataclass
class ManagedProcess:
    """A process started by a test, in its own session so the whole tree can be signalled."""

    cmd: Sequence[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen = field(init=False)

    def __post_init__(self) -> None:
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(list(self.cmd), env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

    @property
    def output(self) -> str:
        if not self._log.closed:           # (stopped: the log is closed, its text complete)
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"{self.cmd[0]} still running after {timeout}s; output:\n"
                               f"{self.output[-4000:]}") from exc

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT the process group, then SIGKILL it; always leaves nothing behind."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        return self.proc.returncode


class ProcessFactory:
    """Starts processes for one test and cleans all of them (and their children) up."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.marker = uuid.uuid4().hex
        self.env = {**env, MARKER_ENV: self.marker}
        self.log_dir = log_dir
        self.started: list[ManagedProcess] = []

    def start(self, cmd: Sequence[str], env: dict[str, str] | None = None) -> ManagedProcess:
        name = Path(cmd[0]).name
        log = self.log_dir / f"{len(self.started):02d}-{name}.log"
        proc = ManagedProcess(cmd, {**self.env, **(env or {})}, log)
        self.started.append(proc)
        return proc

    def launch(self, *args: str, env: dict[str, str] | None = None) -> ManagedProcess:
        """``grrl-launch ARGS...`` (same interpreter, so no PATH lookup is needed)."""
        return self.start([sys.executable, "-m", "grrl_tools.launcher", *args], env)

    def leftovers(self) -> list[int]:
        return processes_with_marker(self.marker)

    def cleanup(self) -> list[int]:
        """Stop everything; return PIDs that had to be killed as leftovers (should be [])."""
        for proc in reversed(self.started):
            proc.stop()
        stray = self.leftovers()
        for pid in stray:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return stray


class RosTestNode:
    """An rclpy node in a private context, spun on a background thread."""

    def __init__(self, name: str = "grrl_test_probe"):
        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"{name}_{uuid.uuid4().hex[:6]}", context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except (ExternalShutdownException, Exception):  # noqa: BLE001 - shutdown races
            pass

    # --- graph waits: deadlines for discovery, which takes seconds on a loaded machine (one
    # took over 20 s beside an online run of 2 simulated robots), not races against it
    def wait_for_publishers(self, topic: str, count: int = 1, timeout: float = GRAPH_WAIT) -> None:
        wait_until(lambda: self.node.count_publishers(topic) >= count, timeout,
                   f"{count} publisher(s) on {topic}")

    def wait_for_subscribers(self, topic: str, count: int = 1, timeout: float = GRAPH_WAIT) -> None:
        wait_until(lambda: self.node.count_subscribers(topic) >= count, timeout,
                   f"{count} subscriber(s) on {topic}")

    def wait_for_matched(self, endpoint: Any, count: int = 1, timeout: float = GRAPH_WAIT) -> None:
        """A publisher's or subscription's own match count (discovery done both ways)."""
        getter = getattr(endpoint, "get_subscription_count", None) or \
            getattr(endpoint, "get_publisher_count")
        wait_until(lambda: getter() >= count, timeout, f"{count} matched endpoint(s)")

    def wait_for_node(self, fqn: str, timeout: float = GRAPH_WAIT) -> None:
        def present() -> bool:
            names = self.node.get_node_names_and_namespaces()
            return any((ns.rstrip("/") + "/" + n) == fqn for n, ns in names)
        wait_until(present, timeout, f"node {fqn}")

    def node_gone(self, fqn: str) -> bool:
        names = self.node.get_node_names_and_namespaces()
        return not any((ns.rstrip("/") + "/" + n) == fqn for n, ns in names)

    def call(self, client: Any, request: Any, timeout: float = 5.0, attempts: int = 12) -> Any:
        """A service call that asks again if the answer is lost (right after discovery the
        server's reply can go to a reader it has not matched yet; on a loaded machine that
        took longer than 4 x 5 s once) or late (a loaded machine). For idempotent requests.
        (rclpy's ``Client.call`` raises TimeoutError where older versions returned None: both
        mean "ask again".)"""
        for _ in range(attempts):
            try:
                response = client.call(request, timeout_sec=timeout)
            except TimeoutError:
                response = None
            if response is not None:
                return response
        raise TimeoutError(f"no answer from {client.srv_name} after {attempts} attempts of "
                           f"{timeout:g} s")

    def collect(self, msg_type: Any, topic: str, qos: Any = 10) -> list:
        """Subscribe and return the list the received messages are appended to."""
        received: list = []
        lock = threading.Lock()

        def cb(msg: Any) -> None:
            with lock:
                received.append(msg)
        self.node.create_subscription(msg_type, topic, cb, qos)
        return received

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self._thread.join(timeout=2.0)
        self.node.destroy_node()
        if self.context.ok():
            self._rclpy.shutdown(context=self.context)
