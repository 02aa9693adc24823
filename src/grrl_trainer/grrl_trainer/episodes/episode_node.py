"""The reward/episode node: serves the ``RunEpisode`` action and records every episode.

A goal resets the scene through the driver's ``bytemini/reset_scene`` service, publishes the
instruction (latched) on ``grrl/instruction``, follows the stages from the simulator's
``bytemini/sim/task_state``, sends feedback, enforces the time limit, honours cancel, and
returns the result with the sparse reward (eq. 1). Events go to ``grrl/episode``; the episode
(images, joint states, commands, action chunks, events, task states, live progress) is written
to an MCAP file in rosbag2 layout. When a progress node publishes ``grrl/progress``, the
feedback's ``progress`` is the running episode's newest rho (else -1), and a plot of rho over
the episode is saved in the record's directory (``progress.png``).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rclpy
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from builtin_interfaces.msg import Time as TimeMsg
from std_msgs.msg import Bool, String

from grrl_tools.config_cli import declare_parameters, from_parameters
from grrl_tools.lockstep import SCENE_START, STEP_ACK_TOPIC, TASK_STATE_QOS
from grrl_tools.node_main import HOLD_QOS, HOLD_TOPIC, READY_QOS, READY_TOPIC, run_node
from grrl_tools.stamps import header_stamp_ns, stamp_ns, stamp_s, time_msg
from grrl_interfaces.action import RunEpisode
from grrl_interfaces.msg import EpisodeEvent, TaskProgress, TaskState
from grrl_interfaces.srv import LabelEpisode, ResetScene
from grrl_trainer.episodes.episode import (CANCELLED, INVALID, STAGE_NAMES, SUCCESS, EpisodeMonitor,
                                  new_episode_id)
from grrl_trainer.episodes.recorder import EpisodeRecorder, typestore_with_custom_types

LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                     reliability=ReliabilityPolicy.RELIABLE)
#: episode events: reliable, with the last few kept for late joiners
EVENTS_QOS = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                        reliability=ReliabilityPolicy.RELIABLE)

#: relative topic -> (ROS type name, QoS) recorded for every episode
RECORD_TOPICS = {
    "bytemini/camera/head/image_raw": "sensor_msgs/msg/Image",
    "bytemini/camera/left_wrist/image_raw": "sensor_msgs/msg/Image",
    "bytemini/camera/right_wrist/image_raw": "sensor_msgs/msg/Image",
    "bytemini/joint_states": "sensor_msgs/msg/JointState",
    "bytemini/left/tcp_pose": "geometry_msgs/msg/PoseStamped",
    "bytemini/right/tcp_pose": "geometry_msgs/msg/PoseStamped",
    "bytemini/command/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    "bytemini/command/left/tcp_pose": "geometry_msgs/msg/PoseStamped",
    "bytemini/command/right/tcp_pose": "geometry_msgs/msg/PoseStamped",
    "bytemini/command/left/gripper": "std_msgs/msg/Float64",
    "bytemini/command/right/gripper": "std_msgs/msg/Float64",
    "bytemini/sim/task_state": "grrl_interfaces/msg/TaskState",
    "grrl/action_chunk": "grrl_interfaces/msg/ActionChunk",
    "grrl/episode": "grrl_interfaces/msg/EpisodeEvent",
    "grrl/instruction": "std_msgs/msg/String",
    "grrl/progress": "grrl_interfaces/msg/TaskProgress",
}
SCENE_START_TOPICS = ("bytemini/joint_states", "bytemini/sim/task_state")
"""the scene's first observation (stamp SCENE_START) comes with the reset, before the record
opens; a policy plans its first chunk on it, so it is kept and written first into the record
(an online episode needs the observation of every decision)"""
PROGRESS_PLOT = "progress.png"
"""the plot of the live task progress saved in an episode's record directory"""


def _import_type(name: str):
    pkg, _, cls = name.split("/")
    module = __import__(f"{pkg}.msg", fromlist=[cls])
    return getattr(module, cls)


