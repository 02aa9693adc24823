"""The policy node: cameras (or the simulator state) + joint states + the episode's instruction
in, action chunks and optimized joint trajectories out.

Inputs: ``bytemini/camera/<cam>/image_raw`` (3 cameras; image models) or
``bytemini/sim/task_state`` (state-observation models, ``tiny-state``: the lace, the target
eyelet, the threading direction and the shoe's yaw, made into the state vector of
:mod:`bytemini_driver.sim_state`; no camera is needed then), ``bytemini/joint_states``, the
episode events on ``grrl/episode`` (instruction and episode id; the policy acts only during an
episode), and checkpoint announcements on ``grrl/checkpoint``.
Outputs: ``grrl/action_chunk`` (raw chunk, the noise it came from, the policy version) and
``bytemini/command/joint_trajectory`` (the jerk-limited plan with positions, velocities and
accelerations), plus ``grrl/checkpoint_status`` (LOADED / REFUSED with the reason).

Control flow: every joint state (the control clock) checks whether a re-plan is due
(receding horizon: after ``execute_steps`` chunk steps); if so, a snapshot of the inputs goes
to an inference thread, so the executor never waits on the model. A state model waits for the
task state of the joint state's instant (the driver publishes it first; if it has not come by
the next joint state, that one goes on with what there is). Every joint state is answered on
``bytemini/sim/step_ack`` once handled (after the trajectory it led to, if any): a lock-step
simulator advances only then, so an episode does not depend on how fast this node runs. The snapshot must be
complete, fresh (``max_staleness`` wall seconds) and synchronised (camera or task-state stamps
within ``sync_slop`` of the joint state; the task state must be of the episode's scene);
otherwise, and on any model or optimizer failure, the node logs the reason and commands a stop
(the robot holds). Checkpoints are loaded on their own
thread, verified (sha256, config, shapes) and swapped atomically; a refused one is reported.

The command path itself (observation checks, noise, inference, IK decode, re-plan rule,
jerk-limited plan, stop on a hold) is :class:`grrl_policy.controller.PolicyController`, the same
object evaluation and online rollouts drive; this node converts messages and owns threads/QoS.
Parameters: :class:`PolicyNodeConfig` (its fields and the controller's, with their defaults).
With ``steer`` the initial noise is the noise predictor's ε (plus ``explore_std`` exploration)
for checkpoints whose predictor was trained online (``extra.steerable``); an offline checkpoint
is acted with ε ~ N(0, I) even then (the paper's warm-up rollouts). The noise of an episode is
seeded from (``noise_seed``, the episode's scene seed), as in evaluation.
"""
from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from grrl_interfaces.msg import ActionChunk, CheckpointInfo, EpisodeEvent, TaskState
from grrl_tools.config_cli import declare_parameters, from_parameters
from grrl_tools.image_codec import ImageError, decode_raw
from grrl_tools.lockstep import SCENE_START, StepAcker
from grrl_tools.node_main import announce_ready, run_node
from grrl_tools.stamps import duration_msg, stamp_ns, stamp_s

from .checkpoint import CheckpointError
from .controller import (Command, ControllerConfig, HoldError, Inference, Observation,
                         PolicyController)
from .keys import CAMERAS
from .policy_runtime import Policy
from .robot import load_robot
from .sim_state_spec import state_from_task_state
from .task_space import task_names

COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                     reliability=ReliabilityPolicy.RELIABLE)


@dataclass
class Latest:
    """A message's payload, its header time and when it arrived (monotonic)."""

    value: object = None
    stamp: float = float("nan")
    arrived: float = float("-inf")
    error: str = ""
    ns: int = -1
    """the stamp in integer nanoseconds (exact, for matching)"""
    time: object = None
    """the header stamp itself (the step answered)"""


@dataclass
class Snapshot:
    images: dict[str, np.ndarray]
    q: np.ndarray
    t_obs: float
    instruction: str
    episode_id: str
    errors: list[str] = field(default_factory=list)
    task: TaskState | None = None
    """the simulator state the observation is built from (state models)"""
    stamp: object = None
    """the joint state's header stamp (the observation this decision answers)"""


@dataclass
class PolicyNodeConfig:
    """Parameters of the policy node (the controller's are its own: ``execute_steps``, ...)."""

    checkpoint: str = ""
    """safetensors weights (JSON beside them); empty: a freshly initialised model"""
    robot_description: str = ""
    """the robot's URDF (XML text, as ROS's robot_description, or a file path): joint names,
    limits and the kinematics of the IK decode; empty: ByteMini-v2 (shipped with the package)"""
    preset: str = "tiny"
    """model preset of a fresh model"""
    seed: int = 0
    """initialisation seed of a fresh model"""
    device: str = "cpu"
    """torch device of the policy"""
    threads: int = 1
    """torch CPU threads (1: on a small machine the simulator and DDS need the other core)"""
    max_staleness: float = 0.5
    """wall seconds an input may be old before the robot holds"""
    sync_slop: float = 0.15
    """seconds between camera (or task-state) stamps and the joint-state stamp, plus one step"""
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    """the command path: receding horizon, limits, noise"""


