"""The episode node over DDS: time limit, cancel, a reset during an episode, physics faults,
and a second goal while one runs."""
from __future__ import annotations

import pytest
from rclpy.action import ActionClient

from grrl_interfaces.action import RunEpisode
from grrl_interfaces.msg import EpisodeEvent
from grrl_interfaces.srv import ResetScene
from grrl_tools.action_goal import send_goal
from grrl_tools.testing import wait_until

pytestmark = pytest.mark.ros


@pytest.fixture
def graph(start_node, ros_node):
    """driver (no cameras) + episode node, nobody acting; returns (action client, events)."""
    def start(backend: str = "mujoco", controller_timeout: float = 0.0):
        start_node("bytemini_driver", "driver_node", publish_images=False, autostart=True,
                   real_time_factor=2.0, backend=backend)
        start_node("grrl_trainer", "episode_node", record=False,
                   controller_timeout=controller_timeout)
        events = ros_node.collect(EpisodeEvent, "/grrl/episode")
        client = ActionClient(ros_node.node, RunEpisode, "/grrl/run_episode")
        assert client.wait_for_server(timeout_sec=30)
        return client, events
    yield start


def send(client, **goal):
    return send_goal(client, RunEpisode.Goal(**goal))


def result_of(handle, timeout=60.0):
    fut = handle.get_result_async()
    wait_until(fut.done, timeout, "the result")
    return fut.result()


def test_time_limit_ends_the_episode_without_reward(graph):
    client, events = graph()
    handle = send(client, seed=3, time_limit=1.5)
    assert handle.accepted
    res = result_of(handle)
    assert not res.result.success and res.result.reward == 0.0
    assert res.result.message.startswith("timeout: time limit of 2 s")  # 1.5 s rounds to 2
    assert res.result.stages_reached == 0
    mine = [e for e in events if e.episode_id == res.result.episode_id]
    assert [e.event for e in mine] == [EpisodeEvent.EVENT_STARTED, EpisodeEvent.EVENT_ABORTED]
    # stamped in simulated time, like every other message of the episode: the scene's clock
    # starts at 0 at its reset, and the episode ends when it passes the limit
    started, ended = (e.header.stamp.sec + e.header.stamp.nanosec * 1e-9 for e in mine)
    assert started < 0.5 and 1.5 <= ended < 2.5, (started, ended)


def test_an_idle_episode_node_subscribes_to_nothing_it_records(graph, ros_node):
    """Recording subscriptions exist only during an episode: idle, the node does not take the
    driver's 250 messages/s (that used ~20% of a core)."""
    client, events = graph()

    def recorder_subscribed() -> bool:
        infos = ros_node.node.get_subscriptions_info_by_topic("/bytemini/joint_states")
        return any(i.node_name == "episode_node_recorder" for i in infos)
    wait_until(lambda: ros_node.node.count_publishers("/bytemini/joint_states"), 30, "the driver")
    assert not recorder_subscribed()
    handle = send(client, seed=3, time_limit=1.0)
    wait_until(recorder_subscribed, 30, "the recorder to subscribe during the episode")
    result_of(handle)
    wait_until(lambda: not recorder_subscribed(), 30, "the recorder to unsubscribe after it")


def test_an_episode_waits_for_its_controller_to_be_ready(graph, ros_node):
    from std_msgs.msg import String

    from grrl_tools.node_main import READY_QOS
    client, events = graph(controller_timeout=1.0)
    res = result_of(send(client, seed=3, time_limit=1.0))
    assert not res.result.success and "no controller announced" in res.result.message
    wait_until(lambda: len(events) > 0, 60, "the episode's event")   # (may trail the result)
    assert [e.event for e in events] == [EpisodeEvent.EVENT_INVALID]   # no clock ever ran
    ready = ros_node.node.create_publisher(String, "/grrl/controller_ready", READY_QOS)
    ros_node.wait_for_matched(ready, 1)      # discovery first: the goal waits only 1 s for it
    ready.publish(String(data="/a_controller"))
    res = result_of(send(client, seed=3, time_limit=1.0))
    assert res.result.message.startswith("timeout"), res.result.message


def test_cancel_and_concurrent_goal(graph):
    client, events = graph()
    handle = send(client, seed=4, time_limit=120.0)
    assert handle.accepted
    second = send(client, seed=5, time_limit=5.0)
    assert not second.accepted                      # one episode at a time
    wait_until(lambda: any(e.event == EpisodeEvent.EVENT_STARTED for e in events), 20,
               "the start")
    cancel = handle.cancel_goal_async()
    wait_until(cancel.done, 20, "the cancel response")
    res = result_of(handle)
    assert res.status == 5                           # GoalStatus.STATUS_CANCELED
    assert res.result.message == "cancelled: cancelled"
    assert events[-1].event == EpisodeEvent.EVENT_ABORTED


def test_reset_during_an_episode_aborts_it(graph, ros_node):
    client, events = graph()
    handle = send(client, seed=6, time_limit=120.0)
    wait_until(lambda: any(e.event == EpisodeEvent.EVENT_STARTED for e in events), 20,
               "the start")
    reset = ros_node.node.create_client(ResetScene, "/bytemini/reset_scene")
    assert reset.wait_for_service(timeout_sec=10)
    assert ros_node.call(reset, ResetScene.Request(seed=99)).success
    res = result_of(handle)
    assert not res.result.success
    assert "the scene was reset during the episode" in res.result.message


