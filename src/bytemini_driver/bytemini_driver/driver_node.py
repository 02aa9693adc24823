"""The ByteMini-v2 driver as a ROS 2 lifecycle node; the backend is a parameter.

configure: load the backend (acquire the robot / build the simulator) and create publishers;
activate: start the control loop; deactivate: stop it (the robot holds); cleanup: release.

Topics (relative, so a namespace per robot works):
  bytemini/joint_states (JointState), bytemini/{left,right}/tcp_pose (PoseStamped),
  bytemini/camera/<cam>/image_raw (Image, sensor-data QoS) and .../camera_info,
  bytemini/command/joint_trajectory (JointTrajectory, subscribed, RELIABLE),
  bytemini/command/{left,right}/tcp_pose (PoseStamped in base_link: task-space servoing),
  bytemini/command/{left,right}/gripper (Float64: finger opening in m),
  bytemini/sim/task_state (TaskState, simulators), /clock (simulators),
  bytemini/sim/step_ack (StepAck, subscribed: the controllers' answers in lock-step),
  service bytemini/reset_scene (ResetScene).

Simulated time: in lock-step (``lockstep``, the default for simulators) the driver publishes
the observation of time t and advances one control period only when every controller has
answered t and its commands have arrived (:mod:`bytemini_driver.lockstep`); the
``real_time_factor`` is then the fastest it may go. With ``lockstep:=false``, or when no
controller answers on the step-ack topic, it runs on the wall clock at ``real_time_factor``.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, PoseStamped, Vector3
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.serialization import deserialize_message
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from std_msgs.msg import Float64
from sensor_msgs.msg import CameraInfo, Image, JointState
from trajectory_msgs.msg import JointTrajectory

from bytemini_driver import description as desc
from bytemini_driver.cartesian import CartesianServo, PoseError
from bytemini_driver.driver import DriverFault, RobotDriver, load_backend
from grrl_tools.image_codec import encode_raw
from grrl_tools.config_cli import declare_parameters, from_parameters
from grrl_tools.lockstep import STEP_ACK_QOS, STEP_ACK_TOPIC, TASK_STATE_QOS
from grrl_tools.stamps import stamp_ns, time_msg
from grrl_tools.node_main import run_node
from bytemini_driver.lockstep import StepGate
from bytemini_driver.trajectory import TrajectoryError, TrajectoryFollower, Waypoint, validate
from grrl_interfaces.msg import StepAck, TaskState
from grrl_interfaces.srv import ResetScene

COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def matrix_to_quat(R: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a rotation matrix."""
    import mujoco

    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(R).flatten())
    return float(q[1]), float(q[2]), float(q[3]), float(q[0])



@dataclass
class DriverNodeConfig:
    """The driver node's parameters (the backend receives them as a dict at configure)."""
    backend: str = "mujoco"
    """a registered backend ('mujoco', 'topic_bridge') or 'module:Class' (an integrator's own)"""
    control_rate: float = 50.0
    """control loop and joint-state rate (Hz)"""
    camera_rate: float = 10.0
    """camera image rate (Hz)"""
    image_width: int = 224
    """camera image width (pixels)"""
    image_height: int = 224
    """camera image height (pixels)"""
    publish_images: bool = True
    """publish camera images (off: state-only policies, faster simulation)"""
    real_time_factor: float = 1.0
    """simulated seconds per wall-clock second (in lock-step: the most; it slows down when a
    controller or the machine cannot keep up)"""
    lockstep: bool = True
    """simulators: advance past an observation only when every controller has answered it
    (bytemini/sim/step_ack), so that an episode is the same on a busy machine; false: run on
    the wall clock (real-time demos)"""
    lockstep_timeout: float = 5.0
    """wall seconds an observation waits for its answers before the simulation goes on"""
    start_timeout: float = 30.0
    """wall seconds a scene reset with start_paused waits at t = 0 for a controller to act"""
    watchdog_timeout: float = 1.0
    """hold the arms when no command came for this long (s)"""
    seed: int = 0
    """scene seed of the first reset"""
    autostart: bool = False
    """configure and activate without a lifecycle manager"""
    max_trajectory_points: int = 500
    """points a JointTrajectory command may have (10 s at 50 Hz; a policy's plan has ~80):
    a longer one is refused unread"""


