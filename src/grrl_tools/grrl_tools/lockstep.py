"""Lock-step simulation, the controllers' side: answer every observation.

A controller (the policy node, the scripted expert, an integrator's own) publishes one
``grrl_interfaces/StepAck`` per observation it has handled on :data:`STEP_ACK_TOPIC`, after the
commands it sends in answer to it: the stamp of the joint state answered, whether it acts in an
episode of this scene, and how many commands it published (none for a scene's first
observation, :data:`SCENE_START`). A driver in lock-step mode advances
only when every controller has answered (see ``bytemini_driver.lockstep``); a controller that
never acknowledges is not waited for, and the simulator then runs on the wall clock.
"""
from __future__ import annotations

from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

STEP_ACK_TOPIC = "bytemini/sim/step_ack"
"""grrl_interfaces/StepAck, relative (one per robot namespace)"""
STEP_ACK_QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
TASK_STATE_QOS = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
"""``bytemini/sim/task_state`` between the simulator and the episode node, which is no lock-step
party (the simulator does not wait for it) and takes a stage's time from the first state that
reports it: none may be dropped while it is busy (500: 3 s at 50 Hz and real-time factor 3;
with 10, a loaded CI machine lost the first 'picked' state and stamped the stage 0.06 s late)"""
SCENE_START = 0
"""the stamp (ns) of a simulated scene's first observation, published with its reset (the
scene's clock starts at 0). It comes before an episode's record opens, so a controller answers
it (``acting`` when it is in an episode of the scene: a scene held at its start waits for
that) and acts from the next observation on."""


class StepAcker:
    """Publishes a node's answers; :meth:`ack` is thread-safe (an inference thread may call it)."""

    def __init__(self, node: Node) -> None:
        from grrl_interfaces.msg import StepAck

        self._msg = StepAck
        self.name = node.get_fully_qualified_name()
        self.pub = node.create_publisher(StepAck, STEP_ACK_TOPIC, STEP_ACK_QOS)

    def ack(self, stamp, acting: bool, commands: int = 0) -> None:
        """Answer the observation stamped ``stamp`` (a ``builtin_interfaces/Time``)."""
        msg = self._msg(controller=self.name, acting=bool(acting), commands=int(commands))
        msg.header.stamp = stamp
        self.pub.publish(msg)
