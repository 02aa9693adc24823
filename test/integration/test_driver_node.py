"""The sim driver node over DDS: lifecycle, bad commands, watchdog, physics faults."""
from __future__ import annotations

import time

import numpy as np
import pytest
from builtin_interfaces.msg import Duration
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from bytemini_driver import description as desc
from bytemini_driver.driver_node import COMMAND_QOS
from grrl_interfaces.msg import TaskState
from grrl_interfaces.srv import ResetScene
from grrl_tools.testing import wait_until

pytestmark = pytest.mark.ros
NAMES = desc.actuated_joint_names()


def change(ros_node, transition: int) -> bool:
    client = ros_node.node.create_client(ChangeState, "/bytemini_driver/change_state")
    assert client.wait_for_service(timeout_sec=30)
    # (not retried: a transition is not idempotent)
    resp = client.call(ChangeState.Request(transition=Transition(id=transition)), timeout_sec=30)
    ros_node.node.destroy_client(client)
    return resp is not None and resp.success


def latest(msgs: list, after: int = 0):
    wait_until(lambda: len(msgs) > after, 10, "a new message")
    return msgs[-1]


def traj(names, positions, t=0.5, velocities=None) -> JointTrajectory:
    pt = JointTrajectoryPoint(positions=list(positions),
                              time_from_start=Duration(sec=int(t), nanosec=int((t % 1) * 1e9)))
    if velocities is not None:
        pt.velocities = list(velocities)
    return JointTrajectory(joint_names=list(names), points=[pt])


def test_lifecycle_transitions_repeat(start_node, ros_node):
    proc = start_node("bytemini_driver", "driver_node", publish_images=False)
    states = ros_node.collect(JointState, "/bytemini/joint_states")
    for _ in range(2):
        assert change(ros_node, Transition.TRANSITION_CONFIGURE)
        assert change(ros_node, Transition.TRANSITION_ACTIVATE)
        n = len(states)
        wait_until(lambda: len(states) > n + 10, 20, "joint states while active")
        assert change(ros_node, Transition.TRANSITION_DEACTIVATE)
        time_stopped = len(states)
        # inactive: no more state messages (allow the ones already in flight)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            pass
        assert len(states) <= time_stopped + 2
        assert change(ros_node, Transition.TRANSITION_CLEANUP)
    assert proc.proc.poll() is None


@pytest.fixture
def active_driver(start_node, ros_node):
    start_node("bytemini_driver", "driver_node", publish_images=False, autostart=True)
    states = ros_node.collect(JointState, "/bytemini/joint_states")
    tasks = ros_node.collect(TaskState, "/bytemini/sim/task_state")
    wait_until(lambda: len(states) > 5, 30, "the driver to publish")
    pub = ros_node.node.create_publisher(JointTrajectory, "/bytemini/command/joint_trajectory",
                                         COMMAND_QOS)
    ros_node.wait_for_matched(pub)
    return pub, states, tasks


def test_bad_commands_are_rejected_and_the_robot_holds(active_driver, processes):
    pub, states, _ = active_driver
    q0 = np.array(latest(states).position)
    bad = [
        traj(["no_such_joint"], [0.0]),
        traj(NAMES[:3], [0.0, 0.1]),                              # wrong length
        traj(NAMES[:1], [float("nan")]),
        traj(NAMES[3:4], [1.0]),                                  # elbow upper limit is 0
        traj(NAMES[:1], [q0[0]], velocities=[50.0]),
    ]
    for msg in bad:
        pub.publish(msg)
    n = len(states)
    wait_until(lambda: len(states) > n + 25, 10, "half a second of states")
    q1 = np.array(latest(states).position)
    assert np.abs(q1 - q0).max() < 2e-3
    out = processes.started[0].output
    for reason in ("unknown joint(s) ['no_such_joint']", "2 positions for 3 joints",
                   "non-finite position", "outside", "exceeds"):
        assert reason in out, out[-2000:]
    # a good command still moves the robot, within its limits
    target = q0.copy()
    target[0] -= 0.3
    pub.publish(traj(NAMES, target, t=0.5))
    wait_until(lambda: abs(latest(states).position[0] - target[0]) < 0.02, 10, "the motion")


def test_oversized_commands_are_refused_unread_and_control_goes_on(active_driver, processes):
    pub, states, _ = active_driver
    q0 = np.array(latest(states).position)

    def flood(n_points: int) -> JointTrajectory:
        pts = [JointTrajectoryPoint(positions=list(q0), velocities=[0.0] * 16,
                                    accelerations=[0.0] * 16,
                                    time_from_start=Duration(sec=i // 50,
                                                             nanosec=(i % 50) * 20_000_000))
               for i in range(1, n_points + 1)]
        return JointTrajectory(joint_names=NAMES, points=pts)
    big, too_many = flood(10_000), flood(600)
    n = len(states)
    for _ in range(5):
        pub.publish(big)
    pub.publish(too_many)
    out = lambda: processes.started[0].output  # noqa: E731
    wait_until(lambda: out().count("larger than any trajectory of at most 500 points") >= 5
               and "600 points, more than the 500 allowed" in out(), 30, "the refusals")
    # the loop kept running and the robot held still; a good command still moves it
    wait_until(lambda: len(states) > n + 50, 20, "a second of states")
    assert np.abs(np.array(latest(states).position) - q0).max() < 2e-3
    target = q0.copy()
    target[0] -= 0.3
    pub.publish(traj(NAMES, target, t=0.5))
    wait_until(lambda: abs(latest(states).position[0] - target[0]) < 0.02, 10, "the motion")


