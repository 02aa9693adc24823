"""Run episodes through the ``RunEpisode`` action and print their results.

As a node (``run_episodes``, parameters: :class:`RunEpisodesConfig`) it is the
required process of ``launch/sim.launch.xml``: the launch ends when it is done. As a CLI
(``grrl-run-episodes --episodes 3``) it drives an already running graph.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from typing import NoReturn

import rclpy
from rclpy.action import ActionClient
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from grrl_interfaces.action import RunEpisode
from grrl_tools.action_goal import send_goal
from grrl_tools.config_cli import add_arguments, declare_parameters, from_parameters
from grrl_tools.node_main import (READY_QOS, READY_TOPIC, STOP_POLL_S, StopSignal, exit_process,
                                  init_with_stop_signal)
from std_msgs.msg import String


@dataclass
class RunEpisodesConfig:
    """What to run (node parameters; CLI flags override them)."""
    episodes: int = 1
    """number of episodes"""
    seed: int = 0
    """seed of the first episode (then +1 each)"""
    time_limit: float = 0.0
    """seconds per episode (0: the episode node's default)"""
    mirrored: bool = False
    """run the mirrored scenes"""
    server_timeout: float = 60.0
    """wall seconds to wait for the episode node's action server"""
    controller_timeout: float = 300.0
    """wall seconds to wait for a controller to announce on grrl/controller_ready that it can
    act, before the first episode (0: do not wait)"""


CANCEL_WAIT_S = 0.5
"""how long a stopping runner waits for the episode node to accept its cancel"""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived while waiting for the named thing."""


class EpisodeRunner(Node):
    def __init__(self, overrides: dict | None = None, stop: StopSignal | None = None) -> None:
        super().__init__("run_episodes")
        self.stop = stop if stop is not None else False
        self.active = None
        declare_parameters(self, RunEpisodesConfig())
        self.cfg = dataclasses.replace(from_parameters(self, RunEpisodesConfig()),
                                       **(overrides or {}))
        self.client = ActionClient(self, RunEpisode, "grrl/run_episode")
        self.ready: list[str] = []
        self.create_subscription(String, READY_TOPIC, lambda m: self.ready.append(m.data),
                                 READY_QOS)

    def cancel_active(self) -> None:
        """Ask the episode node to cancel the running episode (best effort, bounded: the episode
        node may be stopping too, and the whole exit has 1 s)."""
        if self.active is None or not rclpy.ok():
            return
        future = self.active.cancel_goal_async()
        deadline = time.monotonic() + CANCEL_WAIT_S
        while not future.done() and time.monotonic() < deadline:
            rclpy.spin_once(self, timeout_sec=STOP_POLL_S)

    def param(self, name: str):
        """The flag given for ``name``, else its node parameter (read and checked once)."""
        return getattr(self.cfg, name)

    def _wait(self, future, what: str, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while rclpy.ok() and not future.done():
            if self.stop:
                raise Interrupted(what)
            rclpy.spin_once(self, timeout_sec=STOP_POLL_S)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
        return future.result()

    def _spin_until(self, predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while rclpy.ok() and not predicate() and time.monotonic() < deadline:
            if self.stop:
                raise Interrupted("goal acceptance")
            rclpy.spin_once(self, timeout_sec=STOP_POLL_S)

    def run(self) -> int:
        log = self.get_logger()
        if not self.client.wait_for_server(timeout_sec=float(self.param("server_timeout"))):
            log.error("no RunEpisode action server (is the episode node running?)")
            return 2
        wait = float(self.param("controller_timeout"))
        if wait > 0:
            deadline = time.monotonic() + wait
            while rclpy.ok() and not self.ready and time.monotonic() < deadline:
                if self.stop:
                    raise Interrupted("a controller")
                rclpy.spin_once(self, timeout_sec=STOP_POLL_S)
            if not self.ready:
                log.error(f"no controller announced on {self.resolve_topic_name(READY_TOPIC)} "
                          f"that it can act within {wait:.0f} s (a controller publishes its "
                          "name there once loaded; controller_timeout:=0 does not wait)")
                return 2
            log.info(f"controller ready: {', '.join(sorted(set(self.ready)))}")
        n, seed0 = int(self.param("episodes")), int(self.param("seed"))
        successes, failures = 0, 0
        for i in range(n):
            goal = RunEpisode.Goal(seed=seed0 + i, time_limit=float(self.param("time_limit")),
                                   mirrored=bool(self.param("mirrored")))
            progress: list[float] = []

            def feedback(msg) -> None:
                if msg.feedback.progress >= 0:         # -1: no progress node
                    progress.append(float(msg.feedback.progress))
            try:
                handle = send_goal(self.client, goal, self._spin_until,
                                   feedback_callback=feedback)
            except TimeoutError as exc:
                log.error(f"episode {i}: {exc} (is the episode node alive?)")
                return 2
            if handle is None or not handle.accepted:
                log.error(f"episode {i}: goal rejected")
                failures += 1
                continue
            self.active = handle
            wrapped = self._wait(handle.get_result_async(), "the episode result")
            self.active = None
            if wrapped is None:
                log.error(f"episode {i}: no result")
                return 1
            r = wrapped.result
            successes += int(r.success)
            if wrapped.status != 4:  # not SUCCEEDED: the episode could not be run properly
                failures += 1
            stages = ", ".join(r.stage_names_reached) or "none"
            live = f" | progress {progress[-1]:.2f} (max {max(progress):.2f})" if progress else ""
            print(f"episode {i + 1}/{n} seed {goal.seed}: {'SUCCESS' if r.success else 'FAILURE'}"
                  f" | stages: {stages} | reward {r.reward:.0f}{live} | {r.message} | record: "
                  f"{r.record_path or '-'}", flush=True)
        print(f"success {successes}/{n} ({100.0 * successes / max(n, 1):.0f}%)", flush=True)
        # a failed task is a result, not an error; invalid or rejected episodes are errors
        return 1 if failures else 0


def main(argv: list[str] | None = None) -> NoReturn:
    argv = sys.argv if argv is None else argv
    ros_args = rclpy.utilities.remove_ros_args(argv)
    parser = argparse.ArgumentParser(prog="grrl-run-episodes", description=__doc__.splitlines()[0])
    add_arguments(parser, RunEpisodesConfig())
    # a flag given overrides the node parameter; one not given leaves the parameter
    parser.set_defaults(**{f: None for f in vars(parser.parse_args([]))})
    args = parser.parse_args(ros_args[1:])
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    stop = init_with_stop_signal(argv)
    node = EpisodeRunner(overrides, stop)
    code = 1
    try:
        code = node.run()
    except Interrupted as exc:
        # a stop asked for (Ctrl-C, or a launch shutting down) is a clean end, not an error
        print(f"interrupted while waiting for {exc}", flush=True)
        node.cancel_active()
        code = 0
    except ExternalShutdownException:
        code = 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    exit_process(code)


if __name__ == "__main__":
    main()
