"""The progress node: live task progress rho of the running episode, for operators.

For every action chunk a policy publishes on ``grrl/action_chunk`` it looks up what that policy
acted on — the joint state of the chunk's stamp (``bytemini/joint_states``), and the simulator
state of the same instant (``bytemini/sim/task_state``, state critics) or the cameras (image
critics) — and the episode's instruction (``grrl/episode``), scores the pair with the offline
critic (:class:`grrl_critic.progress.ProgressEstimator`) and publishes ``grrl/progress``
(``grrl_interfaces/TaskProgress``) at the chunk rate. The episode node forwards it in the
``RunEpisode`` feedback and records it with the episode.

A chunk whose inputs have not arrived yet (its instant's states, its episode's STARTED event,
which comes on another topic) waits for them (up to ``pending_timeout`` wall seconds); a chunk
it cannot score (another action space, non-finite values, a task state of another scene, no
instruction) is skipped with one warning per reason, never crashes the node.
It is not a controller: it does not answer the simulator's steps, so it never slows an episode.
Parameters: :class:`ProgressNodeConfig`.
"""
from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np
import torch
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState

from grrl_interfaces.msg import ActionChunk, EpisodeEvent, TaskProgress, TaskState
from grrl_policy.keys import CAMERAS
from grrl_policy.robot import load_robot, resolve
from grrl_policy.sim_state_spec import state_from_task_state
from grrl_tools.config_cli import declare_parameters, from_parameters
from grrl_tools.image_codec import ImageError, decode_raw
from grrl_tools.node_main import run_node
from grrl_tools.stamps import stamp_s

from .progress import ProgressEstimator

EVENTS_QOS = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                        reliability=ReliabilityPolicy.RELIABLE)


@dataclass
class ProgressNodeConfig:
    """Parameters of the progress node."""

    critic: str = ""
    """critic checkpoint (``grrl-critic train``'s RUN/critic); required"""
    robot_description: str = ""
    """the robot's URDF (XML text or a file path) for the task-space proprioception; empty:
    ByteMini-v2"""
    device: str = "cpu"
    """torch device of the critic"""
    threads: int = 1
    """torch CPU threads"""
    sync_slop: float = 0.005
    """seconds between a chunk's stamp and the joint / task state / camera stamps it is scored with"""
    pending_timeout: float = 2.0
    """wall seconds a chunk waits for its inputs before it is dropped"""
    history: int = 200
    """joint and task states kept to match chunks against"""


def nearest(entries: deque, t: float, slop: float):
    """The payload of the (stamp, payload) entry nearest to ``t`` within ``slop``, else None."""
    best, gap = None, slop
    for stamp, value in entries:
        d = abs(stamp - t)
        if d <= gap:
            best, gap = value, d
    return best


