"""The online trainer node (paper section 3.3 over the ROS graph): finished episodes of one or
more robots in, new policy checkpoints out.

For every robot namespace in ``namespaces`` (``''``: the node's own namespace) it subscribes
``<ns>/grrl/episode``. On an episode's end (FINISHED, or ABORTED / INVALID, which are logged
and ignored unless ABORTED by the time limit) a worker thread waits for the episode node to
close the record (``record_path``; rosbag2 writes ``metadata.yaml`` last), turns it into an
:class:`~grrl_trainer.online.replay.OnlineEpisode` (:mod:`grrl_trainer.episodes.online_record`: one row per
action chunk, with the noise and version of the policy that produced it) and adds it to the
replay buffers through :class:`~grrl_trainer.online.trainer.OnlineTrainer`. An episode with missing
transitions or non-finite values is quarantined with the reason logged (and written to
``run_dir/replay/quarantine/``); it is never trained on.

Every ``episodes_per_round`` new on-policy episodes the same worker runs ``updates_per_round``
learner updates (the executor never waits), writes checkpoint version v + 1 to
``run_dir/checkpoints/vNNNN`` and announces it, latched, on ``<ns>/grrl/checkpoint`` of every
namespace (one announcement topic per robot, so the robots' launch needs no remapping). The
policy nodes answer on ``<ns>/grrl/checkpoint_status``: LOADED is logged, REFUSED is logged as
an error with the policy node's reason and training goes on (the robot keeps its version and
its episodes keep that version's tag).

Learner, buffers and round state survive a restart (``run_dir/online_state.pt`` and
``run_dir/replay``): the latest checkpoint is announced again, and episodes that arrive again
(the episode events are latched) are recognised by their ids and not counted twice. Success
per episode and its moving average (``window``) go to ``run_dir/online.csv``, TensorBoard
(``run_dir/tb``) and ``run_dir/online.png`` (after each round).

While it runs the critic warm-up updates (``hold_robots``: 'warm-up'; 'rounds': every round;
'never') it asks every robot to start no new episode (latched ``<ns>/grrl/hold_episodes``,
True), and releases each robot once its policy node reports the new version LOADED (or
``release_timeout`` passed), so the warm-up holds the offline version's episodes it asked for
and the first steered episodes act with the new version (grrl-online's order).

With ``max_episodes_per_robot`` > 0 the node exits once every namespace has had that many
episode ends handled (a finished online session: ``launch/online.launch.xml`` makes the
trainer its required process).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from grrl_tools.node_main import HOLD_QOS, HOLD_TOPIC, run_node
from std_msgs.msg import Bool
from grrl_interfaces.msg import CheckpointInfo, EpisodeEvent
from grrl_policy.checkpoint import CheckpointError
from grrl_tools.config_cli import declare_parameters, from_parameters
from grrl_trainer.online.trainer import OnlineConfig, OnlineTrainer
from grrl_trainer.episodes.online_record import NotTrainable, RecordError, read_record, wait_for_record
from grrl_trainer.online.replay import QuarantineError

#: the episode node's events: reliable, the last few kept for late joiners
EVENTS_QOS = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                        reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                     reliability=ReliabilityPolicy.RELIABLE)
END_EVENTS = (EpisodeEvent.EVENT_FINISHED, EpisodeEvent.EVENT_ABORTED, EpisodeEvent.EVENT_INVALID)


def topic(ns: str, name: str) -> str:
    """``name`` in robot namespace ``ns`` ('' = the node's own; relative unless ns is absolute)."""
    ns = ns.strip()
    if not ns or ns == "/":
        return name
    return f"{ns.rstrip('/')}/{name}" if ns.startswith("/") else f"{ns.strip('/')}/{name}"


@dataclass
class TrainerNodeConfig:
    """Parameters of the trainer node (the learner's schedule is :class:`OnlineConfig`'s)."""

    policy: str = ""
    """the offline checkpoint online RL starts from (required)"""
    run_dir: str = ""
    """run directory (resumed when it exists); empty: $ROS_HOME/online"""
    namespaces: list[str] = field(default_factory=lambda: [""])
    """robot namespaces whose episodes are trained on"""
    step_period: float = 0.1
    """seconds per chunk step of records whose chunks do not carry theirs"""
    record_timeout: float = 30.0
    """wall seconds to wait for an episode's record to close"""
    max_episodes_per_robot: int = 0
    """> 0: exit once every robot had this many episode ends"""
    threads: int = 1
    """torch CPU threads of the learner"""
    hold_robots: str = "warm-up"
    """when the robots' new episodes wait for the learner (grrl/hold_episodes): 'warm-up'
    during the critic warm-up updates (else the robots act on with the offline version, and
    those episodes join the warm-up: 111 instead of 48 in the first graph run), 'rounds' during
    every update round too (synchronous, as grrl-online), 'never' (fully asynchronous)"""
    release_timeout: float = 10.0
    """wall seconds after an announcement a held robot waits for its policy node to report
    the new version LOADED (or REFUSED) before its episodes are released anyway"""
    online: OnlineConfig = field(default_factory=lambda: OnlineConfig(warmup_episodes=0))
    """the learner and its schedule; through the graph the warm-up is off by default (the
    robots' first episodes are on-policy data of the offline version)"""


PARAMETER_FLATTEN = ("online",)
HOLD_MODES = ("never", "warm-up", "rounds")


class TrainerNode(Node):
    def __init__(self) -> None:
        super().__init__("grrl_trainer")
        declare_parameters(self, TrainerNodeConfig(), flatten=PARAMETER_FLATTEN)
        node_cfg = from_parameters(self, TrainerNodeConfig(), flatten=PARAMETER_FLATTEN)
        torch.set_num_threads(max(1, node_cfg.threads))
        policy = node_cfg.policy
        if not policy:
            raise ValueError("the parameter 'policy' (the offline checkpoint) is required")
        run_dir = node_cfg.run_dir or os.path.join(
            os.environ.get("ROS_HOME", os.path.expanduser("~/.ros")), "online")
        self.cfg = node_cfg.online
        self.step_period = node_cfg.step_period
        self.record_timeout = node_cfg.record_timeout
        self.max_episodes = node_cfg.max_episodes_per_robot
        if node_cfg.hold_robots not in HOLD_MODES:
            raise ValueError(f"hold_robots must be one of {HOLD_MODES}, got "
                             f"{node_cfg.hold_robots!r}")
        self.hold_robots = node_cfg.hold_robots
        self.release_timeout = node_cfg.release_timeout
        self.core = OnlineTrainer(policy, run_dir, self.cfg)
        self.namespaces = list(dict.fromkeys(str(n) for n in node_cfg.namespaces)) or [""]
        self.handled: set[str] = set()        # episode ids whose end was taken this session
        self.per_robot = {ns: 0 for ns in self.namespaces}   # ends handled per namespace
        self.lock = threading.Lock()
        self.closing = False
        self.queued = 0                       # jobs submitted to the worker, not finished
        self.destroyed = False
        self.done = self.create_guard_condition(self._on_done)
        self.timers_guard = self.create_guard_condition(self._start_release_timer)
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="trainer")
        self.pub_ckpt = {}
        self.pub_hold = {}
        self.held: dict[str, int] = {}        # held namespace -> version it waits for (0: none)
        self.release_timer = None
        for ns in self.namespaces:
            self.pub_hold[ns] = self.create_publisher(Bool, topic(ns, HOLD_TOPIC), HOLD_QOS)
            self.pub_hold[ns].publish(Bool(data=False))
            self.create_subscription(EpisodeEvent, topic(ns, "grrl/episode"),
                                     lambda msg, n=ns: self.on_event(n, msg), EVENTS_QOS)
            self.create_subscription(CheckpointInfo, topic(ns, "grrl/checkpoint_status"),
                                     lambda msg, n=ns: self.on_status(n, msg), LATCHED)
            self.pub_ckpt[ns] = self.create_publisher(CheckpointInfo, topic(ns, "grrl/checkpoint"),
                                                      LATCHED)
        c = self.core
        self.get_logger().info(
            f"trainer ready: {c.policy} ({c.model_cfg.name}, observes {c.obs_key}), run "
            f"{c.run_dir} at version {c.version}"
            f"{' (resumed: ' + str(len(c.st['log'])) + ' online episodes)' if c.resumed else ''}; "
            f"rounds of {self.cfg.episodes_per_round} episodes x {self.cfg.updates_per_round} "
            f"updates (batch {self.cfg.batch_size}); robots: "
            f"{', '.join(repr(n) for n in self.namespaces)}")
        if c.version > c.base_version:          # resumed: robots that restarted need it again
            self.announce(c.st["checkpoint"], c.version, c.st["sha256"], "resumed")
        if self.core.due():                     # a round was due when the last run ended
            self.submit(self._maybe_round)

    # ---------------------------------------------------------------- callbacks (executor)
    def on_event(self, ns: str, msg: EpisodeEvent) -> None:
        if msg.event not in END_EVENTS:
            return
        with self.lock:
            if msg.episode_id in self.handled or self.closing:
                return
            self.handled.add(msg.episode_id)
            self.per_robot[ns] += 1
        self.submit(self._ingest, ns, msg)

    def on_status(self, ns: str, msg: CheckpointInfo) -> None:
        who = f"robot {ns!r}" if ns else "the policy node"
        if msg.status in (CheckpointInfo.STATUS_LOADED, CheckpointInfo.STATUS_REFUSED):
            with self.lock:
                waits = self.held.get(ns)
            if waits and msg.version >= waits:
                self.release([ns], f"its policy node answered on version {msg.version}")
        if msg.status == CheckpointInfo.STATUS_LOADED:
            self.get_logger().info(f"{who} LOADED checkpoint version {msg.version} ({msg.path})")
        elif msg.status == CheckpointInfo.STATUS_REFUSED:
            text = (f"{who} REFUSED checkpoint version {msg.version} ({msg.path}): {msg.message}; "
                    f"it keeps its running version, training goes on")
            if "not newer than the running version" in msg.message:
                self.get_logger().warn(text)    # a re-announcement after a restart
            else:
                self.get_logger().error(text)

    # ---------------------------------------------------------------- worker thread
    def submit(self, fn, *args) -> None:
        with self.lock:
            self.queued += 1
        self.worker.submit(self._guard, fn, *args)

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except InterruptedError:
            pass
        except Exception as exc:  # noqa: BLE001 - the worker must survive any one episode
            if not self.closing:
                self.get_logger().error(f"trainer worker failed: {exc!r}")
        finally:
            with self.lock:
                self.queued -= 1

    def _ingest(self, ns: str, msg: EpisodeEvent) -> None:
        log = self.get_logger()
        robot = ns.strip("/") or "robot"
        eid = msg.episode_id
        seen = self.core.seen(eid)
        if seen is not None:
            log.info(f"episode {eid} ({robot}): already {seen}; not counted again")
            return self._maybe_finish()
        if not msg.record_path:
            self._reject(eid, robot, "the episode was not recorded (record_path is empty; "
                                     "the episode node needs record: true)", False)
            return self._maybe_finish()
        try:
            wait_for_record(msg.record_path, self.record_timeout, stop=self.core.stop)
            ep, info = read_record(msg.record_path, self.cfg.gamma, self.step_period,
                                   self.core.model_cfg.horizon, self.core.obs_key, robot,
                                   end_event=msg,
                                   action_space=self.core.model_cfg.action_space)
        except NotTrainable as exc:
            self._reject(eid, robot, str(exc), False)
            return self._maybe_finish()
        except RecordError as exc:
            self._reject(eid, robot, str(exc), True)
            return self._maybe_finish()
        try:
            where = self.core.add(ep, {"seed": info.seed, "reason": info.message})
        except QuarantineError as exc:
            log.error(f"episode {eid} ({robot}) QUARANTINED, not trained on: {exc}")
            return self._maybe_finish()
        if where == "duplicate":
            log.info(f"episode {eid} ({robot}): duplicate, not counted again")
        else:
            n = len(self.core.st["log"])
            log.info(
                f"episode {eid} ({robot}, seed {info.seed}, version {ep.policy_version}): "
                f"{'SUCCESS' if ep.success else 'failure'} ({info.message}), {len(ep)} decisions "
                f"-> {where} buffer; online episodes {n}, success moving avg "
                f"({self.cfg.window}) {100 * self.core.success_rate():.1f}%, "
                f"{len(self.core.st['pending'])}/{self.cfg.episodes_per_round} toward the next "
                f"round")
        self._maybe_round()
        self._maybe_finish()

    def _reject(self, eid: str, robot: str, reason: str, quarantine: bool) -> None:
        if quarantine:
            self.get_logger().error(f"episode {eid} ({robot}) QUARANTINED, not trained on: "
                                    f"{reason}")
        else:
            self.get_logger().warn(f"episode {eid} ({robot}) ignored: {reason}")
        self.core.reject(eid, reason, quarantine)

    def _maybe_round(self) -> None:
        while not self.closing and self.core.due():
            kind = self.core.due()
            updates = self.cfg.warmup_updates if kind == "warm-up" else self.cfg.updates_per_round
            self.get_logger().info(f"{kind}: {updates} updates on "
                                   f"{self.core.buffers.stats()['transitions']} transitions")
            if (kind == "warm-up" and self.hold_robots != "never") or self.hold_robots == "rounds":
                self.hold(kind)
            try:
                res = self.core.run_due()
            except BaseException:
                self.release(list(self.namespaces), "the round failed")   # never held for ever
                raise
            if res is None:
                self.release(list(self.namespaces), "no round ran")
                break
            m = {k: res["metrics"].get(k, float("nan"))
                 for k in ("critic_loss", "q_mean", "eps_norm_mean")}
            self.get_logger().info(
                f"{res['kind']} done in {res['wall_s']:.1f} s: version {res['version']} "
                f"({res['episodes']} new episodes; critic loss {m['critic_loss']:.4f}, q mean "
                f"{m['q_mean']:.3f}, eps norm {m['eps_norm_mean']:.2f}) -> {res['path']}")
            with self.lock:         # (before the announcement: its answer may come at once)
                for ns in self.held:
                    self.held[ns] = res["version"]
            self.announce(res["path"], res["version"], res["sha256"], f"{res['kind']} done")
            if self.held:           # each robot goes on once it runs the new version
                self.timers_guard.trigger()

    # ---------------------------------------------------------------- holding the robots
    def hold(self, why: str) -> None:
        """Ask every robot's episode node to start no new episode (grrl/hold_episodes)."""
        with self.lock:
            self.held = {ns: 0 for ns in self.namespaces}
        for pub in self.pub_hold.values():
            pub.publish(Bool(data=True))
        self.get_logger().info(f"new episodes of {len(self.pub_hold)} robot(s) held during the "
                               f"{why} updates")

    def release(self, namespaces: list[str], why: str) -> None:
        with self.lock:
            gone = [ns for ns in namespaces if self.held.pop(ns, None) is not None]
        for ns in gone:
            self.pub_hold[ns].publish(Bool(data=False))
            self.get_logger().info(f"robot {ns!r}: new episodes released ({why})")

    def _start_release_timer(self) -> None:
        """(executor) release whoever has not answered the announcement within
        ``release_timeout``: a robot without a policy node must not wait for ever."""
        if self.release_timer is not None:
            self.release_timer.cancel()
            self.destroy_timer(self.release_timer)

        def fire() -> None:
            self.release_timer.cancel()
            with self.lock:
                late = list(self.held)
            if late:
                self.release(late, f"no LOADED answer within {self.release_timeout:.0f} s")

        self.release_timer = self.create_timer(self.release_timeout, fire)

    def announce(self, path: str, version: int, sha256: str, why: str) -> None:
        msg = CheckpointInfo(status=CheckpointInfo.STATUS_ANNOUNCED, path=str(path),
                             version=int(version), sha256=sha256,
                             config_name=self.core.model_cfg.name,
                             message=f"{why}: {len(self.core.st['log'])} online episodes")
        msg.header.stamp = self.get_clock().now().to_msg()
        for pub in self.pub_ckpt.values():
            pub.publish(msg)
        self.get_logger().info(f"announced checkpoint version {version} ({path}) to "
                               f"{len(self.pub_ckpt)} robot(s)")

    def _maybe_finish(self) -> None:
        with self.lock:
            if self.closing or self.max_episodes <= 0 or self.queued > 1 or \
                    min(self.per_robot.values()) < self.max_episodes:
                return
            self.closing = True
        self.get_logger().info(f"handled {len(self.handled)} episode ends "
                               f"(max_episodes_per_robot {self.max_episodes}): done at "
                               f"version {self.core.version}")
        self.done.trigger()                 # the executor's thread ends the spin

    def _on_done(self) -> None:
        raise ExternalShutdownException()   # out of spin: the node's normal, clean exit

    def destroy_node(self) -> None:
        # (also called by the context's shutdown, e.g. on Ctrl-C: once is enough)
        if self.destroyed:
            return
        self.destroyed = self.closing = True
        self.core.stop.set()                # a round in flight stops between two updates
        on_worker = threading.current_thread().name.startswith("trainer")
        self.worker.shutdown(wait=not on_worker, cancel_futures=True)
        try:
            self.core.close()
        except Exception as exc:  # noqa: BLE001 - closing must not mask the shutdown
            self.get_logger().warn(f"closing the trainer: {exc!r}")
        super().destroy_node()


def _make() -> TrainerNode:
    try:
        return TrainerNode()
    except (ValueError, OSError, CheckpointError) as exc:
        # a configuration error, said in one line (no traceback), and a failing exit status
        print(f"trainer_node: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(levelname)s: %(message)s")
    run_node(_make, argv)


if __name__ == "__main__":
    main(sys.argv)
