"""The policy node over DDS: a freshly initialised tiny model drives the simulated robot through
the real graph with every command inside the limits; bad input makes it hold with a logged
reason; checkpoints are hot-reloaded after verification, and refused ones are reported."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from grrl_tools.testing import wait_until

pytestmark = [pytest.mark.ros, pytest.mark.slow]
LAUNCH = Path(__file__).resolve().parents[2] / "launch" / "sim.launch.xml"


def limits():
    from bytemini_driver import description as desc
    return desc.actuated_joint_names(), *desc.actuated_joint_limits()


def assert_within_limits(trajectories) -> int:
    names, lo, hi, vel = limits()
    points = 0
    for traj in trajectories:
        assert list(traj.joint_names) == names
        prev = 0.0
        for p in traj.points:
            t = p.time_from_start.sec + 1e-9 * p.time_from_start.nanosec
            assert t > prev
            prev = t
            q, v = np.array(p.positions), np.array(p.velocities)
            assert np.all(np.isfinite(q)) and np.all(np.isfinite(v))
            assert np.all(q >= lo - 1e-9) and np.all(q <= hi + 1e-9), q
            assert np.all(np.abs(v) <= vel + 1e-9), v
            points += 1
    return points


def test_fresh_tiny_policy_drives_the_simulated_robot_within_limits(processes, ros_node):
    from grrl_interfaces.msg import ActionChunk
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    chunks = ros_node.collect(ActionChunk, "grrl/action_chunk")
    commands = ros_node.collect(JointTrajectory, "bytemini/command/joint_trajectory")
    states = ros_node.collect(JointState, "bytemini/joint_states")
    launch = processes.launch(str(LAUNCH), "controller:=policy", "image_size:=128", "episodes:=1",
                              "seed:=5", "time_limit:=8", "record:=false")
    code = launch.wait(180)
    out = launch.output
    assert code == 0, out[-3000:]
    assert "episode 1/1 seed 5:" in out
    assert "rejected command" not in out, out[-3000:]
    assert len(chunks) >= 4, out[-3000:]
    assert {c.policy_version for c in chunks} == {0}
    c = chunks[-1]
    assert c.episode_id.startswith("ep-") and (c.horizon, c.action_dim) == (16, 16)
    assert len(c.actions) == len(c.initial_noise) == 256 and not c.noise_steered
    assert len(commands) >= len(chunks) and assert_within_limits(commands) >= 16 * len(chunks)
    # the robot moved under the policy's commands
    q = np.array([s.position for s in states])
    assert np.abs(q - q[0]).max() > 0.05


class FakeRobot:
    """Publishes joint states and three camera images at 25 Hz; what it sends is mutable."""

    def __init__(self, probe):
        from sensor_msgs.msg import Image, JointState
        from rclpy.qos import qos_profile_sensor_data
        self.Image, self.JointState = Image, JointState
        self.node = probe.node
        self.names = limits()[0]
        self.q = np.zeros(16)
        self.size, self.encoding = 128, "rgb8"
        self.cameras = ["head", "left_wrist", "right_wrist"]
        self.pub_js = self.node.create_publisher(JointState, "bytemini/joint_states", 10)
        self.pub_img = {c: self.node.create_publisher(Image, f"bytemini/camera/{c}/image_raw",
                                                      qos_profile_sensor_data)
                        for c in ("head", "left_wrist", "right_wrist")}
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        rng = np.random.default_rng(0)
        while not self.stop:
            # one consistent frame: the test changes several fields in one statement, and a
            # frame mixing old and new values could be a valid input in the middle of bad ones
            q, size, encoding, cameras = self.q, self.size, self.encoding, list(self.cameras)
            stamp = self.node.get_clock().now().to_msg()
            js = self.JointState(name=self.names, position=q.tolist())
            js.header.stamp = stamp
            for cam in cameras:
                img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                msg = self.Image(encoding=encoding, height=size, width=size,
                                 step=3 * size, data=img.tobytes())
                msg.header.stamp = stamp
                self.pub_img[cam].publish(msg)
            self.pub_js.publish(js)
            time.sleep(0.04)


def corrupted_checkpoint(model, path, version: int):
    """Save ``model`` as a checkpoint and flip bits of its weights file (its sha256 no longer
    matches its metadata)."""
    from grrl_policy.checkpoint import paths, save_checkpoint

    save_checkpoint(model, path, version=version)
    weights, _ = paths(path)
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x55
    weights.write_bytes(bytes(data))
    return path


def test_bad_input_holds_with_a_reason_and_checkpoints_are_verified(start_node, ros_node, tmp_path):
    import torch
    from grrl_interfaces.msg import ActionChunk, CheckpointInfo, EpisodeEvent
    from rcl_interfaces.msg import Log
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from trajectory_msgs.msg import JointTrajectory

    from grrl_policy.checkpoint import save_checkpoint
    from grrl_policy.model import GRRLModel, preset

    latched = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                         reliability=ReliabilityPolicy.RELIABLE)
    logs = ros_node.collect(Log, "/rosout", QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
    commands = ros_node.collect(JointTrajectory, "bytemini/command/joint_trajectory")
    chunks = ros_node.collect(ActionChunk, "grrl/action_chunk")
    status = ros_node.collect(CheckpointInfo, "grrl/checkpoint_status", latched)
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    head_images = ros_node.collect(Image, "bytemini/camera/head/image_raw",
                                   qos_profile_sensor_data)
    joint_states = ros_node.collect(JointState, "bytemini/joint_states")
    robot = FakeRobot(ros_node)
    node = start_node("grrl_policy", "policy_node", preset="tiny", max_staleness=0.5)
    try:
        ros_node.wait_for_subscribers("bytemini/joint_states", 1, timeout=60)
        ros_node.wait_for_matched(robot.pub_img["head"], 1, timeout=60)
        events = ros_node.node.create_publisher(EpisodeEvent, "grrl/episode", latched)
        announce = ros_node.node.create_publisher(CheckpointInfo, "grrl/checkpoint", latched)
        ros_node.wait_for_matched(events, 1, timeout=60)

        def said(text: str, timeout: float = 60.0) -> None:
            wait_until(lambda: any(text in m.msg for m in list(logs) if m.name == "grrl_policy"),
                       timeout, f"the policy node to log '{text}'")

        robot.size = 64                                            # wrong image size
        # the episode starts once the bad frames flow (not on a frame sent before the change)
        n_js = len(joint_states)
        wait_until(lambda: any(m.height == 64 for m in list(head_images)) and
                   len(joint_states) > n_js + 1, 60, "frames of the wrong size")
        events.publish(EpisodeEvent(event=EpisodeEvent.EVENT_STARTED, episode_id="ep-test",
                                    instruction="thread the left lace end"))
        said("needs uint8 (128, 128, 3)")
        robot.q = np.full(16, np.nan)                               # NaN proprioception
        robot.size = 128                                # (in this order: never a valid frame)
        said("non-finite proprioception")
        robot.cameras = ["head", "left_wrist"]                      # a camera goes silent
        said("camera right_wrist is stale")
        robot.encoding = "32FC1"                                   # an unsupported encoding
        robot.cameras = ["head", "left_wrist", "right_wrist"]
        said("unsupported encoding")
        assert not commands and not chunks, "commanded on bad input"
        robot.encoding, robot.q = "bgr8", np.zeros(16)             # good input: acts again
        said("acting again")
        wait_until(lambda: len(chunks) >= 2, 60, "action chunks")
        assert assert_within_limits(list(commands)) >= 16
        assert {c.policy_version for c in list(chunks)} == {0}

        # a verified checkpoint is hot-reloaded and tags the following chunks
        torch.manual_seed(1)
        meta = save_checkpoint(GRRLModel(preset("tiny")), tmp_path / "v3", version=3)
        announce.publish(CheckpointInfo(status=CheckpointInfo.STATUS_ANNOUNCED, version=3,
                                        path=str(tmp_path / "v3"), sha256=meta.sha256))
        wait_until(lambda: any(s.status == CheckpointInfo.STATUS_LOADED and s.version == 3
                               for s in list(status)), 60, "checkpoint 3 loaded")
        n = len(chunks)
        wait_until(lambda: len(chunks) >= n + 2, 60, "chunks after the reload")
        assert chunks[-1].policy_version == 3 and chunks[-1].policy_sha256 == meta.sha256

        # a forged announcement (version 10 for a file that says 1) is refused with the reason
        save_checkpoint(GRRLModel(preset("tiny")), tmp_path / "v1", version=1)
        announce.publish(CheckpointInfo(status=CheckpointInfo.STATUS_ANNOUNCED, version=10,
                                        path=str(tmp_path / "v1")))
        forged = wait_until(lambda: next((s for s in list(status) if s.version == 10), None), 60,
                            "the forged announcement's answer")
        assert forged.status == CheckpointInfo.STATUS_REFUSED, forged.message
        assert "announced as version 10 but the file is version 1" in forged.message

        # a corrupted one is refused, reported, and the running version stays
        corrupted_checkpoint(GRRLModel(preset("tiny")), tmp_path / "v4", version=4)
        announce.publish(CheckpointInfo(status=CheckpointInfo.STATUS_ANNOUNCED, version=4,
                                        path=str(tmp_path / "v4")))
        wait_until(lambda: any(s.status == CheckpointInfo.STATUS_REFUSED and s.version == 4
                               for s in list(status)), 60, "checkpoint 4 refused")
        refused = next(s for s in status if s.status == CheckpointInfo.STATUS_REFUSED
                       and s.version == 4)
        assert "sha256" in refused.message
        n = len(chunks)
        wait_until(lambda: len(chunks) >= n + 2, 60, "chunks after the refusal")
        assert chunks[-1].policy_version == 3
        assert node.proc.poll() is None, node.output[-2000:]
    finally:
        robot.stop = True
        robot.thread.join(timeout=2)


def test_task_space_state_policy_acts_through_ik_within_limits(processes, ros_node, tmp_path):
    """A 'tiny-state-task' checkpoint: state in from TaskState, 20 task-space values out, IK to
    joint targets in the node; every command within the limits, the robot moves."""
    from grrl_interfaces.msg import ActionChunk
    from grrl_policy.task_space import task_names
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    task_space_checkpoint(tmp_path / "task")

    chunks = ros_node.collect(ActionChunk, "grrl/action_chunk")
    commands = ros_node.collect(JointTrajectory, "bytemini/command/joint_trajectory")
    states = ros_node.collect(JointState, "bytemini/joint_states")
    launch = processes.launch(str(LAUNCH), "controller:=policy", "publish_images:=false",
                              f"checkpoint:={tmp_path / 'task.safetensors'}", "episodes:=1",
                              "seed:=3", "time_limit:=8", "record:=false")
    code = launch.wait(180)
    out = launch.output
    assert code == 0, out[-3000:]
    assert "rejected command" not in out, out[-3000:]
    # waiting for the first task state at start-up is expected; nothing on the command path is
    holds = [ln for ln in out.splitlines() if "]: holding: " in ln and "episode ended" not in ln
             and not ln.rstrip().endswith("yet")]
    assert not holds, holds
    assert len(chunks) >= 3, out[-3000:]
    c = chunks[-1]
    assert (c.horizon, c.action_dim) == (16, 20) and list(c.dimension_names) == task_names()
    # evaluation's schedule: the first chunk from the scene's first observation (t = 0), then one
    # every step period (0.1 s: execute_steps = 1), though the node sees every 50 Hz joint state
    t = np.array([ch.header.stamp.sec + 1e-9 * ch.header.stamp.nanosec for ch in chunks])
    assert t[0] == 0.0, t[:5]
    np.testing.assert_allclose(np.diff(t), 0.1, atol=1e-6)
    assert {ch.policy_version for ch in chunks} == {1}
    assert len(commands) >= len(chunks) and assert_within_limits(commands) >= 16 * len(chunks)
    q = np.array([s.position for s in states])
    assert np.abs(q - q[0]).max() > 0.01


def task_space_checkpoint(path: Path, seed: int = 0) -> Path:
    """A fresh 'tiny-state-task' model whose chunks scatter ~2 cm around the home poses:
    reachable, but not still."""
    import torch

    from bytemini_driver.sim import ShoeLacingSim
    from grrl_policy.checkpoint import save_checkpoint
    from grrl_policy.model import GRRLModel, preset
    from grrl_policy.task_space import TaskSpaceDecoder

    torch.manual_seed(seed)
    model = GRRLModel(preset("tiny-state-task"))
    sim = ShoeLacingSim()
    home = TaskSpaceDecoder().proprio(sim.home_q)
    sim.close()
    std = torch.full((20,), 0.02)
    model.normalizer.set("action", torch.from_numpy(home), std)
    model.normalizer.set("proprio", torch.from_numpy(home), std)
    save_checkpoint(model, path, version=1)
    return path


def test_node_and_evaluation_make_the_same_chunks_and_plans(start_node, ros_node, tmp_path):
    """One command path: the same checkpoint, scene seed and observation through the policy node
    over DDS and through evaluation's controller give the same chunk, noise and trajectory."""
    from bytemini_driver.driver_node import task_state_message
    from bytemini_driver.mujoco_backend import MujocoDriver
    from grrl_interfaces.msg import ActionChunk, EpisodeEvent
    from grrl_policy.controller import ControllerConfig, PolicyController
    from grrl_policy.policy_runtime import Policy
    from grrl_policy.robot import default_robot
    from grrl_policy.sim_state_spec import state_from_task_state
    from grrl_trainer.evaluation.evaluate import sim_observation
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from grrl_interfaces.msg import TaskState

    ckpt = task_space_checkpoint(tmp_path / "task")
    seed, t_obs = 10_003, 1.5
    drv = MujocoDriver()
    drv.configure({})
    drv.reset(seed, False, {})
    sim = drv.sim
    q = sim.joint_positions()
    task = task_state_message(drv.task_state())
    task.header.stamp.sec, task.header.stamp.nanosec = 1, 500_000_000
    params = sim.params
    eyelet = sim.eyelet_world(params.eyelet_side, params.eyelet_index, params.end_side)

    latched = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                         reliability=ReliabilityPolicy.RELIABLE)
    chunks = ros_node.collect(ActionChunk, "grrl/action_chunk")
    commands = ros_node.collect(JointTrajectory, "bytemini/command/joint_trajectory")
    node = start_node("grrl_policy", "policy_node", checkpoint=str(ckpt), max_staleness=5.0)
    pub_js = ros_node.node.create_publisher(JointState, "bytemini/joint_states", 10)
    pub_task = ros_node.node.create_publisher(TaskState, "bytemini/sim/task_state", 10)
    events = ros_node.node.create_publisher(EpisodeEvent, "grrl/episode", latched)
    for pub in (pub_js, pub_task, events):
        ros_node.wait_for_matched(pub, 1, timeout=60)
    events.publish(EpisodeEvent(event=EpisodeEvent.EVENT_STARTED, episode_id="ep-parity",
                                seed=seed, instruction=sim.instruction))
    js = JointState(name=list(default_robot().actuated_joint_names), position=q.tolist())
    js.header.stamp = task.header.stamp

    def publish() -> bool:
        pub_task.publish(task)
        pub_js.publish(js)
        return bool(chunks) and bool(commands)

    wait_until(publish, 60, "the node's first chunk and trajectory", period=0.1)
    assert node.proc.poll() is None, node.output[-2000:]
    msg, traj = chunks[0], commands[0]

    # evaluation's side: the same observation from the simulator, through the same controller
    obs = sim_observation(sim, Policy.load(str(ckpt)).config, sim.instruction, eyelet,
                          params.shoe_yaw)
    np.testing.assert_allclose(obs.state, state_from_task_state(task), atol=1e-6)
    obs.t, obs.state = t_obs, state_from_task_state(task)      # the node's very input
    controller = PolicyController(Policy.load(str(ckpt)), ControllerConfig(), "evaluation")
    controller.start_episode(seed)
    inference, command = controller.act(obs)
    k, d = inference.chunk.actions.shape
    assert (msg.horizon, msg.action_dim) == (k, d) and msg.episode_id == "ep-parity"
    np.testing.assert_array_equal(np.array(msg.initial_noise, np.float32).reshape(k, d),
                                  inference.chunk.noise)
    np.testing.assert_allclose(np.array(msg.actions, np.float32).reshape(k, d),
                               inference.chunk.actions, atol=1e-6)
    assert len(traj.points) == len(command.times)
    for p, t, pos, vel, acc in zip(traj.points, command.times, command.positions,
                                   command.velocities, command.accelerations):
        assert abs(p.time_from_start.sec + 1e-9 * p.time_from_start.nanosec - t) < 2e-9
        np.testing.assert_allclose(p.positions, pos, atol=1e-7)
        np.testing.assert_allclose(p.velocities, vel, atol=1e-7)
        np.testing.assert_allclose(p.accelerations, acc, atol=1e-6)
    drv.cleanup()
