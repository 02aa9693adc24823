"""Every bad input of the reliability issue, sent over DDS to a running graph (simulated driver
and policy node) in one session: each is refused with a clear log, the robot holds, driver and
policy stay alive and the policy still acts afterwards, and the control loop keeps its rate:
joint states are never silent for more than three control periods, measured by a process of
its own."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from builtin_interfaces.msg import Duration
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from bytemini_driver import description as desc
from bytemini_driver.driver_node import COMMAND_QOS
from grrl_tools.testing import wait_until
from test_driver_node import latest, traj
from test_policy_node import corrupted_checkpoint
from test_trainer_node import latched, said, small_checkpoint

pytestmark = pytest.mark.ros
NAMES = desc.actuated_joint_names()
NODES = Path(__file__).resolve().parent.parent / "nodes"

REAL_TIME_FACTOR = 0.2
"""the driver runs on the wall clock (lock-step off: stalls are what this test looks for),
slowed down so that its control period is 100 ms and a busy test machine still keeps it"""
PERIOD_S = 0.02 / REAL_TIME_FACTOR
SILENT_PERIODS = 3


def flood(q: np.ndarray, n_points: int) -> JointTrajectory:
    pts = [JointTrajectoryPoint(positions=list(q), time_from_start=Duration(
        sec=i // 50, nanosec=(i % 50) * 20_000_000)) for i in range(1, n_points + 1)]
    return JointTrajectory(joint_names=NAMES, points=pts)


def arrivals(path: Path) -> np.ndarray:
    return np.array([float(x) for x in path.read_text().split()])


def test_every_bad_input_is_refused_while_control_keeps_its_rate(start_node, processes, ros_node,
                                                                 tmp_path):
    import time

    from geometry_msgs.msg import PoseStamped
    from grrl_interfaces.msg import ActionChunk, CheckpointInfo, EpisodeEvent, KeyValue
    from grrl_interfaces.srv import ResetScene
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64

    from grrl_policy.checkpoint import save_checkpoint
    from grrl_policy.model import GRRLModel, configure
    from test_trainer_node import SMALL

    stamps = tmp_path / "joint_state_arrivals.txt"
    monitor = processes.start([sys.executable, str(NODES / "rate_monitor.py"),
                               "/bytemini/joint_states", str(stamps)])
    driver = start_node("bytemini_driver", "driver_node", publish_images=False, autostart=True,
                        lockstep=False, real_time_factor=REAL_TIME_FACTOR)
    policy = start_node("grrl_policy", "policy_node",
                        checkpoint=str(small_checkpoint(tmp_path / "v1")))
    states = ros_node.collect(JointState, "/bytemini/joint_states")
    chunks = ros_node.collect(ActionChunk, "grrl/action_chunk")
    status = ros_node.collect(CheckpointInfo, "grrl/checkpoint_status", latched())
    said(policy, "ready", 120)
    wait_until(lambda: len(states) > 5 and stamps.exists() and len(arrivals(stamps)) > 5, 60,
               "joint states at the test and at the monitor")
    joints = ros_node.node.create_publisher(JointTrajectory, "/bytemini/command/joint_trajectory",
                                            COMMAND_QOS)
    tcp = ros_node.node.create_publisher(PoseStamped, "/bytemini/command/left/tcp_pose",
                                         COMMAND_QOS)
    grip = ros_node.node.create_publisher(Float64, "/bytemini/command/left/gripper", COMMAND_QOS)
    announce = ros_node.node.create_publisher(CheckpointInfo, "grrl/checkpoint", latched())
    events = ros_node.node.create_publisher(EpisodeEvent, "grrl/episode", latched())
    reset = ros_node.node.create_client(ResetScene, "/bytemini/reset_scene")
    for endpoint in (joints, tcp, grip, announce, events):
        ros_node.wait_for_matched(endpoint)
    assert reset.wait_for_service(timeout_sec=30)
    q0 = np.array(latest(states).position)
    big, huge, too_many = flood(q0, 10_000), flood(q0, 100_000), flood(q0, 600)
    window_start = time.monotonic()

    # --- the driver: malformed, non-finite, out-of-limit and oversized commands
    for msg in (traj(["no_such_joint"], [0.0]), traj(NAMES[:3], [0.0, 0.1]),
                traj(NAMES[:1], [float("nan")]), traj(NAMES[3:4], [1.0]),
                traj(NAMES[:1], [q0[0]], velocities=[50.0])):
        joints.publish(msg)
    for _ in range(20):
        joints.publish(big)
    joints.publish(huge)
    joints.publish(too_many)
    for w in (float("nan"), 2.0):
        pose = PoseStamped()
        pose.header.frame_id = "base_link"
        pose.pose.orientation.w = w
        tcp.publish(pose)
    grip.publish(Float64(data=float("nan")))
    grip.publish(Float64(data=0.2))
    # ... impossible scene requests
    for key, value in (("eyelet_index", "99"), ("eyelet_index", "-1"), ("eyelet_index", "2"),
                       ("eyelet_index", "5"), ("eyelet_index", "two"), ("eyelet_side", "up"),
                       ("colour", "red")):
        resp = ros_node.call(reset, ResetScene.Request(seed=3, options=[KeyValue(key=key,
                                                                                 value=value)]))
        assert not resp.success and (value in resp.message or key in resp.message), resp.message
    out = lambda: driver.output  # noqa: E731
    for reason in ("unknown joint(s) ['no_such_joint']", "2 positions for 3 joints",
                   "non-finite position", "outside", "exceeds",
                   "larger than any trajectory of at most 500 points",
                   "600 points, more than the 500 allowed",
                   "rejected left tcp command, holding: non-finite",
                   "orientation quaternion of norm 2", "rejected left gripper command"):
        wait_until(lambda: reason in out(), 30, f"the driver to log '{reason}'")
    # the robot held through all of it
    n = len(states)
    wait_until(lambda: len(states) > n + 10, 20, "states after the refusals")
    assert np.abs(np.array(latest(states).position) - q0).max() < 2e-3

    # --- the policy: forged, corrupt and missing checkpoints
    save_checkpoint(GRRLModel(configure("tiny-state", SMALL)), tmp_path / "v2", version=2)
    announce.publish(CheckpointInfo(status=CheckpointInfo.STATUS_ANNOUNCED, version=10,
                                    path=str(tmp_path / "v2")))
    corrupted_checkpoint(GRRLModel(configure("tiny-state", SMALL)), tmp_path / "v4", version=4)
    announce.publish(CheckpointInfo(status=CheckpointInfo.STATUS_ANNOUNCED, version=4,
                                    path=str(tmp_path / "v4")))
    announce.publish(CheckpointInfo(status=CheckpointInfo.STATUS_ANNOUNCED, version=5,
                                    path=str(tmp_path / "nowhere")))

    def answer(version: int) -> CheckpointInfo:
        return wait_until(lambda: next((s for s in list(status) if s.version == version), None),
                          60, f"the answer to the announcement of version {version}")
    for version, reason in ((10, "announced as version 10 but the file is version 2"),
                            (4, "sha256"), (5, "nowhere")):
        reply = answer(version)
        assert reply.status == CheckpointInfo.STATUS_REFUSED and reason in reply.message, \
            (version, reply.message)

    # --- both alive, and the policy (still the file's version 1) acts on the robot
    events.publish(EpisodeEvent(event=EpisodeEvent.EVENT_STARTED, episode_id="ep-faults",
                                instruction="thread the left lace end"))
    wait_until(lambda: len(chunks) >= 2, 60, "action chunks after the faults")
    assert {c.policy_version for c in list(chunks)} == {1}
    n = len(states)
    wait_until(lambda: len(states) > n + 10, 20, "states while the policy acts")
    assert np.abs(np.array(latest(states).position) - q0).max() > 2e-3, "the policy did not move it"
    window_end = time.monotonic()
    assert driver.proc.poll() is None and policy.proc.poll() is None
    for proc in (driver, policy):
        assert "Traceback" not in proc.output, proc.output[-3000:]

    # --- the control rate, as seen by the monitor, from the first bad input to the end
    t = arrivals(stamps)
    t = t[(t >= window_start - PERIOD_S * SILENT_PERIODS) & (t <= window_end)]
    gaps = np.diff(t)
    print(f"{len(t)} joint states over {window_end - window_start:.1f} s, largest gap "
          f"{gaps.max() * 1000:.0f} ms (period {PERIOD_S * 1000:.0f} ms)")
    assert len(t) > 20 and gaps.max() <= SILENT_PERIODS * PERIOD_S, \
        f"joint states silent for {gaps.max():.3f} s (> {SILENT_PERIODS} control periods)"
    assert monitor.proc.poll() is None