@dataclass
class EpisodeNodeConfig:
    """The episode node's parameters."""
    time_limit: float = 60.0
    """simulated seconds per episode (a goal's own time limit wins when > 0)"""
    record: bool = True
    """record every episode to MCAP"""
    record_dir: str = ""
    """where records go ('' = $ROS_HOME/episodes, ~/.ros/episodes by default)"""
    record_images: bool = True
    """record camera images too (off: state-only records, smaller files)"""
    reset_timeout: float = 10.0
    """wall seconds to wait for the driver's scene reset"""
    feedback_rate: float = 2.0
    """RunEpisode feedback rate (Hz)"""
    state_timeout: float = 10.0
    """wall seconds without a task state before the episode is invalid (more than the driver's
    lock-step wait for a slow controller, lockstep_timeout = 5 s)"""
    start_state_timeout: float = 40.0
    """the same for a scene held at t = 0 (lock-step, start_paused) until its first state after
    the reset: the driver holds it until the controller acts, up to its start_timeout (30 s),
    and a controller's first inference can take seconds on a busy machine"""
    match_timeout: float = 2.0
    """wall seconds an episode's start waits for the recorded topics' publishers to match"""
    controller_timeout: float = 300.0
    """wall seconds a goal waits for a controller to announce on grrl/controller_ready that it
    can act before the episode (and its clock) starts, else the episode is invalid; 0: do not
    wait (a teleoperator, or nobody, acts)"""
    ack_grace: float = 10.0
    """wall seconds an episode's start looks for its ready controller's lock-step answers
    (bytemini/sim/step_ack) before resetting without holding the scene at t = 0 (once per
    controller: one without them is remembered); on a loaded CI machine their publisher was
    discovered 2.3 s after the announcement, the scene ran free and the episode differed"""
    end_state_timeout: float = 2.0
    """wall seconds an ended episode's record waits for the joint and task state stamped with
    the end (they can trail the state that ended it) before it closes"""
    hold_timeout: float = 0.0
    """wall seconds a goal waits while a trainer holds new episodes (grrl/hold_episodes: True
    during its critic warm-up) before the episode is invalid; 0: as long as it holds"""
    stage_source: str = "sim"
    """where stages come from: 'sim' (the simulator's task state) or 'operator' (labels)"""


