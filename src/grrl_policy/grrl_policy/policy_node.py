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
to an inference thread, so the executor never waits on the model. The snapshot must be
complete, fresh (``max_staleness`` wall seconds) and synchronised (camera or task-state stamps
within ``sync_slop`` of the joint state; the task state must be of the episode's scene);
otherwise, and on any model or optimizer failure, the node logs the reason and commands a stop
(the robot holds). Checkpoints are loaded on their own
thread, verified (sha256, config, shapes) and swapped atomically; a refused one is reported.

With ``steer`` the initial noise is the noise predictor's ε (online RL), plus Gaussian
exploration of std ``steer_noise_std`` around it, for checkpoints whose predictor was trained
online (``extra.steerable``); an offline checkpoint is acted with ε ~ N(0, I) even then (the
paper's warm-up rollouts of the offline policy), until the trainer's first checkpoint is loaded.
The chunk message carries the noise used and whether it was steered.
"""
from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from builtin_interfaces.msg import Duration
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from bytemini_driver import description as desc
from bytemini_driver.image_codec import ImageError, decode_raw
from bytemini_driver.node_main import NUMBER, run_node
from bytemini_driver.sim_state import state_from_task_state
from grrl_interfaces.msg import ActionChunk, CheckpointInfo, EpisodeEvent, TaskState

from .checkpoint import CheckpointError
from .chunk_executor import ChunkExecutor, ChunkExecutorError, ExecutorConfig, joint_limits
from .policy_runtime import CAMERAS, ObservationError, Policy, PolicyOutputError, build_observation
from .task_space import action_codec, check_executable, task_names

COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                     reliability=ReliabilityPolicy.RELIABLE)


def stamp_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def duration(t: float) -> Duration:
    ns = max(int(round(t * 1e9)), 0)
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


@dataclass
class Latest:
    """A message's payload, its header time and when it arrived (monotonic)."""

    value: object = None
    stamp: float = float("nan")
    arrived: float = float("-inf")
    error: str = ""


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


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("grrl_policy")
        p = self.declare_parameter
        p("checkpoint", "")                  # safetensors path; empty: a freshly initialised model
        p("preset", "tiny")                  # model preset for a fresh model
        p("seed", 0)                         # init seed of a fresh model, and of the sampling noise
        p("device", "cpu")
        p("threads", 1)                      # torch CPU threads
        p("steer", False)                    # initial noise from the noise predictor (online RL)
        p("steer_noise_std", 0.0, NUMBER)    # with steer: exploration noise around the steered ε
        p("flow_steps", 0)                   # 0: the model's own setting
        p("step_period", 0.1, NUMBER)        # s between chunk steps (the demonstrations' rate)
        p("execute_steps", 8)                # m: receding horizon
        p("temporal_ensembling", False)
        p("ensemble_decay", 0.1, NUMBER)
        p("max_staleness", 0.5, NUMBER)      # wall seconds an input may be old
        p("sync_slop", 0.15, NUMBER)         # s between camera stamps and the joint state stamp
        p("acceleration_limit", 4.0, NUMBER)  # x velocity limit, per second
        p("jerk_limit", 40.0, NUMBER)        # x velocity limit, per second^2
        p("velocity_scale", 0.8, NUMBER)     # fraction of the URDF velocity limits planned with
        g = lambda n: self.get_parameter(n).value   # noqa: E731
        torch.set_num_threads(int(g("threads")))
        torch.manual_seed(int(g("seed")))
        self.steer, self.flow_steps = bool(g("steer")), int(g("flow_steps")) or None
        self.explore_std = float(g("steer_noise_std"))
        if self.explore_std < 0:
            raise ValueError(f"steer_noise_std must be >= 0, got {self.explore_std}")
        self.rng = np.random.default_rng(int(g("seed")))
        self.dt, self.m = float(g("step_period")), int(g("execute_steps"))
        self.max_staleness, self.sync_slop = float(g("max_staleness")), float(g("sync_slop"))
        ckpt = str(g("checkpoint"))
        self.policy = Policy.load(ckpt, device=str(g("device"))) if ckpt else \
            Policy.fresh(str(g("preset")), int(g("seed")), str(g("device")))
        cfg = self.policy.config
        check_executable(cfg.action_space, cfg.action_dim, cfg.proprio_dim, "this node")
        self.names = desc.actuated_joint_names()
        # joint states -> the model's proprioception, chunks -> joint targets (IK for 'task')
        self.codec = action_codec(cfg.action_space, self.dt)
        self.chunk_names = task_names() if cfg.action_space == "task" else self.names
        self.limits = joint_limits(float(g("velocity_scale")), float(g("acceleration_limit")),
                                   float(g("jerk_limit")))
        self.executor_cfg = ExecutorConfig(dt=self.dt, execute_steps=self.m,
                                           temporal_ensembling=bool(g("temporal_ensembling")),
                                           ensemble_decay=float(g("ensemble_decay")))
        self.chunks = ChunkExecutor(self.limits, self.executor_cfg)
        self.lock = threading.Lock()
        self.state_obs = cfg.backbone == "tiny" and cfg.tiny.observation == "state"
        self.images = {} if self.state_obs else {c: Latest() for c in CAMERAS}
        self.task = Latest()
        self.joints = Latest()
        self.episode: EpisodeEvent | None = None
        self.next_plan = float("-inf")        # sim time the next re-plan is due
        self.busy = False
        self.holding = False
        self.last_reason = ""
        self.closing = False
        self.hold_target: np.ndarray | None = None   # the last stop commanded (see _run)
        self.infer_pool = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.load_pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
        self.pub_cmd = self.create_publisher(JointTrajectory, "bytemini/command/joint_trajectory", COMMAND_QOS)
        self.pub_chunk = self.create_publisher(ActionChunk, "grrl/action_chunk", 10)
        self.pub_status = self.create_publisher(CheckpointInfo, "grrl/checkpoint_status", LATCHED)
        if self.state_obs:
            self.create_subscription(TaskState, "bytemini/sim/task_state", self.on_task, 10)
        else:
            for cam in CAMERAS:
                self.create_subscription(Image, f"bytemini/camera/{cam}/image_raw",
                                         lambda msg, c=cam: self.on_image(c, msg), qos_profile_sensor_data)
        self.create_subscription(JointState, "bytemini/joint_states", self.on_joints, 10)
        self.create_subscription(EpisodeEvent, "grrl/episode", self.on_event, LATCHED)
        self.create_subscription(CheckpointInfo, "grrl/checkpoint", self.on_checkpoint, LATCHED)
        self.get_logger().info(
            f"policy {cfg.name} version {self.policy.version} ready "
            f"({'checkpoint ' + ckpt if ckpt else 'freshly initialised'}; "
            f"observes {'the simulator state' if self.state_obs else 'the cameras'}; "
            f"steer={self.steer}{f' (exploration std {self.explore_std})' if self.steer else ''}, "
            f"k={cfg.horizon}, m={self.m}, dt={self.dt})")
        self._say_steering()

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
        entry = Latest(value=msg, arrived=time.monotonic(), stamp=stamp_s(msg.header.stamp))
        with self.lock:
            self.task = entry

    def on_event(self, msg: EpisodeEvent) -> None:
        if msg.event == EpisodeEvent.EVENT_STARTED:
            with self.lock:
                self.episode, self.next_plan, self.holding = msg, float("-inf"), False
                self.chunks.reset()
                self.hold_target = None
                self.codec.reset()       # IK posture: the joints at the episode's first chunk
            self.get_logger().info(f"episode {msg.episode_id}: acting on '{msg.instruction}'")
        elif msg.event in (EpisodeEvent.EVENT_FINISHED, EpisodeEvent.EVENT_ABORTED,
                           EpisodeEvent.EVENT_INVALID):
            with self.lock:
                active = self.episode is not None and self.episode.episode_id == msg.episode_id
                if active:
                    self.episode = None
            if active:
                self.hold("episode ended")

    def on_joints(self, msg: JointState) -> None:
        now = time.monotonic()
        entry = Latest(arrived=now, stamp=stamp_s(msg.header.stamp))
        order = {n: i for i, n in enumerate(msg.name)}
        if not all(n in order for n in self.names) or len(msg.position) != len(msg.name):
            entry.error = "joint state lacks joints " + \
                ", ".join(n for n in self.names if n not in order)[:200]
        else:
            entry.value = np.array([msg.position[order[n]] for n in self.names], float)
        with self.lock:
            self.joints = entry
            if self.episode is None or self.busy or entry.stamp < self.next_plan:
                return
            self.busy = True
            snap = self._snapshot(now)
        self.infer_pool.submit(self._run, snap)

    def _snapshot(self, now: float) -> Snapshot:
        """Called with the lock held: everything the inference needs, with what is wrong."""
        j = self.joints
        errors = [j.error] if j.error else []
        images = {}
        for cam, e in self.images.items():
            if e.error:
                errors.append(e.error)
            elif e.value is None:
                errors.append(f"no image from camera {cam} yet")
            elif now - e.arrived > self.max_staleness:
                errors.append(f"camera {cam} is stale ({now - e.arrived:.2f} s old)")
            elif abs(e.stamp - j.stamp) > self.sync_slop + self.dt:
                errors.append(f"camera {cam} is out of sync with the joint state "
                              f"({e.stamp - j.stamp:+.3f} s)")
            else:
                images[cam] = e.value
        task = None
        if self.state_obs:
            t = self.task
            if t.value is None:
                errors.append("no task state from the simulator yet")
            elif now - t.arrived > self.max_staleness:
                errors.append(f"the task state is stale ({now - t.arrived:.2f} s old)")
            elif abs(t.stamp - j.stamp) > self.sync_slop + self.dt:
                errors.append(f"the task state is out of sync with the joint state "
                              f"({t.stamp - j.stamp:+.3f} s)")
            elif t.value.seed != self.episode.seed:
                errors.append(f"the task state is of another scene (seed {t.value.seed}, the "
                              f"episode's {self.episode.seed})")
            else:
                task = t.value
        return Snapshot(images, j.value, j.stamp, self.episode.instruction, self.episode.episode_id,
                        errors, task)

    # ---------------------------------------------------------------- inference thread
    def _run(self, snap: Snapshot) -> None:
        if self.closing:
            return
        try:
            if snap.errors:
                raise ObservationError("; ".join(snap.errors))
            state = state_from_task_state(snap.task) if snap.task is not None else None
            obs, proprio = build_observation(self.policy.config, snap.instruction,
                                             self.codec.proprio(snap.q), snap.images, state=state)
            cfg = self.policy.config
            steer = self.steer and self.policy.steerable
            explore = self.explore_std * self.rng.standard_normal(
                (cfg.horizon, cfg.action_dim)).astype(np.float32) \
                if steer and self.explore_std > 0 else None
            chunk = self.policy.infer(obs, proprio, steer=steer, steps=self.flow_steps,
                                      explore=explore)
            joints = self.codec.joints(chunk.actions, snap.q)
            with self.lock:
                if self.episode is None or self.episode.episode_id != snap.episode_id:
                    return                                   # the episode ended meanwhile
                t_now = max(self.joints.stamp, snap.t_obs)
                # after a stop the driver tracks the stop target, not the measured joints (which
                # lag it): splice there, or the driver refuses the first point as a jump
                state = self.chunks.state_at(t_now, measured=snap.q if self.hold_target is None
                                             else self.hold_target)
                plan = self.chunks.plan(joints, snap.t_obs, state)
                self.next_plan = plan.execute_until - 0.5 * self.dt
                self.holding, self.hold_target = False, None
            self._publish(snap, chunk, plan, t_now)
            if self.last_reason:
                self.get_logger().info(f"acting again (was holding: {self.last_reason})")
                self.last_reason = ""
        except (ObservationError, PolicyOutputError, ChunkExecutorError, ValueError) as e:
            self.hold(str(e))
        except Exception as e:  # noqa: BLE001 - the command path must never die: hold
            self.hold(f"inference failed: {e!r}")
        finally:
            with self.lock:
                self.busy = False

    def _publish(self, snap: Snapshot, chunk, plan, t_now: float) -> None:
        cfg = self.policy.config
        msg = ActionChunk(dimension_names=self.chunk_names, horizon=cfg.horizon, action_dim=cfg.action_dim,
                          actions=chunk.actions.astype(np.float32).ravel().tolist(),
                          initial_noise=chunk.noise.astype(np.float32).ravel().tolist(),
                          noise_steered=chunk.steered, step_period=self.dt,
                          policy_version=chunk.version, policy_sha256=chunk.sha256,
                          episode_id=snap.episode_id)
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(snap.t_obs), int((snap.t_obs % 1) * 1e9)
        self.pub_chunk.publish(msg)
        traj = JointTrajectory(joint_names=self.names)
        for t, q, v, a in zip(plan.times, plan.positions, plan.velocities, plan.accelerations):
            traj.points.append(JointTrajectoryPoint(
                positions=np.clip(q, self.limits.lower, self.limits.upper).tolist(),
                velocities=np.clip(v, -self.limits.velocity, self.limits.velocity).tolist(),
                accelerations=a.tolist(), time_from_start=duration(t - t_now)))
        self.pub_cmd.publish(traj)

    def hold(self, reason: str) -> None:
        """Log why, and stop smoothly where the current plan is (once per failure streak)."""
        if self.closing:
            return
        if reason != self.last_reason:
            self.get_logger().warn(f"holding: {reason}")
            self.last_reason = reason
        with self.lock:
            if self.holding:
                return
            self.holding = True
            plan_exists = self.chunks.current_plan is not None
            t = self.joints.stamp
            state = None
            if plan_exists and np.isfinite(t):
                try:
                    state = self.chunks.state_at(t)
                except (ChunkExecutorError, ValueError):
                    state = None
            self.chunks.reset()
            self.next_plan = float("-inf") if self.episode is not None else self.next_plan
        if state is None:
            return        # nothing was commanded, or no time base: the driver holds by itself
        # stop within the acceleration limit, at the point the current velocity carries to
        t_stop = max(self.dt, 1.5 * float(np.max(np.abs(state.velocity) / self.limits.acceleration)))
        target = np.clip(state.position + 0.5 * t_stop * state.velocity, self.limits.lower, self.limits.upper)
        with self.lock:
            self.hold_target = target
        self.pub_cmd.publish(JointTrajectory(joint_names=self.names, points=[JointTrajectoryPoint(
            positions=target.tolist(), velocities=[0.0] * len(self.names),
            time_from_start=duration(t_stop))]))

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
            meta = self.policy.swap(msg.path, msg.sha256 or None)
            if meta.version != msg.version:
                self.get_logger().warn(f"{msg.path}: announced as version {msg.version}, the file "
                                       f"says {meta.version}; using the file's")
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
        if self.steer and not self.policy.steerable:
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
