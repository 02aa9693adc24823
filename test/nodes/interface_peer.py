#!/usr/bin/env python3
"""Peer process for test_interfaces: publishes grrl_interfaces messages and serves the
ResetScene service and the RunEpisode action, so the types cross a process boundary."""
import rclpy
from rclpy.action import ActionServer
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from grrl_interfaces.action import RunEpisode
from grrl_interfaces.msg import ActionChunk, CheckpointInfo, EpisodeEvent, KeyValue
from grrl_interfaces.srv import ResetScene


class Peer(Node):
    def __init__(self):
        super().__init__("interface_peer")
        self.chunks = self.create_publisher(ActionChunk, "/grrl/action_chunk", 10)
        self.events = self.create_publisher(EpisodeEvent, "/grrl/episode", 10)
        self.ckpt = self.create_publisher(CheckpointInfo, "/grrl/checkpoint", 10)
        self.create_service(ResetScene, "/grrl/reset_scene", self.reset)
        ActionServer(self, RunEpisode, "/grrl/run_episode", self.run_episode)
        self.create_timer(0.05, self.tick)

    def tick(self):
        m = ActionChunk(horizon=2, action_dim=3, dimension_names=["a", "b", "c"],
                        actions=[float(i) for i in range(6)],
                        initial_noise=[0.5] * 6, noise_steered=True, step_period=0.02,
                        policy_version=7, policy_sha256="ab" * 32, episode_id="ep-1")
        m.header.frame_id = "base_link"
        self.chunks.publish(m)
        self.events.publish(EpisodeEvent(episode_id="ep-1", event=EpisodeEvent.EVENT_STAGE,
                                         stage=EpisodeEvent.STAGE_THREADED,
                                         stage_name="threaded"))
        self.ckpt.publish(CheckpointInfo(status=CheckpointInfo.STATUS_ANNOUNCED,
                                         path="/ckpt/v3.safetensors", version=3,
                                         sha256="cd" * 32, config_name="tiny"))

    def reset(self, request, response):
        response.success = True
        response.instruction = f"seed {request.seed} mirrored {request.mirrored}"
        response.scene_parameters = [KeyValue(key=o.key, value=o.value.upper())
                                     for o in request.options]
        return response

    def run_episode(self, goal_handle):
        for stage in (1, 2):
            goal_handle.publish_feedback(RunEpisode.Feedback(
                elapsed=0.1 * stage, stage=stage, stage_name=f"s{stage}", progress=0.25 * stage))
        goal_handle.succeed()
        g = goal_handle.request
        return RunEpisode.Result(success=True, stages_reached=4,
                                 stage_names_reached=["picked", "threaded"],
                                 reward=1.0, episode_id=f"ep-{g.seed}",
                                 record_path="/tmp/x.mcap", message=g.instruction)


def main():
    rclpy.init()
    node = Peer()
    executor = MultiThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