MAX_PENDING_COMMANDS = 8
"""trajectory commands waiting to be checked; more are refused (a flood must not queue up)"""


class DriverNode(LifecycleNode):
    def __init__(self) -> None:
        super().__init__("bytemini_driver")
        declare_parameters(self, DriverNodeConfig())
        self.driver: RobotDriver | None = None
        self.timer = None
        self.names = desc.actuated_joint_names()
        # Trajectory commands are deserialised and checked on a thread of their own (no input
        # can stall the control loop, which keeps the executor's thread: a multi-threaded
        # executor made its ticks bunch up) and touch the shared state under the lock.
        self.lock = threading.RLock()
        self.command_pool = ThreadPoolExecutor(1, thread_name_prefix="driver_commands")
        self.commands_pending = 0

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            p = asdict(from_parameters(self, DriverNodeConfig()))
            self.driver = load_backend(p["backend"])
            self.driver.configure(p, node=self)
            self.limits = self.driver.joint_limits()
            self.intrinsics = self.driver.camera_intrinsics()
        except Exception as exc:  # noqa: BLE001 - any backend failure fails the transition
            self.get_logger().error(f"configure failed: {exc}")
            self.driver = None
            return TransitionCallbackReturn.FAILURE
        if float(p["real_time_factor"]) <= 0 or float(p["control_rate"]) <= 0 \
                or float(p["camera_rate"]) <= 0:
            self.get_logger().error("real_time_factor, control_rate and camera_rate must be > 0")
            self.driver.cleanup()
            self.driver = None
            return TransitionCallbackReturn.FAILURE
        self.params = p
        self.dt = 1.0 / float(p["control_rate"])
        self.camera_every = max(1, round(float(p["control_rate"]) / float(p["camera_rate"])))
        self.follower = TrajectoryFollower(len(self.names), self.limits.lower,
                                           self.limits.upper)
        try:
            q, _ = self.driver.joint_state()
        except DriverFault as exc:
            self.get_logger().error(f"configure failed: {exc}")
            self.driver.cleanup()
            self.driver = None
            return TransitionCallbackReturn.FAILURE
        self.target = q.copy()
        self.follower.hold(q)
        self.last_command_time = -math.inf
        self.last_reset: tuple[bool, dict[str, str]] = (False, {})
        # after a physics fault every task state says so until the next requested reset: a
        # single failure message could be overtaken by the recovered scene's states
        self.fault = ""
        self.tick = 0
        self.pub_js = self.create_lifecycle_publisher(JointState, "bytemini/joint_states", 10)
        self.pub_tcp = {s: self.create_lifecycle_publisher(PoseStamped, f"bytemini/{s}/tcp_pose",
                                                           10) for s in desc.SIDES}
        self.pub_img = {c: self.create_lifecycle_publisher(
            Image, f"bytemini/camera/{c}/image_raw", qos_profile_sensor_data)
            for c in desc.CAMERAS}
        self.pub_info = {c: self.create_lifecycle_publisher(
            CameraInfo, f"bytemini/camera/{c}/camera_info", qos_profile_sensor_data)
            for c in desc.CAMERAS}
        self.pub_task = self.create_lifecycle_publisher(TaskState, "bytemini/sim/task_state",
                                                          TASK_STATE_QOS)
        self.pub_clock = self.create_lifecycle_publisher(Clock, "/clock", 10) \
            if self.driver.simulated else None
        self.gate = StepGate(float(p["lockstep_timeout"]), float(p["start_timeout"])) \
            if self.driver.simulated and bool(p["lockstep"]) else None
        self.ack_topic = self.resolve_topic_name(STEP_ACK_TOPIC)
        self.sub_ack = self.create_subscription(
            StepAck, STEP_ACK_TOPIC, self._guarded(self.on_ack, locked=True), STEP_ACK_QOS) \
            if self.gate is not None else None
        # raw: a command's size is checked before it is deserialised
        self.sub_cmd = self.create_subscription(JointTrajectory,
                                                "bytemini/command/joint_trajectory",
                                                self._guarded(self.on_command_bytes), COMMAND_QOS,
                                                raw=True)
        self.srv_reset = self.create_service(ResetScene, "bytemini/reset_scene",
                                             self._guarded_reset)
        self.servo = CartesianServo()
        self.sub_task_space = [self.create_subscription(
            PoseStamped, f"bytemini/command/{side}/tcp_pose",
            self._guarded(lambda msg, s=side: self.on_tcp_command(s, msg), locked=True,
                          command=True), COMMAND_QOS) for side in desc.SIDES]
        self.sub_task_space += [self.create_subscription(
            Float64, f"bytemini/command/{side}/gripper",
            self._guarded(lambda msg, s=side: self.on_gripper(s, msg), locked=True,
                          command=True), COMMAND_QOS) for side in desc.SIDES]
        self.get_logger().info(f"configured backend '{p['backend']}'")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        try:  # the robot may have been moved while inactive: start from where it is
            q, _ = self.driver.joint_state()
        except DriverFault as exc:
            self.get_logger().error(f"activate failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.target = q.copy()
        self.follower.hold(q)
        self.servo.clear()
        self.last_command_time = -math.inf
        rtf = float(self.params["real_time_factor"])
        self.timer = self.create_timer(self.dt / rtf, self.on_tick)
        mode = "lock-step with its controllers" if self.gate is not None else "on the wall clock"
        self.get_logger().info(f"active: control {1 / self.dt:.0f} Hz, real-time factor {rtf}, "
                               f"{mode}")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        with self.lock:
            return self._deactivate(state)

    def _deactivate(self, state: State) -> TransitionCallbackReturn:
        if self.timer is not None:
            self.destroy_timer(self.timer)
            self.timer = None
        if self.driver is not None:
            q, _ = self.driver.joint_state()
            self.follower.hold(q)
        return super().on_deactivate(state)

    def destroy_node(self) -> None:
        self.command_pool.shutdown(wait=True, cancel_futures=True)
        super().destroy_node()

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        with self.lock:
            self._release_locked()

    def _release_locked(self) -> None:
        if self.timer is not None:
            self.destroy_timer(self.timer)
            self.timer = None
        for sub in getattr(self, "sub_task_space", []):
            self.destroy_subscription(sub)
        self.sub_task_space = []
        for name in ("sub_cmd", "sub_ack", "srv_reset"):
            handle = getattr(self, name, None)
            if handle is not None:
                (self.destroy_service if name == "srv_reset" else self.destroy_subscription)(
                    handle)
                setattr(self, name, None)
        for name in ("pub_js", "pub_task", "pub_clock"):
            pub = getattr(self, name, None)
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
                setattr(self, name, None)
        for group in ("pub_tcp", "pub_img", "pub_info"):
            for pub in getattr(self, group, {}).values():
                self.destroy_lifecycle_publisher(pub)
            setattr(self, group, {})
        if self.driver is not None:
            self.driver.cleanup()
            self.driver = None

    # ------------------------------------------------------------------- commands
    def now_s(self) -> float:
        return self.driver.time() if self.driver is not None and self.driver.simulated \
            else time.monotonic()

    def on_command_bytes(self, data: bytes) -> None:
        """A serialised JointTrajectory: refused unread when it is larger than the largest
        command allowed (``max_trajectory_points`` of 16 joints)."""
        n_max = int(self.params["max_trajectory_points"])
        limit = n_max * (4 * 8 * len(self.names) + 64) + 16384
        if len(data) > limit:
            self._refuse(f"rejected command of {len(data)} bytes, holding position: larger than "
                         f"any trajectory of at most {n_max} points ({limit} bytes; parameter "
                         "max_trajectory_points)")
            self._handled()
            return
        with self.lock:
            if self.commands_pending >= MAX_PENDING_COMMANDS:
                self._refuse("rejected command, holding position: trajectory commands arrive "
                             "faster than they can be checked")
                self._handled()
                return
            self.commands_pending += 1
        self.command_pool.submit(self._command_from_bytes, data)

    def _command_from_bytes(self, data: bytes) -> None:
        """(on the command thread) deserialise, check and start a trajectory; never raises
        (undecodable bytes are a refusal like any other)"""
        try:
            self._guarded(lambda d: self.on_command(deserialize_message(d, JointTrajectory)))(data)
        finally:
            with self.lock:
                self.commands_pending -= 1
                self._handled()

    def _handled(self) -> None:
        """A command reached the driver (accepted or refused): lock-step counts it."""
        with self.lock:
            if self.gate is not None:
                self.gate.command_handled()

    def on_ack(self, msg: StepAck) -> None:
        if self.gate is not None:
            self.gate.answered(stamp_ns(msg.header.stamp), msg.controller, msg.acting,
                               msg.commands)

    def on_command(self, msg: JointTrajectory) -> None:
        if self.driver is None or self.timer is None:
            self.get_logger().warn("command ignored: driver not active")
            return
        n_max = int(self.params["max_trajectory_points"])
        with self.lock:
            start = self.target.copy()
        try:
            if len(msg.points) > n_max:
                raise TrajectoryError(f"{len(msg.points)} points, more than the "
                                      f"{n_max} allowed (parameter max_trajectory_points)")
            points = [Waypoint(p.time_from_start.sec + p.time_from_start.nanosec * 1e-9,
                               np.asarray(p.positions, float),
                               np.asarray(p.velocities, float) if len(p.velocities) else None,
                               np.asarray(p.accelerations, float) if len(p.accelerations)
                               else None) for p in msg.points]
            traj = validate(list(msg.joint_names), points, self.limits, start=start)
        except TrajectoryError as exc:
            self._refuse(f"rejected command, holding position: {exc}")
            return
        with self.lock:
            now = self.now_s()
            self.servo.clear()  # the latest command type wins
            self.follower.start(traj, now, self.target)
            self.last_command_time = now

    def on_tcp_command(self, side: str, msg: PoseStamped) -> None:
        if self.driver is None or self.timer is None:
            self.get_logger().warn("tcp command ignored: driver not active")
            return
        if msg.header.frame_id not in ("", "base_link"):
            self._refuse(f"rejected {side} tcp command in frame '{msg.header.frame_id}' "
                         "(expected base_link), holding")
            return
        import mujoco

        o = msg.pose.orientation
        quat = np.array([o.w, o.x, o.y, o.z], float)
        T = np.eye(4)
        R = np.zeros(9)
        bad = "non-finite orientation" if not np.all(np.isfinite(quat)) else (
            f"orientation quaternion of norm {np.linalg.norm(quat):.4g} (a rotation has norm 1)"
            if abs(np.linalg.norm(quat) - 1.0) >= 1e-3 else "")
        if bad:
            self._refuse(f"rejected {side} tcp command, holding: {bad}")
            return
        mujoco.mju_quat2Mat(R, quat)
        T[:3, :3] = R.reshape(3, 3)
        p = msg.pose.position
        T[:3, 3] = [p.x, p.y, p.z]
        try:
            self.servo.set_target(side, T)
        except PoseError as exc:
            self._refuse(f"rejected {side} tcp command, holding: {exc}")
            return
        self.follower.hold(self.target)
        self.last_command_time = self.now_s()

    def on_gripper(self, side: str, msg: Float64) -> None:
        if self.driver is None or self.timer is None:
            return
        name = desc.gripper_joint_name(side)
        k = self.names.index(name)
        current = self.target[k]
        speed = self.limits.velocity[k]
        try:
            traj = validate([name], [Waypoint(max(abs(msg.data - current) / speed, 0.05)
                                              if np.isfinite(msg.data) else 0.05,
                                              np.array([msg.data]))], self.limits)
        except TrajectoryError as exc:
            self.get_logger().error(f"rejected {side} gripper command: {exc}")
            return
        if self.servo.active or self.follower.active is not None:
            # keep the arms' motion; the gripper servo moves the fingers at its own speed
            self.target[k] = msg.data
            if self.follower.hold_q is not None:
                self.follower.hold_q[k] = msg.data
            if self.follower.active is not None:
                self.follower.start_q[k] = msg.data
            return
        now = self.now_s()
        self.follower.start(traj, now, self.target)
        self.last_command_time = now

    def _guarded(self, callback, locked: bool = False, command: bool = False):
        """``callback`` with any exception turned into a logged refusal and a hold: no message
        may kill the driver; ``locked``: all of it under the state lock (fixed-size messages);
        ``command``: the message is a command (lock-step counts it, whatever its fate)."""
        def run(msg) -> None:
            try:
                if locked:
                    with self.lock:
                        callback(msg)
                else:
                    callback(msg)
            except Exception as exc:  # noqa: BLE001 - a bad message must never end the driver
                self._refuse(f"refused a message that raised {exc!r}; holding")
            finally:
                if command:
                    self._handled()
        return run

    def _refuse(self, reason: str) -> None:
        """Log why an input was refused and hold where the robot is."""
        self.get_logger().error(reason)
        with self.lock:
            if self.driver is not None:
                self.follower.hold(self.target)
                self.servo.clear()

    def _guarded_reset(self, request: ResetScene.Request, response: ResetScene.Response
                       ) -> ResetScene.Response:
        try:
            with self.lock:
                return self.on_reset(request, response)
        except Exception as exc:  # noqa: BLE001 - a bad request is refused, never fatal
            self.get_logger().error(f"reset refused: {exc!r}")
            response.success, response.message = False, f"reset refused: {exc!r}"
            return response

    def on_reset(self, request: ResetScene.Request, response: ResetScene.Response
                 ) -> ResetScene.Response:
        if self.driver is None:
            response.success, response.message = False, "driver not configured"
            return response
        options = {kv.key: kv.value for kv in request.options}
        try:
            info = self.driver.reset(int(request.seed), bool(request.mirrored), options)
        except (ValueError, NotImplementedError, DriverFault) as exc:
            response.success, response.message = False, str(exc)
            self.get_logger().error(f"reset failed: {exc}")
            return response
        self.last_reset = (bool(request.mirrored), options)
        self.fault = ""
        q, _ = self.driver.joint_state()
        self.target = q.copy()
        self.follower.hold(q)
        self.servo.clear()
        self.last_command_time = -math.inf
        from grrl_interfaces.msg import KeyValue

        response.success = True
        response.instruction = info.instruction
        response.scene_parameters = [KeyValue(key=k, value=v) for k, v in info.parameters.items()]
        self.get_logger().info(f"scene reset (seed {request.seed}): {info.instruction}")
        # the scene's first observation (t = 0, camera frames included): in lock-step with
        # start_paused the scene waits here until a controller acts on it
        self.tick = 0
        self._observe(self.driver, bool(request.start_paused))
        return response

    # ---------------------------------------------------------------------- loop
    def on_tick(self) -> None:
        with self.lock:
            if self.gate is not None and self.driver is not None:
                go, why = self.gate.ready(self.count_publishers(self.ack_topic))
                if why:
                    self.get_logger().warn(f"lock-step: {why}")
                if not go:
                    return
            self._locked_tick()

    def _locked_tick(self) -> None:
        drv = self.driver
        if drv is None:
            return
        try:
            self._tick(drv)
        except DriverFault as exc:
            if drv.simulated:
                self._fault(str(exc))
            else:  # hardware: stop commanding; the robot's controller holds
                self.get_logger().error(f"driver fault, not commanding: {exc}",
                                        throttle_duration_sec=2.0)
        except Exception as exc:  # noqa: BLE001 - never let the control loop die: hold
            self.get_logger().error(f"control tick failed, holding: {exc!r}",
                                    throttle_duration_sec=2.0)
            self.servo.clear()
            self.follower.hold(self.target)

    def _tick(self, drv: RobotDriver) -> None:
        drv.joint_state()  # freshness first: a stale robot state raises before any command
        now = self.now_s()
        stale = now - self.last_command_time > float(self.params["watchdog_timeout"])
        if stale and (self.follower.active is not None or self.servo.active):
            self.get_logger().warn("watchdog: commands stopped mid-motion, holding")
            q, _ = drv.joint_state()
            self.servo.clear()
            self.follower.hold(q)
        if self.servo.active:
            self.target = self.servo.step(self.target, self.dt)
            self.follower.hold(self.target)
        else:
            # the set-point of the period [now, now + dt] is the command's value at its end: a
            # command answering the observation of now moves the robot in this very period
            self.target = self.follower.sample(now + self.dt, self.target)
        drv.command(self.target)
        drv.advance(self.dt)
        self.tick += 1
        self._observe(drv)

    def _observe(self, drv: RobotDriver, start: bool = False) -> None:
        """Publish the observation of now: clock, camera frames when due, tcp poses, task
        state, and the joint state last (the controllers' trigger); lock-step then waits on
        it (``start``: until a controller acts on the scene)."""
        stamp = time_msg(self.now_s())
        if self.gate is not None:
            self.gate.observed(stamp_ns(stamp), start)
        if self.pub_clock is not None:
            self.pub_clock.publish(Clock(clock=stamp))
        if self.tick % self.camera_every == 0:
            for cam, img in drv.images().items():
                enc, h, w, step, data = encode_raw(img)
                msg = Image(encoding=enc, height=h, width=w, step=step, data=data)
                msg.header.stamp = stamp
                msg.header.frame_id = desc.camera_optical_frame(cam)
                self.pub_img[cam].publish(msg)
                self.pub_info[cam].publish(self._camera_info(cam, msg.header, h, w))
        for side, T in drv.tcp_poses().items():
            ps = PoseStamped()
            ps.header.stamp, ps.header.frame_id = stamp, "base_link"
            ps.pose.position = Point(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3]))
            x, y, z, w = matrix_to_quat(T[:3, :3])
            ps.pose.orientation.x, ps.pose.orientation.y = x, y
            ps.pose.orientation.z, ps.pose.orientation.w = z, w
            self.pub_tcp[side].publish(ps)
        self._publish_task(stamp)
        q, v = drv.joint_state()
        js = JointState(name=self.names, position=q.tolist(), velocity=v.tolist())
        js.header.stamp = stamp
        self.pub_js.publish(js)

    def _camera_info(self, cam: str, header, h: int, w: int) -> CameraInfo:
        info = CameraInfo(height=h, width=w, distortion_model="plumb_bob", d=[0.0] * 5)
        info.header = header
        k = self.intrinsics.get(cam)
        if k is not None:
            fx, fy, cx, cy = k
            info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
            info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
            info.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        return info

    def _publish_task(self, stamp: Time | None = None, failure: str = "") -> None:
        st = self.driver.task_state() if self.driver is not None else None
        if st is None or self.pub_task is None:
            return
        failure = failure or getattr(self, "fault", "")
        msg = task_state_message(st, failure)
        msg.header.stamp = stamp or time_msg(self.now_s())
        msg.header.frame_id = "base_link"
        self.pub_task.publish(msg)

    def _fault(self, reason: str) -> None:
        """Physics blow-up: report it, reset the scene, hold; never crash."""
        self.get_logger().error(f"driver fault: {reason}; resetting the scene")
        seed = 0
        st = None
        try:
            st = self.driver.task_state()
        except Exception:  # noqa: BLE001 - the state may be the broken part
            pass
        if st is not None:
            seed = int(st["seed"])
        mirrored, options = self.last_reset
        try:
            self.driver.reset(seed, mirrored, options)
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f"reset after fault failed: {exc}")
            return
        q, _ = self.driver.joint_state()
        self.target = q.copy()
        self.follower.hold(q)
        self.servo.clear()
        self.last_command_time = -math.inf
        self.fault = f"physics fault: {reason}"
        self._publish_task()