class EpisodeNode(Node):
    def __init__(self) -> None:
        super().__init__("episode_node")
        declare_parameters(self, EpisodeNodeConfig())
        self.cfg = cfg = from_parameters(self, EpisodeNodeConfig())
        self.source = cfg.stage_source
        if self.source not in ("sim", "operator"):
            raise ValueError(f"stage_source must be 'sim' or 'operator', got {self.source!r}")
        self.labels = {"stage": 0, "success": False, "failed": False, "reason": ""}
        self.steps = 0
        self.current: tuple | None = None   # (monitor, goal, instruction) while running
        # topic -> (serialized message, receive time ns) of the scene's first observation
        self.scene_start: dict[str, tuple[bytes, int]] = {}
        self.scene_start_lock = threading.Lock()
        group = ReentrantCallbackGroup()
        # latched history: a controller that starts late still sees the episode's STARTED
        self.pub_event = self.create_publisher(EpisodeEvent, "grrl/episode", EVENTS_QOS)
        self.pub_instruction = self.create_publisher(String, "grrl/instruction", LATCHED)
        self.reset_client = self.create_client(ResetScene, "bytemini/reset_scene",
                                               callback_group=group)
        self.task: TaskState | None = None
        self.sim_stamp = None       # the newest task state's stamp: the simulator's time
        self.failure: TaskState | None = None
        self.changes: list[TaskState] = []
        """task states where the stage or success changed, in order: the loop samples the
        latest state, and a stage's time is the state where it changed, not a later one"""
        self.min_scene = 0
        self.task_wall = 0.0
        self.held_start = False
        self.task_lock = threading.Lock()
        self.create_subscription(TaskState, "bytemini/sim/task_state", self.on_task,
                                 TASK_STATE_QOS, callback_group=group)
        self.progress: list[tuple[float, float]] = []
        """(stamp, rho) of the running episode from grrl/progress (a progress node)"""
        self.progress_lock = threading.Lock()
        self.create_subscription(TaskProgress, "grrl/progress", self.on_progress, 50,
                                 callback_group=group)
        self.recorder: EpisodeRecorder | None = None
        self.recorded_until: dict[str, int] = {}
        """relative topic -> newest header stamp (ns) recorded of the scene-start topics"""
        self.typestore = typestore_with_custom_types()
        # Recording subscriptions live on a second node with its own single-threaded
        # executor: rclpy's multi-threaded executor cannot keep up with 50 Hz x 7 topics
        # plus images, and the action's execute loop must not compete with them. They exist
        # only during an episode (an idle node taking 250 messages/s used ~20% of a core), and
        # are created and destroyed on that executor's thread (a guard condition), never under
        # its feet. (global --ros-args would rename it to this node's name too: keep them away)
        self.rec_node = Node(f"{self.get_name()}_recorder", namespace=self.get_namespace(),
                             context=self.context, use_global_arguments=False)
        self.rec_subs: dict[str, object] = {}
        self.rec_want = False
        self.rec_applied = threading.Event()
        self.rec_switch = self.rec_node.create_guard_condition(self._apply_recording)
        self.ready_controllers: set[str] = set()
        self.free_controllers: set[str] = set()
        """ready controllers seen without lock-step answers"""
        self.create_subscription(String, READY_TOPIC, lambda m: self.ready_controllers.add(m.data),
                                 READY_QOS, callback_group=group)
        self.held = False
        """the newest word on grrl/hold_episodes"""
        self.create_subscription(Bool, HOLD_TOPIC, self.on_hold, HOLD_QOS, callback_group=group)
        self.create_service(LabelEpisode, "grrl/label_episode", self.on_label,
                            callback_group=group)
        self.busy = threading.Lock()
        self.server = ActionServer(self, RunEpisode, "grrl/run_episode", self.execute,
                                   goal_callback=self.on_goal, cancel_callback=self.on_cancel,
                                   callback_group=group)
        self.stopping = False
        self.rec_executor = SingleThreadedExecutor()
        self.rec_executor.add_node(self.rec_node)
        self.rec_thread = threading.Thread(target=self._spin_recorder, daemon=True,
                                           name="episode_recorder")
        self.rec_thread.start()
        self.get_logger().info("episode node ready")

    def _apply_recording(self) -> None:
        """(on the recorder's executor thread) make the recording subscriptions match rec_want"""
        if self.rec_want and not self.rec_subs:
            for topic, type_name in RECORD_TOPICS.items():
                if "image" in topic and not self.cfg.record_images:
                    continue
                qos = qos_profile_sensor_data if "image" in topic else (
                    LATCHED if topic == "grrl/instruction" else QoSProfile(depth=100))
                self.rec_subs[topic] = self.rec_node.create_subscription(
                    _import_type(type_name), topic, lambda data, t=topic: self.on_raw(t, data),
                    qos, raw=True)
        elif not self.rec_want and self.rec_subs:
            for sub in self.rec_subs.values():
                self.rec_node.destroy_subscription(sub)
            self.rec_subs = {}
        self.rec_applied.set()

    def _recording(self, on: bool) -> None:
        """Subscribe to (or leave) the recorded topics; on: wait until every topic that has
        publishers is matched to them, so that the episode's first messages are not lost."""
        self.rec_applied.clear()
        self.rec_want = on
        self.rec_switch.trigger()
        if not self.rec_applied.wait(5.0):
            self.get_logger().warn("the recorder's executor did not answer within 5 s")
            return
        if not on:
            return
        deadline = time.monotonic() + self.cfg.match_timeout
        while True:
            missing = [t for t, sub in list(self.rec_subs.items())
                       if sub.get_publisher_count() < self.rec_node.count_publishers(t)]
            if not missing:
                return
            if time.monotonic() > deadline or self.stopping:
                self.get_logger().warn(f"recording without all publishers matched after "
                                       f"{self.cfg.match_timeout} s: {missing}")
                return
            time.sleep(0.01)

    def _spin_recorder(self) -> None:
        try:
            self.rec_executor.spin()
        except ExternalShutdownException:
            pass

    def stop(self) -> None:
        """Before the context goes: end a running episode (aborted, "shutting down"), with its
        final event published and its record closed."""
        self.stopping = True
        if self.busy.acquire(timeout=2.0):
            self.busy.release()
        else:
            self.get_logger().warn("the running episode did not end within 2 s of the stop")

    def destroy_node(self) -> None:
        self.stopping = True
        self.rec_executor.shutdown(timeout_sec=1.0)
        self.rec_thread.join(timeout=1.0)
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None
        self.rec_node.destroy_node()
        super().destroy_node()

    # ------------------------------------------------------------------- inputs
    def on_task(self, msg: TaskState) -> None:
        with self.task_lock:
            if msg.scene_seq < self.min_scene:
                return  # still the previous scene (queued before our reset)
            prev = self.task
            if prev is None or msg.stage != prev.stage or msg.success != prev.success or \
                    msg.scene_seq != prev.scene_seq:
                self.changes.append(msg)
            self.task = msg
            self.sim_stamp = msg.header.stamp
            self.task_wall = time.monotonic()
            if msg.failed and self.failure is None:
                self.failure = msg  # latched: the loop samples only the latest state

    def on_label(self, req: LabelEpisode.Request, resp: LabelEpisode.Response
                 ) -> LabelEpisode.Response:
        cur = self.current
        resp.step = self.steps
        if cur is None:
            resp.accepted, resp.message = False, "no episode is running"
            return resp
        mon, goal, instruction = cur
        if req.action == LabelEpisode.Request.RETRY:
            # (an operator's stage label may not have reached the monitor's loop yet)
            stage = max(mon.stage, self.labels["stage"]) if self.source == "operator" \
                else mon.stage
            msg = EpisodeEvent(episode_id=mon.episode_id, event=EpisodeEvent.EVENT_RETRY,
                               stage=stage, stage_name=STAGE_NAMES[stage],
                               step=self.steps, seed=goal.seed, instruction=instruction,
                               message=req.note)
            msg.header.stamp = self._stamp()
            self.pub_event.publish(msg)
            resp.accepted, resp.message = True, f"retry keyframe at step {self.steps}"
            return resp
        if self.source != "operator":
            resp.accepted = False
            resp.message = "stages come from the simulator here (stage_source: sim)"
            return resp
        if req.action == LabelEpisode.Request.STAGE:
            if not 0 < req.stage < len(STAGE_NAMES):
                resp.accepted, resp.message = False, f"no stage {req.stage}"
                return resp
            self.labels["stage"] = max(self.labels["stage"], int(req.stage))
        elif req.action == LabelEpisode.Request.SUCCESS:
            self.labels.update(stage=len(STAGE_NAMES) - 1, success=True)
        elif req.action == LabelEpisode.Request.FAILURE:
            self.labels.update(failed=True, reason=req.note or "failure labelled by operator")
        else:
            resp.accepted, resp.message = False, f"unknown action {req.action}"
            return resp
        resp.accepted, resp.message = True, "labelled"
        return resp

    def on_raw(self, topic: str, data: bytes) -> None:
        if topic == "bytemini/joint_states":
            self.steps += 1
        rec = self.recorder
        if rec is None:
            if topic in SCENE_START_TOPICS:
                self._keep_scene_start(topic, data)
            return
        if "image" in topic and not self.cfg.record_images:
            return
        if topic in SCENE_START_TOPICS:
            stamp = header_stamp_ns(data)
            if stamp is not None:
                self.recorded_until[topic] = max(self.recorded_until.get(topic, -1), stamp)
        rec.write(self.resolve_topic_name(topic), data, time.time_ns())

    def _await_end_states(self, end_ns: int) -> None:
        """Wait (up to ``end_state_timeout``) until the record holds the joint and task state
        of the episode's end: they reach the recorder's executor after the task state that
        ended the episode reached this loop, and a record closed before them has no
        observation for its last decision (an online episode is then quarantined)."""
        deadline = time.monotonic() + self.cfg.end_state_timeout
        while any(self.recorded_until.get(t, -1) < end_ns for t in SCENE_START_TOPICS):
            if self.stopping or time.monotonic() > deadline:
                self.get_logger().warn(
                    f"the record closes without the joint and task state of the episode's end "
                    f"(t = {end_ns * 1e-9:.3f} s; recorded up to "
                    f"{ {t: v * 1e-9 for t, v in self.recorded_until.items()} })")
                return
            time.sleep(0.005)

    def _keep_scene_start(self, topic: str, data: bytes) -> None:
        """Between records: keep the newest message of ``topic`` stamped SCENE_START."""
        from rclpy.serialization import deserialize_message
        try:
            msg = deserialize_message(data, _import_type(RECORD_TOPICS[topic]))
        except Exception:  # noqa: BLE001 - a malformed message is not the scene's start
            return
        if stamp_ns(msg.header.stamp) == SCENE_START:
            with self.scene_start_lock:
                if self.recorder is not None:       # the record opened meanwhile
                    self.recorder.write(self.resolve_topic_name(topic), data, time.time_ns())
                else:
                    self.scene_start[topic] = (bytes(data), time.time_ns())

    def _open_record(self, path: Path) -> None:
        """Open the episode's record, the scene's first observation (if it came) first."""
        topics = {self.resolve_topic_name(t): ty for t, ty in RECORD_TOPICS.items()}
        rec = EpisodeRecorder(path, topics, self.typestore)
        with self.scene_start_lock:
            kept, self.scene_start = self.scene_start, {}
            self.recorded_until = {}
            for topic, (data, t_ns) in kept.items():
                rec.write(self.resolve_topic_name(topic), data, t_ns)
            self.recorder = rec      # (under the lock: nothing kept is written twice or lost)

    def on_goal(self, goal: RunEpisode.Goal) -> GoalResponse:
        if self.busy.locked():
            self.get_logger().warn("goal rejected: an episode is already running")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def on_progress(self, msg: TaskProgress) -> None:
        cur = self.current
        if cur is None or msg.episode_id != cur[0].episode_id or not np.isfinite(msg.progress):
            return
        with self.progress_lock:
            self.progress.append((stamp_s(msg.header.stamp), float(msg.progress)))

    def latest_progress(self) -> float:
        """rho of the running episode's newest chunk, -1 if none came."""
        with self.progress_lock:
            return self.progress[-1][1] if self.progress else -1.0

    def on_cancel(self, handle) -> CancelResponse:
        return CancelResponse.ACCEPT

    # ------------------------------------------------------------------ episode
    def _event(self, mon: EpisodeMonitor, event: int, goal: RunEpisode.Goal, seed: int,
               instruction: str, record: str = "", stamp=None) -> None:
        msg = EpisodeEvent(episode_id=mon.episode_id, event=event, stage=mon.stage,
                           stage_name=STAGE_NAMES[mon.stage], success=mon.success,
                           reward=mon.reward, seed=seed, instruction=instruction,
                           record_path=record, message=mon.message)
        msg.header.stamp = stamp if stamp is not None else self._stamp()
        self.pub_event.publish(msg)

    def _stamp(self):
        """Events carry the time every other message of the episode carries: the simulator's
        (the newest task state's stamp of this scene; a scene's clock starts at 0 at its reset)
        when it runs one, else this node's clock (a real robot, operator-labelled stages)."""
        if self.source != "sim":
            return self.get_clock().now().to_msg()
        with self.task_lock:
            stamp = self.sim_stamp
        return stamp if stamp is not None else TimeMsg()

    def on_hold(self, msg: Bool) -> None:
        if bool(msg.data) != self.held:
            self.get_logger().info("new episodes held (grrl/hold_episodes)" if msg.data else
                                   "new episodes released (grrl/hold_episodes)")
        self.held = bool(msg.data)

    def _wait_for_release(self, handle) -> str:
        """'' once no live publisher holds new episodes on grrl/hold_episodes, else why not.
        The online trainer holds them during its critic warm-up updates, so that the robots
        do not act on with the offline version meanwhile (the in-process recipe's warm-up)."""
        topic = self.resolve_topic_name(HOLD_TOPIC)
        wait = self.cfg.hold_timeout
        deadline = time.monotonic() + wait
        if self.held and self.count_publishers(topic):
            self.get_logger().info(f"seed {handle.request.seed}: waits while new episodes are "
                                   f"held on {topic}")
        while self.held and self.count_publishers(topic):
            if self.stopping or handle.is_cancel_requested:
                return "cancelled while new episodes were held"
            if wait > 0 and time.monotonic() > deadline:
                return f"new episodes were held on {topic} for more than {wait:.0f} s"
            time.sleep(0.05)
        return ""

    def _wait_for_controller(self) -> str:
        """'' once a live controller has announced that it can act, else why not."""
        wait = self.cfg.controller_timeout
        if wait <= 0:
            return ""
        topic = self.resolve_topic_name(READY_TOPIC)
        deadline = time.monotonic() + wait
        while not (self.ready_controllers and self.count_publishers(topic)):
            if self.stopping or time.monotonic() > deadline:
                return (f"no controller announced on {topic} that it can act within {wait:.0f} s "
                        "(a controller publishes its name there once loaded; the episode node's "
                        "controller_timeout:=0 does not wait)")
            time.sleep(0.02)
        return ""

    def _answers_steps(self) -> bool:
        """Whether a ready controller answers the simulator's observations (publishes on the
        lock-step topic); its answers' publisher may be discovered a little after its ready
        announcement, so it is looked for up to ``ack_grace`` s."""
        topic = self.resolve_topic_name(STEP_ACK_TOPIC)
        deadline = time.monotonic() + self.cfg.ack_grace
        while True:
            answering = {(i.node_namespace.rstrip("/") + "/" + i.node_name)
                         for i in self.get_publishers_info_by_topic(topic)}
            ready = set(self.ready_controllers)
            if ready & answering:
                return True
            if ready <= self.free_controllers or self.stopping or time.monotonic() > deadline:
                self.free_controllers |= ready
                return False
            time.sleep(0.02)

    def _reset(self, goal: RunEpisode.Goal) -> ResetScene.Response | str:
        not_ready = self._wait_for_controller()
        if not_ready:
            return not_ready
        hold = self._answers_steps()
        self.held_start = hold
        timeout = self.cfg.reset_timeout
        if not self.reset_client.wait_for_service(timeout_sec=timeout):
            return "the driver's reset_scene service is not available"
        # start_paused: a lock-step simulator holds the scene at t = 0 until the controller
        # acts, even before it has discovered that controller (only asked for one that answers)
        request = ResetScene.Request(seed=goal.seed, mirrored=goal.mirrored,
                                     options=list(goal.options), start_paused=hold)
        deadline = time.monotonic() + timeout
        # Right after discovery a response can be lost (the server's reply writer may not
        # have matched our reader yet); a reset is idempotent, so ask again.
        while time.monotonic() < deadline:
            future = self.reset_client.call_async(request)
            attempt_end = min(deadline, time.monotonic() + 2.0)
            while not future.done() and time.monotonic() < attempt_end:
                time.sleep(0.01)
            if future.done():
                resp = future.result()
                if resp is None or not resp.success:
                    return f"reset failed: {resp.message if resp else 'no response'}"
                return resp
            self.reset_client.remove_pending_request(future)
            self.get_logger().warn("reset_scene did not answer in 2 s, asking again")
        return "reset_scene timed out"

    def _advance(self, mon: EpisodeMonitor, now: float, stage: int, success: bool,
                 failed: bool, reason: str, goal: RunEpisode.Goal, instruction: str,
                 stamp=None) -> None:
        for new in mon.update(now, stage, success, failed, reason):
            self._event(mon, EpisodeEvent.EVENT_STAGE, goal, goal.seed, instruction,
                        stamp=stamp)
            self.get_logger().info(f"{mon.episode_id}: stage '{STAGE_NAMES[new]}'")

    def execute(self, handle) -> RunEpisode.Result:
        with self.busy:
            try:
                self._recording(True)
                return self._run(handle)
            except Exception as exc:  # noqa: BLE001 - never leave a half-open episode
                self.get_logger().error(f"episode failed: {exc!r}")
                if handle.is_active:
                    handle.abort()
                return RunEpisode.Result(message=f"invalid: internal error {exc!r}")
            finally:
                self.current = None
                if self.recorder is not None:
                    rec, self.recorder = self.recorder, None
                    rec.close()
                self._recording(False)

    def _run(self, handle) -> RunEpisode.Result:
        goal: RunEpisode.Goal = handle.request
        limit = goal.time_limit if goal.time_limit > 0 else self.cfg.time_limit
        mon = EpisodeMonitor(new_episode_id(goal.seed), limit)
        result = RunEpisode.Result(episode_id=mon.episode_id)
        with self.task_lock:
            prev_scene = self.task.scene_seq if self.task is not None else -1
        with self.scene_start_lock:
            self.scene_start = {}     # a previous scene's start is not this one's
        reset = self._wait_for_release(handle) or self._reset(goal)
        if isinstance(reset, str):
            self.get_logger().error(reset)
            mon.finish(INVALID, reset)
            self._event(mon, EpisodeEvent.EVENT_INVALID, goal, goal.seed, goal.instruction)
            handle.abort()
            result.message = reset
            return result
        instruction = goal.instruction or reset.instruction
        with self.task_lock:
            self.min_scene = prev_scene + 1   # only states of the new scene count
            self.task = self.sim_stamp = None
            self.changes = []
            if self.failure is not None and self.failure.scene_seq < self.min_scene:
                self.failure = None           # (a fault of this scene may already be here)
        record_path = ""
        if self.cfg.record:
            base = self.cfg.record_dir or os.path.join(
                os.environ.get("ROS_HOME", os.path.expanduser("~/.ros")), "episodes")
            record_path = str(Path(base) / mon.episode_id)
            self._open_record(Path(record_path))
        self.labels = {"stage": 0, "success": False, "failed": False, "reason": ""}
        self.steps = 0
        with self.progress_lock:
            self.progress = []
        self.current = (mon, goal, instruction)
        self.pub_instruction.publish(String(data=instruction))
        self._event(mon, EpisodeEvent.EVENT_STARTED, goal, goal.seed, instruction, record_path)
        self.get_logger().info(f"{mon.episode_id}: {instruction} (limit {limit:.0f} s)")
        period = 1.0 / self.cfg.feedback_rate
        next_feedback = 0.0
        # the scene this episode runs in: from the reset's answer when the driver tells it,
        # else the first state seen (then a reset that lands before it is caught by the seed)
        params = {kv.key: kv.value for kv in reset.scene_parameters}
        seen_scene: int | None = int(params["scene_seq"]) if "scene_seq" in params else None
        self.task_wall = time.monotonic()
        while not mon.done:
            if handle.is_cancel_requested:
                mon.finish(CANCELLED, "cancelled")
                break
            if self.stopping or not rclpy.ok():
                mon.finish(CANCELLED, "shutting down")
                break
            if self.source == "operator":
                lab = self.labels
                now = self.get_clock().now().nanoseconds * 1e-9
                self._advance(mon, now, lab["stage"], lab["success"], lab["failed"],
                              lab["reason"], goal, instruction)
                st = None
            else:
                with self.task_lock:
                    st = self.failure or self.task
                    changes, self.changes = self.changes, []
                    silent = time.monotonic() - self.task_wall
                    # still at t = 0 (its state can come before or after our reset's answer)
                    held = self.held_start and (
                        self.task is None or stamp_s(self.task.header.stamp) <= 0.0)
                if silent > (self.cfg.start_state_timeout if held else self.cfg.state_timeout):
                    mon.finish(INVALID, f"no task state from the driver for {silent:.0f} s")
                    break
                for ch in changes:            # each at its own (simulated) time, in order
                    if mon.done or (seen_scene is not None and ch.scene_seq != seen_scene):
                        break
                    seen_scene = ch.scene_seq if seen_scene is None else seen_scene
                    if ch.seed == goal.seed:
                        self._advance(mon, stamp_s(ch.header.stamp), ch.stage, ch.success,
                                      ch.failed, ch.failure_reason, goal, instruction,
                                      ch.header.stamp)
                if mon.done:
                    break
            if st is not None:
                if seen_scene is None:
                    seen_scene = st.scene_seq
                if (st.scene_seq != seen_scene or st.seed != goal.seed) and not st.failed:
                    mon.finish(CANCELLED, "the scene was reset during the episode")
                    break
                now = stamp_s(st.header.stamp)
                self._advance(mon, now, st.stage, st.success, st.failed, st.failure_reason,
                              goal, instruction)
            if mon.start_time is not None and mon.elapsed >= next_feedback:
                next_feedback = mon.elapsed + period
                handle.publish_feedback(RunEpisode.Feedback(
                    elapsed=mon.elapsed, stage=mon.stage, stage_name=STAGE_NAMES[mon.stage],
                    progress=self.latest_progress()))
            time.sleep(0.02)
        event = {SUCCESS: EpisodeEvent.EVENT_FINISHED, CANCELLED: EpisodeEvent.EVENT_ABORTED,
                 INVALID: EpisodeEvent.EVENT_INVALID}.get(mon.status, EpisodeEvent.EVENT_FINISHED)
        if mon.status == "timeout":
            event = EpisodeEvent.EVENT_ABORTED
        self.current = None
        counts = {}
        rec = self.recorder
        # in simulated time the end is when the episode ended, not the newer state this loop
        # noticed it in (under load the scene runs on meanwhile)
        end = time_msg(mon.end_time) if self.source == "sim" and \
            mon.end_time is not None else None
        if rec is not None:
            if end is not None:
                self._await_end_states(stamp_ns(end))
            events_topic = self.resolve_topic_name("grrl/episode")
            before = rec.counts[events_topic]
            self._event(mon, event, goal, goal.seed, instruction, record_path, stamp=end)
            # let the final event reach the record before closing it
            deadline = time.monotonic() + 1.0
            while rec.counts[events_topic] == before and time.monotonic() < deadline:
                time.sleep(0.01)
            self.recorder = None
            counts = rec.close()
            self._plot_progress(mon, Path(record_path), instruction)
        else:
            self._event(mon, event, goal, goal.seed, instruction, record_path, stamp=end)
        result.success = mon.success
        result.stages_reached = mon.stage
        result.stage_names_reached = [STAGE_NAMES[s] for s in mon.reached]
        result.reward = mon.reward
        result.record_path = record_path
        result.message = f"{mon.status}: {mon.message}"
        self.get_logger().info(f"{mon.episode_id}: {result.message}; recorded "
                               f"{sum(counts.values())} messages")
        if mon.status == CANCELLED and handle.is_cancel_requested:
            handle.canceled()
        elif mon.status == INVALID or self.stopping:
            handle.abort()
        else:
            handle.succeed()
        return result


    def _plot_progress(self, mon: EpisodeMonitor, record: Path, instruction: str) -> None:
        """The live progress of the episode beside its record (if a progress node sent any)."""
        with self.progress_lock:
            points = sorted(self.progress)
        if not points:
            return
        try:
            from grrl_trainer.offline.progress_plots import plot_episode_progress
            t, rho = np.array(points).T
            plot_episode_progress(t, rho, record / PROGRESS_PLOT,
                                  f"{mon.episode_id} ({mon.status}): {instruction}")
        except (OSError, ValueError, RuntimeError) as e:   # a plot must not fail the episode
            self.get_logger().warn(f"progress plot not saved: {e}")


def main(argv: list[str] | None = None) -> None:
    # three threads: the episode loop, the reset/label services, and the subscriptions
    run_node(EpisodeNode, argv, make_executor=lambda: MultiThreadedExecutor(num_threads=3))


if __name__ == "__main__":
    main(sys.argv)