def test_physics_fault_makes_the_episode_invalid(graph):
    client, events = graph(backend="faulty_backend:NanAfterReset")
    handle = send(client, seed=13, time_limit=60.0)
    res = result_of(handle)
    assert res.status == 6                           # GoalStatus.STATUS_ABORTED
    assert res.result.message.startswith("invalid: physics fault")
    assert events[-1].event == EpisodeEvent.EVENT_INVALID
    # the graph survives: the next episode runs normally (and times out, nobody acts)
    res2 = result_of(send(client, seed=1, time_limit=1.0))
    assert res2.result.message.startswith("timeout")


def test_operator_labels_drive_the_episode_on_a_real_robot(start_node, ros_node):
    from grrl_interfaces.srv import LabelEpisode

    start_node("bytemini_driver", "driver_node", publish_images=False, autostart=True)
    start_node("grrl_trainer", "episode_node", record=False, stage_source="operator",
               controller_timeout=0.0)
    events = ros_node.collect(EpisodeEvent, "/grrl/episode")
    client = ActionClient(ros_node.node, RunEpisode, "/grrl/run_episode")
    assert client.wait_for_server(timeout_sec=30)
    label = ros_node.node.create_client(LabelEpisode, "/grrl/label_episode")
    assert label.wait_for_service(timeout_sec=30)
    idle = ros_node.call(label, LabelEpisode.Request(action=LabelEpisode.Request.RETRY))
    assert not idle.accepted and idle.message == "no episode is running"
    from sensor_msgs.msg import JointState

    states = ros_node.collect(JointState, "/bytemini/joint_states")
    handle = send(client, seed=2, time_limit=60.0)
    wait_until(lambda: any(e.event == EpisodeEvent.EVENT_STARTED for e in events), 20, "start")
    n = len(states)
    wait_until(lambda: len(states) > n + 10, 20, "some control steps into the episode")
    req = LabelEpisode.Request
    assert ros_node.call(label, req(action=req.STAGE, stage=1)).accepted
    retry = ros_node.call(label, req(action=req.RETRY, note="missed the eyelet"))
    assert retry.accepted
    assert not ros_node.call(label, req(action=req.STAGE, stage=9)).accepted
    assert ros_node.call(label, req(action=req.SUCCESS)).accepted
    res = result_of(handle)
    assert res.result.success and res.result.reward == 1.0
    assert list(res.result.stage_names_reached) == ["picked", "threaded", "handed_over",
                                                    "placed"]
    retries = [e for e in events if e.event == EpisodeEvent.EVENT_RETRY]
    assert len(retries) == 1 and retries[0].message == "missed the eyelet"
    assert retries[0].stage == 1 and retries[0].step == retry.step > 0


def test_sim_mode_refuses_operator_stage_labels(graph, ros_node):
    from grrl_interfaces.srv import LabelEpisode

    client, events = graph()
    handle = send(client, seed=3, time_limit=20.0)
    wait_until(lambda: any(e.event == EpisodeEvent.EVENT_STARTED for e in events), 20, "start")
    label = ros_node.node.create_client(LabelEpisode, "/grrl/label_episode")
    assert label.wait_for_service(timeout_sec=10)
    resp = ros_node.call(label, LabelEpisode.Request(action=LabelEpisode.Request.SUCCESS))
    assert not resp.accepted and "simulator" in resp.message
    assert ros_node.call(label, LabelEpisode.Request(action=LabelEpisode.Request.RETRY)).accepted
    handle.cancel_goal_async()
    result_of(handle)


def test_a_held_episode_starts_once_released(start_node, ros_node):
    """While a live publisher says True on grrl/hold_episodes (the online trainer during its
    critic warm-up), an accepted goal waits before its reset: no scene, no clock, no event."""
    from std_msgs.msg import Bool

    from grrl_tools.node_main import HOLD_QOS
    start_node("bytemini_driver", "driver_node", publish_images=False, autostart=True,
               real_time_factor=2.0)
    node = start_node("grrl_trainer", "episode_node", record=False, controller_timeout=0.0)
    events = ros_node.collect(EpisodeEvent, "/grrl/episode")
    hold = ros_node.node.create_publisher(Bool, "/grrl/hold_episodes", HOLD_QOS)
    ros_node.wait_for_matched(hold, 1)
    hold.publish(Bool(data=True))
    wait_until(lambda: "new episodes held (grrl/hold_episodes)" in node.output, 60,
               "the episode node to hear the hold")
    client = ActionClient(ros_node.node, RunEpisode, "/grrl/run_episode")
    assert client.wait_for_server(timeout_sec=30)
    handle = send(client, seed=3, time_limit=1.0)
    assert handle.accepted
    wait_until(lambda: "seed 3: waits while new episodes are held" in node.output, 60,
               "the goal to wait")
    assert list(events) == []                  # not started: the episode's clock is not running
    hold.publish(Bool(data=False))
    res = result_of(handle)
    assert res.result.message.startswith("timeout"), res.result.message
    wait_until(lambda: len(events) >= 2, 60, "the episode's events")     # (may trail the result)
    assert [e.event for e in events] == [EpisodeEvent.EVENT_STARTED, EpisodeEvent.EVENT_ABORTED]