def _autostart(node: DriverNode) -> None:
    if node.get_parameter("autostart").value:
        # without a lifecycle manager, walk to active ourselves
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS or \
                node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            node.get_logger().fatal("autostart failed")
            raise SystemExit(1)



def task_state_message(st: dict, failure: str = "") -> TaskState:
    """The TaskState message of a backend's ``task_state()`` dict (no header); ``failure``: a
    fault the driver adds to the scene's own."""
    msg = TaskState(scene_seq=int(st["scene_seq"]), seed=int(st["seed"]),
                    mirrored=bool(st["mirrored"]), instruction=st["instruction"],
                    end_side=st["end_side"], eyelet_side=st["eyelet_side"],
                    eyelet_index=int(st["eyelet_index"]), stage=int(st["stage"]),
                    threaded=bool(st["threaded"]), success=bool(st["success"]),
                    failed=bool(st["failed"]) or bool(failure),
                    failure_reason=failure or st["failure_reason"],
                    pulled_length=float(st["pulled_length"]),
                    shoe_yaw=float(st.get("shoe_yaw", 0.0)))
    c, d = st["eyelet_center"], st["threading_direction"]
    msg.eyelet_center = Point(x=float(c[0]), y=float(c[1]), z=float(c[2]))
    msg.threading_direction = Vector3(x=float(d[0]), y=float(d[1]), z=float(d[2]))
    msg.lace = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in st["lace"]]
    return msg

def main(argv: list[str] | None = None) -> None:
    run_node(DriverNode, argv, before_spin=_autostart)


if __name__ == "__main__":
    main(sys.argv)
