"""grrl-launch with real nodes over DDS: params, remaps, namespaces, signals, required nodes."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from std_msgs.msg import String

from grrl_tools.testing import wait_until

pytestmark = pytest.mark.ros


def _reports(ros_node, topic: str):
    received = ros_node.collect(String, topic)
    return received


def test_params_remaps_namespace_over_dds(testpkg, launch_dir: Path, processes, ros_node):
    received = _reports(ros_node, "/robot7/renamed")
    launch = processes.launch(str(launch_dir / "talker.launch.xml"), "ns:=robot7",
                              "greeting:=from_cli", "topic:=renamed")
    ros_node.wait_for_publishers("/robot7/renamed", timeout=30)
    wait_until(lambda: received, 30, "a report from the talker")
    report = json.loads(received[0].data)
    assert report == {"greeting": "from_cli", "rate": 25.0, "count": 7, "nested.value": 42,
                      "fqn": "/robot7/talker", "topic": "/robot7/renamed"}
    launch.signal(signal.SIGINT)
    assert launch.wait(30) == 0, launch.output
    assert "[robot7.talker]" in launch.output or "started robot7.talker" in launch.output
    assert processes.leftovers() == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_tears_down_every_node(testpkg, launch_dir: Path, processes, ros_node, sig):
    # a node is running once it reports, not once it shows in the graph: the test talker
    # (rclpy's own signal handlers) appears there while its constructor still runs, and a
    # signal in that window once left it unable to stop (CI, a loaded 2-core machine)
    reports = {ns: _reports(ros_node, f"/fleet/{ns}/talk") for ns in ("a", "b")}
    launch = processes.launch(str(launch_dir / "outer.launch.xml"), "use_second:=true")
    for ns, received in reports.items():
        wait_until(lambda received=received: received, 30, f"a report from /fleet/{ns}/talker")
    assert len(processes.leftovers()) == 3  # the launcher and two nodes
    launch.signal(sig)
    assert launch.wait(30) == 0, launch.output
    wait_until(lambda: not processes.leftovers(), 10, "all processes to exit")
    assert "exited with code" in launch.output


def test_a_node_that_hangs_on_stop_shows_its_stacks_then_is_killed(testpkg, launch_dir,
                                                                     processes, ros_node):
    launch = processes.launch(str(launch_dir / "stuck.launch.xml"), "node_args:=--no-deadline")
    ros_node.wait_for_node("/stuck", timeout=30)
    launch.signal(signal.SIGINT)
    assert launch.wait(30) == 1, launch.output
    out = launch.output
    assert "stuck did not stop after SIGINT; its stacks follow (SIGUSR1)" in out, out
    # faulthandler's dump names the frame the main thread hangs in
    assert "most recent call first" in out and "wedged_on_purpose" in out, out
    assert "stuck did not stop, sending SIGKILL" in out, out
    wait_until(lambda: not processes.leftovers(), 10, "the stuck node to be gone")


def test_a_node_that_hangs_on_stop_ends_itself_at_its_deadline(testpkg, launch_dir, processes,
                                                                ros_node):
    from grrl_tools.node_main import FORCED_EXIT

    launch = processes.launch(str(launch_dir / "stuck.launch.xml"))
    ros_node.wait_for_node("/stuck", timeout=30)
    launch.signal(signal.SIGINT)
    assert launch.wait(30) == 0, launch.output
    out = launch.output
    assert f"{FORCED_EXIT} 1 s of its stop signal: forced exit" in out, out
    assert "wedged_on_purpose" in out, out          # the stacks say where it hung
    assert "sending SIGTERM" not in out, out        # the launcher did not have to escalate
    wait_until(lambda: not processes.leftovers(), 10, "the stuck node to be gone")


def test_required_node_failure_shuts_down_and_fails(testpkg, launch_dir: Path, processes):
    launch = processes.launch(str(launch_dir / "required.launch.xml"), "exit_code:=3")
    code = launch.wait(60)
    assert code == 1, launch.output
    assert "required process finisher exited (3)" in launch.output
    assert "failure: finisher exited with 3" in launch.output
    wait_until(lambda: not processes.leftovers(), 10, "the bystander to be torn down")


def test_required_node_clean_exit_ends_launch_with_success(testpkg, launch_dir, processes):
    launch = processes.launch(str(launch_dir / "required.launch.xml"), "exit_code:=0")
    assert launch.wait(60) == 0, launch.output
    assert "required process finisher exited (0)" in launch.output
    wait_until(lambda: not processes.leftovers(), 10, "the bystander to be torn down")


@pytest.mark.parametrize("file, needle", [
    ("bad_exec.launch.xml", "executable 'no_such_node' not found in package 'grrl_testpkg'"),
    ("missing_params.launch.xml", "parameter file not found"),
])
def test_bad_file_starts_nothing(testpkg, launch_dir: Path, processes, file, needle):
    launch = processes.launch(str(launch_dir / file))
    assert launch.wait(30) == 2
    assert needle in launch.output
    assert "started" not in launch.output
    assert processes.leftovers() == []


def test_kill_9_of_launcher_leaves_no_orphans(testpkg, launch_dir: Path, processes, ros_node):
    launch = processes.launch(str(launch_dir / "talker.launch.xml"))
    ros_node.wait_for_node("/robot1/talker", timeout=30)
    launch.signal(signal.SIGKILL)
    launch.wait(10)
    wait_until(lambda: not processes.leftovers(), 15, "the talker to die with its launcher")


def test_print_and_show_args(testpkg, launch_dir: Path, processes):
    shown = processes.launch(str(launch_dir / "talker.launch.xml"), "--show-args")
    assert shown.wait(30) == 0
    assert "'ns': namespace of the talker" in shown.output and "(default: 'robot1')" in shown.output
    printed = processes.launch(str(launch_dir / "talker.launch.xml"), "--print", "ns:=x")
    assert printed.wait(30) == 0
    assert "namespace: /x" in printed.output and "remap: chatter -> talk" in printed.output