def test_watchdog_holds_when_commands_stop(active_driver, processes):
    pub, states, _ = active_driver
    q0 = np.array(latest(states).position)
    target = q0.copy()
    target[0] -= 1.0
    pub.publish(traj(NAMES, target, t=5.0))                       # a slow 5 s move...
    wait_until(lambda: "watchdog" in processes.started[0].output, 10, "the watchdog")
    n = len(states)
    wait_until(lambda: len(states) > n + 25, 10, "the arm to settle")
    held = np.array(latest(states).position)
    n = len(states)
    wait_until(lambda: len(states) > n + 25, 10, "more states")
    assert abs(latest(states).position[0] - held[0]) < 2e-3      # ...stopped, not finished
    assert abs(held[0] - target[0]) > 0.5


def test_physics_fault_resets_the_scene_without_crashing(start_node, ros_node):
    proc = start_node("bytemini_driver", "driver_node", publish_images=False, autostart=True,
                      backend="faulty_backend:NanAfterReset")
    tasks = ros_node.collect(TaskState, "/bytemini/sim/task_state")
    client = ros_node.node.create_client(ResetScene, "/bytemini/reset_scene")
    assert client.wait_for_service(timeout_sec=30)
    resp = ros_node.call(client, ResetScene.Request(seed=13))
    assert resp.success
    fault = wait_until(lambda: next((t for t in list(tasks) if t.failed), None), 20,
                       "the fault report")
    assert fault.failure_reason.startswith("physics fault: non-finite physics state")
    # the recovered scene keeps reporting the fault (one message could be overtaken) ...
    n = len(tasks)
    wait_until(lambda: len(tasks) > n + 10, 10, "states of the recovered scene")
    later = list(tasks)[n:]
    assert all(t.failed and t.failure_reason.startswith("physics fault") for t in later)
    assert later[-1].scene_seq > fault.scene_seq - 1
    assert proc.proc.poll() is None
    # ... until the next requested reset: then the scene is healthy again
    resp = ros_node.call(client, ResetScene.Request(seed=1, options=[]))
    assert resp.success and "thread the" in resp.instruction
    m = len(tasks)
    wait_until(lambda: len(tasks) > m + 10, 10, "states of the new scene")
    assert not list(tasks)[-1].failed


def test_bad_reset_options_are_refused_and_the_driver_lives(active_driver, ros_node, processes):
    from grrl_interfaces.msg import KeyValue

    _, states, tasks = active_driver
    client = ros_node.node.create_client(ResetScene, "/bytemini/reset_scene")
    assert client.wait_for_service(timeout_sec=30)
    refusals = {"99": "0..1", "-1": "0..1", "2": "0..1", "5": "0..1",
                "two": "must be an integer, got 'two'"}
    for value, reason in refusals.items():
        resp = ros_node.call(client, ResetScene.Request(
            seed=3, options=[KeyValue(key="eyelet_index", value=value)]))
        assert resp is not None and not resp.success, value
        assert reason in resp.message and repr(value if not value.lstrip("-").isdigit()
                                               else int(value)) in resp.message, resp.message
    for key, value in (("eyelet_side", "up"), ("colour", "red")):
        resp = ros_node.call(client, ResetScene.Request(seed=3, options=[KeyValue(key=key, value=value)]))
        assert not resp.success and (value in resp.message or key in resp.message), resp.message
    # the driver is alive and a valid request still works, with the option it asked for
    n = len(states)
    wait_until(lambda: len(states) > n + 5, 10, "states after the refusals")
    resp = ros_node.call(client, ResetScene.Request(
        seed=3, options=[KeyValue(key="eyelet_index", value="1")]))
    assert resp.success, resp.message
    assert dict((kv.key, kv.value) for kv in resp.scene_parameters)["eyelet_index"] == "1"
    assert processes.started[0].proc.poll() is None


def test_task_space_and_gripper_commands(active_driver, ros_node, processes):
    from geometry_msgs.msg import PoseStamped
    from std_msgs.msg import Float64

    pub, states, _ = active_driver
    poses = ros_node.collect(PoseStamped, "/bytemini/left/tcp_pose")
    wait_until(lambda: poses, 10, "tcp poses")
    start = poses[-1]
    cmd = ros_node.node.create_publisher(PoseStamped, "/bytemini/command/left/tcp_pose",
                                         COMMAND_QOS)
    grip = ros_node.node.create_publisher(Float64, "/bytemini/command/left/gripper", COMMAND_QOS)
    ros_node.wait_for_matched(cmd)
    ros_node.wait_for_matched(grip)
    goal = PoseStamped()
    goal.header.frame_id = "base_link"
    goal.pose = start.pose
    goal.pose.position.x += 0.04
    goal.pose.position.z -= 0.03
    gx, gz = goal.pose.position.x, goal.pose.position.z

    def reached():
        cmd.publish(goal)                              # stream it, as a teleoperator would
        p = poses[-1].pose.position
        return abs(p.x - gx) < 0.004 and abs(p.z - gz) < 0.004
    wait_until(reached, 20, "the tcp to reach its target", period=0.05)
    grip.publish(Float64(data=0.005))
    k = NAMES.index("left_gripper_finger_joint")
    wait_until(lambda: abs(latest(states).position[k] - 0.005) < 0.002, 10, "the gripper")
    bad = PoseStamped()
    bad.header.frame_id = "base_link"
    bad.pose.orientation.w = float("nan")
    cmd.publish(bad)
    grip.publish(Float64(data=0.2))
    wait_until(lambda: "rejected left tcp command, holding: non-finite" in processes.started[0].output
               and "rejected left gripper command" in processes.started[0].output, 10,
               "the rejections")
    bad.pose.orientation.w = 2.0                   # finite, but not a rotation
    cmd.publish(bad)
    wait_until(lambda: "orientation quaternion of norm 2" in processes.started[0].output, 10,
               "the rejection of a quaternion of norm 2")
