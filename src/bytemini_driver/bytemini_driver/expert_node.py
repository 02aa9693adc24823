"""The scripted expert as a node: it acts only through the robot's command topic.

During an episode (between STARTED and the end on ``grrl/episode``) it reads the joint states
and the simulator's ground-truth lace (``bytemini/sim/task_state``), runs
:class:`~bytemini_driver.expert.ScriptedExpert` once per joint-state message (the control
rate) and publishes a one-point ``JointTrajectory`` (positions and velocities) reaching the
next target one control period later. It acts on a joint state together with the task state
of the same instant (the driver publishes that first) and answers every joint state on
``bytemini/sim/step_ack`` after its command, so that a lock-step simulator waits for it.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from bytemini_driver import description as desc
from bytemini_driver.driver_node import COMMAND_QOS
from bytemini_driver.demonstrator import FlawedDemonstrator
from bytemini_driver.expert import ScriptedExpert
from grrl_tools.config_cli import declare_parameters, from_parameters
from grrl_tools.lockstep import SCENE_START, StepAcker
from grrl_tools.stamps import stamp_ns
from grrl_tools.node_main import announce_ready, run_node
from grrl_interfaces.msg import EpisodeEvent, TaskState
from grrl_interfaces.srv import LabelEpisode



@dataclass
class ExpertNodeConfig:
    """The expert node's parameters."""
    control_rate: float = 50.0
    """command rate (Hz)"""
    flawed: bool = False
    """act like a human teleoperator (bytemini_driver.demonstrator) and annotate retry
    keyframes through the episode node's labelling service"""


class ExpertNode(Node):
    def __init__(self) -> None:
        super().__init__("scripted_expert")
        declare_parameters(self, ExpertNodeConfig())
        cfg = from_parameters(self, ExpertNodeConfig())
        self.dt = 1.0 / cfg.control_rate
        self.flawed = cfg.flawed
        self.expert = FlawedDemonstrator() if self.flawed else ScriptedExpert()
        self.labels = self.create_client(LabelEpisode, "grrl/label_episode")
        self.labelled = 0
        self.names = desc.actuated_joint_names()
        self.task: TaskState | None = None
        self.active_seed: int | None = None
        self.used_scene: int | None = None
        self.running = False
        self.last_q: np.ndarray | None = None
        self.last_stamp: float | None = None
        vmax = [desc.ARM_LIMITS[j][2] for j in desc.ARM_JOINTS] + [desc.GRIPPER_LIMITS[2]]
        self.vmax = np.array(vmax * 2)
        self.pub = self.create_publisher(JointTrajectory, "bytemini/command/joint_trajectory",
                                         COMMAND_QOS)
        self.create_subscription(TaskState, "bytemini/sim/task_state", self.on_task, 10)
        # transient-local: started late, the expert still gets the running episode's STARTED
        self.create_subscription(EpisodeEvent, "grrl/episode", self.on_event, QoSProfile(
            depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
            reliability=ReliabilityPolicy.RELIABLE))
        self.create_subscription(JointState, "bytemini/joint_states", self.on_joints, 10)
        self.acker = StepAcker(self)
        self.joints: JointState | None = None
        self.answered: tuple[int, int | None] | None = None
        self.ready_pub = announce_ready(self)

    def on_task(self, msg: TaskState) -> None:
        self.task = msg
        self._answer()

    def on_event(self, msg: EpisodeEvent) -> None:
        if msg.event == EpisodeEvent.EVENT_STARTED:
            self.active_seed = int(msg.seed)
            self.running = False  # (re)start once the new scene's state arrives
            self.get_logger().info(f"episode {msg.episode_id}: {msg.instruction}")
        elif msg.event in (EpisodeEvent.EVENT_FINISHED, EpisodeEvent.EVENT_ABORTED,
                           EpisodeEvent.EVENT_INVALID):
            self.active_seed = None
            self.running = False
        # the scene's first observation may be here already (a lock-step scene waits there)
        if self.joints is not None and stamp_ns(self.joints.header.stamp) == SCENE_START:
            self._answer()

    def on_joints(self, msg: JointState) -> None:
        # the previous joint state still waited for its task state: do not wait again
        stalled = self.joints is not None and self._key(self.joints) != self.answered
        self.joints = msg
        self._answer(force=stalled)

    def _key(self, msg: JointState) -> tuple[int, int | None]:
        return stamp_ns(msg.header.stamp), self.active_seed

    def _answer(self, force: bool = False) -> None:
        """Act on the newest joint state once (per episode) and answer it."""
        msg = self.joints
        if msg is None or self._key(msg) == self.answered:
            return
        if not force and (self.task is None or
                          stamp_ns(self.task.header.stamp) != stamp_ns(msg.header.stamp)):
            # the task state of this instant is on its way; one of a newer stamp is the
            # previous scene's (stamps restart at a reset): answering with it said "idle" to a
            # held start, once, and the scene waited 30 s for an answer that never came
            return
        self.answered = self._key(msg)
        st = self.task
        acting = self.active_seed is not None and st is not None and st.seed == self.active_seed
        # a scene's first observation comes with its reset: answered, acted on from the next
        sent = self._act(msg) if stamp_ns(msg.header.stamp) != SCENE_START else 0
        self.acker.ack(msg.header.stamp, acting, sent)

    def _act(self, msg: JointState) -> int:
        """The expert's command for this joint state, if it acts: the number published."""
        if self.active_seed is None or self.task is None:
            return 0
        st = self.task
        if list(msg.name) != self.names:
            order = {n: i for i, n in enumerate(msg.name)}
            if not all(n in order for n in self.names):
                return 0
            q = np.array([msg.position[order[n]] for n in self.names])
        else:
            q = np.asarray(msg.position, float)
        if not self.running:
            if st.seed != self.active_seed or st.scene_seq == self.used_scene:
                return 0  # still the previous scene
            self.used_scene = st.scene_seq
            c, d = st.eyelet_center, st.threading_direction
            extra = {"seed": int(st.seed)} if self.flawed else {}
            self.expert.reset(st.end_side, np.array([c.x, c.y, c.z]), np.array([d.x, d.y, d.z]),
                              q, len(st.lace), self.dt, **extra)
            self.labelled = 0
            self.running = True
            self.last_stamp = None
        if self.expert.done:
            return 0
        lace = np.array([[p.x, p.y, p.z] for p in st.lace])
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        dt = self.dt if self.last_stamp is None else min(max(stamp - self.last_stamp, 0.0), 0.2)
        self.last_stamp = stamp
        if dt <= 0.0:
            return 0
        target = self.expert.act(lace, q, dt)
        if self.flawed and len(self.expert.flaws.retry_keyframes) > self.labelled:
            self.labelled += 1                    # annotate the retry, as an operator would
            self.labels.call_async(LabelEpisode.Request(action=LabelEpisode.Request.RETRY,
                                                        note="demonstrator retry"))
        prev = self.last_q if self.last_q is not None else q
        self.last_q = target
        point = JointTrajectoryPoint(positions=target.tolist(),
                                     velocities=np.clip((target - prev) / dt, -self.vmax,
                                                        self.vmax).tolist(),
                                     time_from_start=Duration(sec=0, nanosec=int(dt * 1e9)))
        self.pub.publish(JointTrajectory(joint_names=self.names, points=[point]))
        return 1


def main(argv: list[str] | None = None) -> None:
    run_node(ExpertNode, argv)


if __name__ == "__main__":
    main(sys.argv)
