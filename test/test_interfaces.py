"""grrl_interfaces types are generated, import in rclpy and travel between two processes."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from rclpy.action import ActionClient

from grrl_interfaces.action import RunEpisode
from grrl_interfaces.msg import ActionChunk, CheckpointInfo, EpisodeEvent, KeyValue
from grrl_interfaces.srv import ResetScene
from grrl_tools.action_goal import send_goal
from grrl_tools.testing import wait_until

pytestmark = pytest.mark.ros
PEER = Path(__file__).resolve().parent / "nodes" / "interface_peer.py"


def test_stage_constants_follow_the_paper_funnel():
    stages = [EpisodeEvent.STAGE_NONE, EpisodeEvent.STAGE_PICKED, EpisodeEvent.STAGE_THREADED,
              EpisodeEvent.STAGE_HANDED_OVER, EpisodeEvent.STAGE_PLACED]
    assert stages == sorted(stages) == list(range(5))


def test_messages_service_and_action_cross_processes(processes, ros_node):
    chunks = ros_node.collect(ActionChunk, "/grrl/action_chunk")
    events = ros_node.collect(EpisodeEvent, "/grrl/episode")
    ckpts = ros_node.collect(CheckpointInfo, "/grrl/checkpoint")
    processes.start([sys.executable, str(PEER)])
    ros_node.wait_for_publishers("/grrl/action_chunk", timeout=30)
    wait_until(lambda: chunks and events and ckpts, 30, "one message of each type")

    chunk = chunks[0]
    assert (chunk.horizon, chunk.action_dim, list(chunk.dimension_names)) == (2, 3, ["a", "b", "c"])
    assert list(chunk.actions) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert list(chunk.initial_noise) == [0.5] * 6 and chunk.noise_steered
    assert (chunk.policy_version, chunk.policy_sha256, chunk.header.frame_id) == \
        (7, "ab" * 32, "base_link")
    assert (events[0].stage, events[0].stage_name) == (EpisodeEvent.STAGE_THREADED, "threaded")
    assert (ckpts[0].version, ckpts[0].config_name, ckpts[0].status) == \
        (3, "tiny", CheckpointInfo.STATUS_ANNOUNCED)

    client = ros_node.node.create_client(ResetScene, "/grrl/reset_scene")
    assert client.wait_for_service(timeout_sec=30)
    req = ResetScene.Request(seed=11, mirrored=True, options=[KeyValue(key="k", value="v")])
    resp = ros_node.call(client, req)
    assert resp.success and resp.instruction == "seed 11 mirrored True"
    assert [(kv.key, kv.value) for kv in resp.scene_parameters] == [("k", "V")]

    action = ActionClient(ros_node.node, RunEpisode, "/grrl/run_episode")
    assert action.wait_for_server(timeout_sec=30)
    feedback = []
    goal = RunEpisode.Goal(instruction="thread the left end", time_limit=5.0, seed=42)
    handle = send_goal(action, goal, feedback_callback=lambda f: feedback.append(f.feedback))
    assert handle.accepted
    result_future = handle.get_result_async()
    wait_until(result_future.done, 30, "the episode result")
    result = result_future.result().result
    assert result.success and result.episode_id == "ep-42"
    assert result.message == "thread the left end" and result.stages_reached == 4
    wait_until(lambda: len(feedback) == 2, 10, "two feedback messages")
    assert [f.stage for f in feedback] == [1, 2]
    assert feedback[1].progress == pytest.approx(0.5)
    action.destroy()
    ros_node.node.destroy_client(client)
