"""Ctrl-C stops the whole graph cleanly: every node, stopped mid-episode, exits 0 without a
traceback and well before a launcher would escalate to SIGTERM (ros2 launch waits 5 s)."""
from __future__ import annotations

import re
import signal
import time

import pytest
from grrl_interfaces.msg import EpisodeEvent
from grrl_tools.node_main import FORCED_EXIT
from grrl_tools.testing import wait_until
from test_trainer_node import said, small_checkpoint

pytestmark = pytest.mark.ros

ESCALATION_S = 5.0
"""ros2 launch's SIGINT -> SIGTERM grace period: a node still running then was not stopped"""


def test_every_node_exits_cleanly_on_sigint_mid_episode(start_node, ros_node, tmp_path):
    policy = small_checkpoint(tmp_path / "bc")
    events = ros_node.collect(EpisodeEvent, "/grrl/episode")
    nodes = {
        "driver": start_node("bytemini_driver", "driver_node", publish_images=False,
                             autostart=True),
        "episode": start_node("grrl_trainer", "episode_node", record=True,
                              record_dir=str(tmp_path / "episodes")),
        "policy": start_node("grrl_policy", "policy_node", checkpoint=str(policy)),
        "trainer": start_node("grrl_trainer", "trainer_node", policy=str(policy),
                              run_dir=str(tmp_path / "online"), episodes_per_round=2),
    }
    said(nodes["trainer"], "trainer ready", 90)
    nodes["run_episodes"] = start_node("grrl_trainer", "run_episodes", episodes=1, seed=3,
                                       time_limit=600.0)
    wait_until(lambda: any(e.event == EpisodeEvent.EVENT_STARTED for e in list(events)), 60,
               "the episode to start")
    said(nodes["policy"], "acting", 60)

    start = time.monotonic()
    for proc in nodes.values():
        proc.signal(signal.SIGINT)
    took = {}
    for name, proc in nodes.items():
        proc.wait(60)
        took[name] = time.monotonic() - start
    print("seconds to exit after SIGINT:", {k: round(v, 2) for k, v in took.items()})
    for name, proc in nodes.items():
        out = proc.output
        assert proc.proc.returncode == 0, f"{name} exited {proc.proc.returncode}:\n{out[-3000:]}"
        assert "Traceback" not in out and "RCLError" not in out, f"{name}:\n{out[-3000:]}"
        # it stopped by itself, not by the stop deadline's forced exit
        assert FORCED_EXIT not in out, f"{name}:\n{out[-3000:]}"
        assert took[name] < ESCALATION_S, f"{name} took {took[name]:.1f} s to exit:\n{out[-2000:]}"
    # the interrupted episode was closed properly: its end was announced
    assert any(e.event == EpisodeEvent.EVENT_ABORTED for e in list(events)), \
        nodes["episode"].output[-2000:]


def test_ctrl_c_of_the_launched_graph_mid_episode_is_clean(processes, tmp_path):
    """The same through the launcher, as an operator stops `grrl-launch launch/sim.launch.xml`:
    every process exits 0 on the first SIGINT, nothing is escalated, nothing prints a
    traceback, and the launch exits 0."""
    from pathlib import Path

    launch_file = Path(__file__).resolve().parents[2] / "launch" / "sim.launch.xml"
    launch = processes.launch(str(launch_file), "episodes:=1", "seed:=0", "time_limit:=600",
                              "publish_images:=false", "record:=true")
    wait_until(lambda: "acting on" in launch.output or "ep-000000" in launch.output, 120,
               "the episode to start")
    launch.signal(signal.SIGINT)
    assert launch.wait(60) == 0, launch.output[-3000:]
    out = launch.output
    assert "did not stop" not in out and "Traceback" not in out, out[-3000:]
    exits = re.findall(r"process (\S+) \(pid \d+\) exited with code (-?\d+)", out)
    assert {name for name, _ in exits} >= {"bytemini_driver", "episode_node", "scripted_expert",
                                           "run_episodes"}, out[-3000:]
    assert all(code == "0" for _, code in exits), exits