class ProgressNode(Node):
    def __init__(self) -> None:
        super().__init__("grrl_progress")
        declare_parameters(self, ProgressNodeConfig())
        self.cfg = cfg = from_parameters(self, ProgressNodeConfig())
        if not cfg.critic:
            raise ValueError("the progress node needs a critic checkpoint (parameter 'critic')")
        torch.set_num_threads(cfg.threads)
        robot = load_robot(cfg.robot_description) if cfg.robot_description else None
        self.estimator = ProgressEstimator(cfg.critic, robot, cfg.device)
        self.lock = threading.Lock()
        self.joints: deque = deque(maxlen=cfg.history)
        self.tasks: deque = deque(maxlen=cfg.history)
        self.images: dict[str, tuple[float, np.ndarray]] = {}
        self.instructions: OrderedDict[str, tuple[str, int]] = OrderedDict()
        """episode id -> (instruction, scene seed), the newest few"""
        self.pending: deque = deque()
        """(arrival, chunk) waiting for their inputs"""
        self.warned: set[str] = set()
        self.names = list(resolve(robot).actuated_joint_names)
        self.pub = self.create_publisher(TaskProgress, "grrl/progress", 10)
        self.create_subscription(JointState, "bytemini/joint_states", self.on_joints, 50)
        if self.estimator.observes_state:
            self.create_subscription(TaskState, "bytemini/sim/task_state", self.on_task, 50)
        else:
            for cam in CAMERAS:
                self.create_subscription(Image, f"bytemini/camera/{cam}/image_raw",
                                         lambda m, c=cam: self.on_image(c, m),
                                         qos_profile_sensor_data)
        self.create_subscription(EpisodeEvent, "grrl/episode", self.on_event, EVENTS_QOS)
        self.create_subscription(ActionChunk, "grrl/action_chunk", self.on_chunk, 10)
        m = self.estimator.model.cfg
        self.get_logger().info(
            f"progress from critic {cfg.critic} ({self.estimator.kind}, sha256 "
            f"{self.estimator.sha256[:12]}; {m.action_space}-space chunks of {m.horizon}, "
            f"observes {'the simulator state' if m.observes_state else 'the cameras'})")

    def warn_once(self, reason: str) -> None:
        if reason not in self.warned:
            self.warned.add(reason)
            self.get_logger().warn(f"progress not computed: {reason}")

    # ---------------------------------------------------------------- inputs
    def on_joints(self, msg: JointState) -> None:
        order = {n: i for i, n in enumerate(msg.name)}
        if len(msg.position) != len(msg.name) or not all(n in order for n in self.names):
            self.warn_once("a joint state lacks the robot's joints")
            return
        q = np.array([msg.position[order[n]] for n in self.names], float)
        with self.lock:
            self.joints.append((stamp_s(msg.header.stamp), q))
        self._drain()

    def on_task(self, msg: TaskState) -> None:
        with self.lock:
            self.tasks.append((stamp_s(msg.header.stamp), msg))
        self._drain()

    def on_image(self, cam: str, msg: Image) -> None:
        try:
            img = decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data)
        except ImageError as e:
            self.warn_once(f"camera {cam}: {e}")
            return
        with self.lock:
            self.images[cam] = (stamp_s(msg.header.stamp), img)
        self._drain()

    def on_event(self, msg: EpisodeEvent) -> None:
        if msg.event == EpisodeEvent.EVENT_STARTED:
            with self.lock:
                self.instructions[msg.episode_id] = (msg.instruction, msg.seed)
                while len(self.instructions) > 8:
                    self.instructions.popitem(last=False)
            self._drain()

    def on_chunk(self, msg: ActionChunk) -> None:
        with self.lock:
            self.pending.append((time.monotonic(), msg))
        self._drain()

    # ---------------------------------------------------------------- scoring
    def _drain(self) -> None:
        """Score every pending chunk whose inputs are here; drop those waiting too long."""
        now = time.monotonic()
        while True:
            with self.lock:
                if not self.pending:
                    return
                arrived, msg = self.pending[0]
                inputs = self._inputs(msg)
                if inputs is None and now - arrived < self.cfg.pending_timeout:
                    return                     # its joint / task state is still on its way
                self.pending.popleft()
            if inputs is None:
                with self.lock:
                    started = msg.episode_id in self.instructions
                self.warn_once(
                    (f"no joint state (or task state / images) of a chunk's instant"
                     if started else f"no STARTED event of episode {msg.episode_id}")
                    + f" within {self.cfg.pending_timeout:.1f} s")
                continue
            if isinstance(inputs, str):
                self.warn_once(inputs)
                continue
            self._score(msg, *inputs)

    def _inputs(self, msg: ActionChunk):
        """Called with the lock held: (q, instruction, state, images), a reason why the chunk
        cannot be scored, or None if its inputs may still come."""
        if not msg.episode_id:
            return "a chunk outside an episode"
        episode = self.instructions.get(msg.episode_id)
        if episode is None:
            return None          # the event comes on another topic: a chunk may overtake it
        t, slop = stamp_s(msg.header.stamp), self.cfg.sync_slop
        q = nearest(self.joints, t, slop)
        if q is None:
            return None
        state = images = None
        if self.estimator.observes_state:
            task = nearest(self.tasks, t, slop)
            if task is None:
                return None
            if task.seed != episode[1]:
                return f"the task state is of another scene (seed {task.seed})"
            try:
                state = state_from_task_state(task)
            except ValueError as e:
                return str(e)
        else:
            if any(c not in self.images or abs(self.images[c][0] - t) > slop for c in CAMERAS):
                return None
            images = {c: self.images[c][1] for c in CAMERAS}
        return q, episode[0], state, images

    def _score(self, msg: ActionChunk, q, instruction, state, images) -> None:
        try:
            if len(msg.actions) != msg.horizon * msg.action_dim:
                raise ValueError(f"a chunk with {len(msg.actions)} values for "
                                 f"{msg.horizon} x {msg.action_dim}")
            actions = np.asarray(msg.actions, np.float32).reshape(msg.horizon, msg.action_dim)
            rho = self.estimator.progress(q, instruction, actions, state=state, images=images)
        except (ValueError, RuntimeError) as e:
            self.warn_once(str(e))
            return
        out = TaskProgress(episode_id=msg.episode_id, progress=rho,
                           policy_version=msg.policy_version, critic_sha256=self.estimator.sha256)
        out.header.stamp = msg.header.stamp
        self.pub.publish(out)


def main(argv: list[str] | None = None) -> None:
    run_node(ProgressNode, argv)


if __name__ == "__main__":
    main(sys.argv)