PARAMETER_FLATTEN = ("controller",)


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("grrl_policy")
        declare_parameters(self, PolicyNodeConfig(), flatten=PARAMETER_FLATTEN)
        self.cfg = cfg = from_parameters(self, PolicyNodeConfig(), flatten=PARAMETER_FLATTEN)
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.policy = Policy.load(cfg.checkpoint, device=cfg.device) if cfg.checkpoint else \
            Policy.fresh(cfg.preset, cfg.seed, cfg.device)
        robot = load_robot(cfg.robot_description) if cfg.robot_description else None
        self.controller = PolicyController(self.policy, cfg.controller, "this node", robot)
        mcfg = self.policy.config
        self.dt = cfg.controller.step_period
        self.names = self.controller.joint_names
        self.chunk_names = task_names(self.controller.robot) if mcfg.action_space == "task" \
            else self.names
        self.lock = threading.Lock()
        self.state_obs = mcfg.observes_state
        self.images = {} if self.state_obs else {c: Latest() for c in CAMERAS}
        self.task = Latest()
        self.joints = Latest()
        self.episode: EpisodeEvent | None = None
        self.answered: tuple[int, str] | None = None
        """(joint-state stamp, episode id) last answered"""
        self.busy = False
        self.holding = False
        self.last_reason = ""
        self.closing = False
        self.infer_pool = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.load_pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        self.pub_cmd = self.create_publisher(JointTrajectory, "bytemini/command/joint_trajectory", COMMAND_QOS)
        self.pub_chunk = self.create_publisher(ActionChunk, "grrl/action_chunk", 10)
        self.pub_status = self.create_publisher(CheckpointInfo, "grrl/checkpoint_status", LATCHED)
        self.acker = StepAcker(self)
        if self.state_obs:
            self.create_subscription(TaskState, "bytemini/sim/task_state", self.on_task, 10)
        else:
            for cam in CAMERAS:
                self.create_subscription(Image, f"bytemini/camera/{cam}/image_raw",
                                         lambda msg, c=cam: self.on_image(c, msg), qos_profile_sensor_data)
        self.create_subscription(JointState, "bytemini/joint_states", self.on_joints, 10)
        self.create_subscription(EpisodeEvent, "grrl/episode", self.on_event, LATCHED)
        self.create_subscription(CheckpointInfo, "grrl/checkpoint", self.on_checkpoint, LATCHED)
        self.policy.warm_up()
        c = cfg.controller
        self.get_logger().info(
            f"policy {mcfg.name} version {self.policy.version} ready "
            f"({'checkpoint ' + cfg.checkpoint if cfg.checkpoint else 'freshly initialised'}; "
            f"observes {'the simulator state' if self.state_obs else 'the cameras'}; "
            f"steer={c.steer}{f' (exploration std {c.explore_std})' if c.steer else ''}, "
            f"k={mcfg.horizon}, m={c.execute_steps}, dt={self.dt})")
        self._say_steering()
        self.ready_pub = announce_ready(self)

    # ---------------------------------------------------------------- inputs
    def on_image(self, cam: str, msg: Image) -> None:
        entry = Latest(arrived=time.monotonic(), stamp=stamp_s(msg.header.stamp))
        try:
            entry.value = decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data)
        except ImageError as e:
            entry.error = f"camera {cam}: {e}"
        with self.lock:
            self.images[cam] = entry

    def on_task(self, msg: TaskState) -> None:
        entry = Latest(value=msg, arrived=time.monotonic(), stamp=stamp_s(msg.header.stamp),
                       ns=stamp_ns(msg.header.stamp))
        with self.lock:
            self.task = entry
        self._answer()

    def on_event(self, msg: EpisodeEvent) -> None:
        if msg.event == EpisodeEvent.EVENT_STARTED:
            with self.lock:
                self.episode, self.holding = msg, False
                # IK posture: the joints at the episode's first chunk; noise seeded by the scene
                self.controller.start_episode(msg.seed)
            self.get_logger().info(f"episode {msg.episode_id}: acting on '{msg.instruction}'")
            self._answer(scene_start=True)  # the scene's first observation may be here
        elif msg.event in (EpisodeEvent.EVENT_FINISHED, EpisodeEvent.EVENT_ABORTED,
                           EpisodeEvent.EVENT_INVALID):
            with self.lock:
                active = self.episode is not None and self.episode.episode_id == msg.episode_id
                if active:
                    self.episode = None
            if active:
                self.hold("episode ended")

    def on_joints(self, msg: JointState) -> None:
        entry = Latest(arrived=time.monotonic(), stamp=stamp_s(msg.header.stamp),
                       ns=stamp_ns(msg.header.stamp), time=msg.header.stamp)
        order = {n: i for i, n in enumerate(msg.name)}
        if not all(n in order for n in self.names) or len(msg.position) != len(msg.name):
            entry.error = "joint state lacks joints " + \
                ", ".join(n for n in self.names if n not in order)[:200]
        else:
            entry.value = np.array([msg.position[order[n]] for n in self.names], float)
        with self.lock:
            # the previous joint state still waited for its task state: do not wait again
            stalled = not self.busy and self.joints.time is not None and \
                self._key(self.joints) != self.answered
            self.joints = entry
        self._answer(force=stalled)

    def _key(self, joints: Latest) -> tuple[int, str]:
        return joints.ns, self.episode.episode_id if self.episode is not None else ""

    def _answer(self, force: bool = False, scene_start: bool = False) -> None:
        """Handle the newest joint state once (per episode): a due re-plan goes to the
        inference thread, which answers after publishing; anything else is answered now.
        ``scene_start``: only if it is a scene's first (an episode began: a lock-step scene
        waits there for the answer; any later observation is followed by a next one)."""
        with self.lock:
            j = self.joints
            if j.time is None or self.busy or self._key(j) == self.answered or \
                    (scene_start and j.ns != SCENE_START):
                return
            if self.state_obs and self.task.ns != j.ns and not force:
                # the task state of this instant is on its way (one of a newer stamp is the
                # previous scene's: stamps restart at a reset)
                return
            self.answered = self._key(j)
            acting = self.episode is not None
            # a scene's first observation (t = 0, SCENE_START) comes with its reset, before
            # the episode begins: answered idle then, and answered again, acting (a held scene
            # waits for that), once the episode is on: the first chunk is planned at t = 0, as
            # in evaluation (acting only from the next observation put every decision of the
            # graph's episodes one control tick after evaluation's)
            if acting and self.controller.due(j.stamp):
                self.busy = True
                snap = self._snapshot(time.monotonic())
            else:
                snap = None
        if snap is None:
            self.acker.ack(j.time, acting)
        else:
            self.infer_pool.submit(self._run, snap)

    def _snapshot(self, now: float) -> Snapshot:
        """Called with the lock held: everything the inference needs, with what is wrong."""
        j = self.joints
        errors = [j.error] if j.error else []
        images = {}
        slop = self.cfg.sync_slop + self.dt
        for cam, e in self.images.items():
            if e.error:
                errors.append(e.error)
            elif e.value is None:
                errors.append(f"no image from camera {cam} yet")
            elif now - e.arrived > self.cfg.max_staleness:
                errors.append(f"camera {cam} is stale ({now - e.arrived:.2f} s old)")
            elif abs(e.stamp - j.stamp) > slop:
                errors.append(f"camera {cam} is out of sync with the joint state "
                              f"({e.stamp - j.stamp:+.3f} s)")
            else:
                images[cam] = e.value
        task = None
        if self.state_obs:
            t = self.task
            if t.value is None:
                errors.append("no task state from the simulator yet")
            elif now - t.arrived > self.cfg.max_staleness:
                errors.append(f"the task state is stale ({now - t.arrived:.2f} s old)")
            elif abs(t.stamp - j.stamp) > slop:
                errors.append(f"the task state is out of sync with the joint state "
                              f"({t.stamp - j.stamp:+.3f} s)")
            elif t.value.seed != self.episode.seed:
                errors.append(f"the task state is of another scene (seed {t.value.seed}, the "
                              f"episode's {self.episode.seed})")
            else:
                task = t.value
        return Snapshot(images, j.value, j.stamp, self.episode.instruction, self.episode.episode_id,
                        errors, task, j.time)

    # ---------------------------------------------------------------- inference thread
    def _run(self, snap: Snapshot) -> None:
        if self.closing:
            return
        sent = 0
        try:
            state = state_from_task_state(snap.task) if snap.task is not None else None
            obs = Observation(snap.q, snap.t_obs, snap.instruction,
                              images=None if self.state_obs else snap.images, state=state,
                              errors=snap.errors)
            inference = self.controller.infer(obs)
            with self.lock:
                if self.episode is None or self.episode.episode_id != snap.episode_id:
                    return                                   # the episode ended meanwhile
                command = self.controller.plan(inference, self.joints.stamp)
                self.holding = False
            self._publish(snap, inference, command)
            sent = 1
            if self.last_reason:
                self.get_logger().info(f"acting again (was holding: {self.last_reason})")
                self.last_reason = ""
        except (HoldError, ValueError) as e:
            sent = self.hold(str(e))
        except Exception as e:  # noqa: BLE001 - the command path must never die: hold
            sent = self.hold(f"inference failed: {e!r}")
        finally:
            with self.lock:
                self.busy = False
            if not self.closing:
                self.acker.ack(snap.stamp, True, sent)
                self._answer()          # joint states that came meanwhile (free-running)

    def _publish(self, snap: Snapshot, inference: Inference, command: Command) -> None:
        cfg, chunk = self.policy.config, inference.chunk
        msg = ActionChunk(dimension_names=self.chunk_names, horizon=cfg.horizon, action_dim=cfg.action_dim,
                          actions=chunk.actions.astype(np.float32).ravel().tolist(),
                          initial_noise=chunk.noise.astype(np.float32).ravel().tolist(),
                          noise_steered=chunk.steered, step_period=self.dt,
                          policy_version=chunk.version, policy_sha256=chunk.sha256,
                          episode_id=snap.episode_id)
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(snap.t_obs), int((snap.t_obs % 1) * 1e9)
        self.pub_chunk.publish(msg)
        self.pub_cmd.publish(self._trajectory(command))

    def _trajectory(self, command: Command) -> JointTrajectory:
        traj = JointTrajectory(joint_names=self.names)
        acc = command.accelerations
        for i, t in enumerate(command.times):
            point = JointTrajectoryPoint(positions=command.positions[i].tolist(),
                                         velocities=command.velocities[i].tolist(),
                                         time_from_start=duration_msg(t))
            if acc is not None:
                point.accelerations = acc[i].tolist()
            traj.points.append(point)
        return traj

    def hold(self, reason: str) -> int:
        """Log why, and stop smoothly where the current plan is (once per failure streak);
        returns the number of commands published (0 or 1)."""
        if self.closing:
            return 0
        if reason != self.last_reason:
            self.get_logger().warn(f"holding: {reason}")
            self.last_reason = reason
        with self.lock:
            if self.holding:
                return 0
            self.holding = True
            command = self.controller.hold(self.joints.stamp)
        if command is None:         # nothing was commanded: the driver holds by itself
            return 0
        self.pub_cmd.publish(self._trajectory(command))
        return 1

    # ---------------------------------------------------------------- checkpoints
    def on_checkpoint(self, msg: CheckpointInfo) -> None:
        if msg.status == CheckpointInfo.STATUS_ANNOUNCED:
            self.load_pool.submit(self._load, msg)

    def _load(self, msg: CheckpointInfo) -> None:
        reply = CheckpointInfo(path=msg.path, version=msg.version, sha256=msg.sha256,
                               config_name=msg.config_name)
        try:
            if msg.version <= self.policy.version:
                raise CheckpointError(f"version {msg.version} is not newer than the running "
                                      f"version {self.policy.version}")
            meta = self.policy.swap(msg.path, msg.sha256 or None, expected_version=msg.version,
                                    newer=True)
            reply.status, reply.version = CheckpointInfo.STATUS_LOADED, meta.version
            reply.message = f"loaded version {meta.version}"
            self.get_logger().info(f"checkpoint {msg.path}: version {meta.version} loaded")
            self._say_steering()
        except (CheckpointError, OSError, ValueError) as e:
            reply.status, reply.message = CheckpointInfo.STATUS_REFUSED, str(e)
            self.get_logger().error(f"checkpoint refused, keeping version {self.policy.version}: {e}")
        reply.header.stamp = self.get_clock().now().to_msg()
        self.pub_status.publish(reply)

    def _say_steering(self) -> None:
        if self.cfg.controller.steer and not self.policy.steerable:
            self.get_logger().info(
                f"version {self.policy.version} has no online-trained noise predictor: acting "
                "with epsilon ~ N(0, I) (warm-up) until a steerable checkpoint is loaded")

    def destroy_node(self) -> None:
        self.closing = True
        # an inference in flight finishes on its own thread; it publishes nothing once closing
        self.infer_pool.shutdown(wait=False, cancel_futures=True)
        self.load_pool.shutdown(wait=False, cancel_futures=True)
        super().destroy_node()


def main(argv: list[str] | None = None) -> None:
    run_node(PolicyNode, argv)


if __name__ == "__main__":
    main(sys.argv)
