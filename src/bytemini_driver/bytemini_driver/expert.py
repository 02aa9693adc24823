"""A clean scripted expert for shoe lacing: task-space waypoints tracked by dual-arm IK.

It observes what a motion-capture-equipped teleoperator would see (joint positions and the
lace polyline) and outputs joint position targets (16,) at the control rate, the same
interface a policy or a human operator has. The arm on the instructed end's side picks the end
and threads it away from its side; the other arm takes it over beyond the eyelet, pulls it
tight and puts it down on its side.

The plan is a list of phases; each phase is built when it starts, from the state at that
moment, so the expert closes the loop on where the lace actually is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from bytemini_driver import description as desc
from bytemini_driver.ik import DualArmIK, pose_matrix, yaw_down
from bytemini_driver.scene import TABLE_HEIGHT, other_side
from bytemini_driver.task import threaded_from_end

OPEN, CLOSED = 0.022, 0.0   # a 4.4 cm aperture is enough for a lace and clears the shoe


@dataclass
class ScriptedExpertConfig:
    """Motion parameters of the scripted expert."""

    speed: float = 0.12
    """Cartesian cruise speed (m/s)"""
    insert_speed: float = 0.04
    """speed while pushing the aglet through the eyelet (m/s)"""
    turn_speed: float = 1.5
    """yaw speed (rad/s)"""
    hover: float = 0.05
    """approach height above a grasp point (m)"""
    pre_insert: float = 0.03
    """tip distance before the eyelet plane at alignment (m)"""
    insert_depth: float = 0.035
    """tip distance past the eyelet plane after insertion (m)"""
    pull_length: float = 0.12
    """lace length to pull through the eyelet before putting the end down (m)"""
    clear_distance: float = 0.11
    """how far past the eyelet (along the threading direction) the end is put down (m)"""
    grip_time: float = 0.35
    """seconds to close or open a gripper"""
    resync: float = 0.6
    """rad: when the robot is this far from the commanded joints, re-plan from it"""
    grasp_vertex: int = 2
    """vertex (from the end) the picker grasps: the back of the aglet"""


def min_jerk(s: float) -> float:
    s = min(max(s, 0.0), 1.0)
    return s * s * s * (10 - 15 * s + 6 * s * s)


def yaw_of(R: np.ndarray) -> float:
    return math.atan2(R[1, 0], R[0, 0])


def wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


@dataclass
class _Move:
    side: str
    start: np.ndarray      # (4,) x, y, z, yaw
    goal: np.ndarray
    duration: float
    t: float = 0.0


class ScriptedExpert:
    """Plans and tracks the lacing motion. Call :meth:`reset` per episode, then :meth:`act`
    every control period with the current observation."""

    def __init__(self, config: ScriptedExpertConfig | None = None, ik: DualArmIK | None = None):
        self.config = config or ScriptedExpertConfig()
        self.ik = ik or DualArmIK()
        self.names = desc.actuated_joint_names()
        self.done = False

    # ------------------------------------------------------------------------ episode
    def reset(self, end_side: str, eyelet_center: np.ndarray, eyelet_axis: np.ndarray,
              q: np.ndarray, n_vertices: int, dt: float) -> None:
        """eyelet_axis: the threading direction (see scene.threading_direction_local)."""
        self.dt = dt
        self.end = 0 if end_side == "left" else n_vertices - 1
        self.inward = 1 if self.end == 0 else -1          # index step from the end inwards
        self.center = np.asarray(eyelet_center, float)
        self.axis = np.asarray(eyelet_axis, float) / np.linalg.norm(eyelet_axis)
        # the arm on the end's side picks it up and threads; the other takes it over
        self.picker = end_side
        self.receiver = other_side(end_side)
        self.q = np.asarray(q, float).copy()
        self.ik.set_posture(self.q)
        if hasattr(self, "target"):
            del self.target  # this episode's home is where the arms are now
        self.home = {s: self._pose4(s) for s in desc.SIDES}
        # every arm always tracks a fixed goal; re-reading an idle arm's pose each period
        # would let the posture task walk it away (a held aglet would drift off the eyelet)
        self.target = {s: self.home[s].copy() for s in desc.SIDES}
        self.grip = {s: OPEN for s in desc.SIDES}
        self.phase_i = -1
        self.moves: list[_Move] = []
        self.t = 0.0
        self.steps = 0
        self.phase_end = 0.0
        self.done = False
        self.failed = ""
        self.speed_scale = 1.0
        """multiplies every speed (a demonstrator creeps with < 1)"""
        self.phases: list[tuple[str, Callable[[np.ndarray], float]]] = [
            ("approach", self._approach), ("descend", self._descend),
            ("grasp", lambda lace: self._set_grip(self.picker, CLOSED)),
            ("lift", self._lift), ("align", self._align), ("insert", self._insert),
            ("receiver_approach", self._receiver_approach),
            ("receiver_descend", self._receiver_descend),
            ("receiver_grasp", lambda lace: self._set_grip(self.receiver, CLOSED)),
            ("release", lambda lace: self._set_grip(self.picker, OPEN)),
            ("picker_retreat", self._picker_retreat), ("pull", self._pull),
            ("put_down", self._put_down),
            ("let_go", lambda lace: self._set_grip(self.receiver, OPEN)),
            ("retreat", self._retreat),
        ]

    @property
    def phase(self) -> str:
        return self.phases[self.phase_i][0] if 0 <= self.phase_i < len(self.phases) else "done"

    def _pose4(self, side: str) -> np.ndarray:
        """The commanded tcp pose (x, y, z, yaw) of ``side``."""
        if hasattr(self, "target"):
            return self.target[side].copy()
        T = self.ik.fk(self.q, side)
        return np.array([*T[:3, 3], yaw_of(T[:3, :3])])

    # ----------------------------------------------------------------------- phases
    def _move(self, side: str, goal: np.ndarray, speed: float | None = None) -> float:
        queued = [m for m in self.moves if m.side == side]
        start = queued[-1].goal.copy() if queued else self.target[side].copy()
        goal = goal.copy()
        goal[3] = start[3] + wrap(goal[3] - start[3])
        dist = np.linalg.norm(goal[:3] - start[:3])
        duration = max(dist / (speed or self.config.speed),
                       abs(goal[3] - start[3]) / self.config.turn_speed, 0.3) / self.speed_scale
        self.moves.append(_Move(side, start, goal, duration))
        return duration

    def _set_grip(self, side: str, value: float) -> float:
        self.grip[side] = value
        return self.config.grip_time

    def _vertex(self, k: int) -> int:
        return self.end + self.inward * k

    def _approach(self, lace: np.ndarray) -> float:
        g = lace[self._vertex(self.config.grasp_vertex)]
        tip_dir = lace[self.end] - g
        # tcp x along the aglet: the fingers (tcp y) close across the lace. The gripper is
        # symmetric, so of the two yaws pick the one that needs the least wrist turning now
        # and later, when the aglet is turned to the eyelet axis.
        tip_yaw = math.atan2(tip_dir[1], tip_dir[0])
        axis_yaw = math.atan2(self.axis[1], self.axis[0])
        cur = self._pose4(self.picker)[3]
        yaw = min((tip_yaw, tip_yaw + math.pi), key=lambda y: abs(wrap(y - cur)) + abs(
            wrap(axis_yaw - wrap(tip_yaw - y) - cur)))
        return self._move(self.picker, np.array([*g[:2], g[2] + self.config.hover, yaw]))

    def _descend(self, lace: np.ndarray) -> float:
        g = lace[self._vertex(self.config.grasp_vertex)]
        cur = self._pose4(self.picker)
        return self._move(self.picker, np.array([*g[:2], g[2] + 0.002, cur[3]]), 0.06)

    def _lift(self, lace: np.ndarray) -> float:
        cur = self._pose4(self.picker)
        return self._move(self.picker, np.array([*cur[:2], self.center[2] + 0.04, cur[3]]))

    def _aglet_offset(self, lace: np.ndarray) -> tuple[np.ndarray, float]:
        """Tip offset from the picker's tcp in a yaw-only frame, and the aglet's yaw there.
        Measured on the robot's actual pose (not the commanded one): servos lag."""
        T = self.ik.fk(self.q_measured, self.picker)
        yaw = yaw_of(T[:3, :3])
        off = yaw_down(yaw).T @ (lace[self.end] - T[:3, 3])
        return off, math.atan2(off[1], off[0])

    def _tcp_for_tip(self, tip: np.ndarray, lace: np.ndarray) -> np.ndarray:
        off, aglet_yaw = self._aglet_offset(lace)
        yaw = math.atan2(self.axis[1], self.axis[0]) - aglet_yaw
        return np.array([*(tip - yaw_down(yaw) @ off), yaw])

    def _align(self, lace: np.ndarray) -> float:
        tip = self.center - self.config.pre_insert * self.axis
        return self._move(self.picker, self._tcp_for_tip(tip, lace))

    def _insert(self, lace: np.ndarray) -> float:
        tip = self.center + self.config.insert_depth * self.axis
        return self._move(self.picker, self._tcp_for_tip(tip, lace), self.config.insert_speed)

    def _receiver_target(self, lace: np.ndarray) -> np.ndarray:
        p = 0.7 * lace[self._vertex(1)] + 0.3 * lace[self.end]  # beyond the eyelet
        yaw = math.atan2(self.axis[1], self.axis[0])
        cur = self._pose4(self.receiver)[3]
        yaw = min((yaw, yaw + math.pi), key=lambda y: abs(wrap(y - cur)))
        return np.array([*p, yaw])

    def _receiver_approach(self, lace: np.ndarray) -> float:
        goal = self._receiver_target(lace)
        goal[2] += self.config.hover
        return self._move(self.receiver, goal)

    def _receiver_descend(self, lace: np.ndarray) -> float:
        return self._move(self.receiver, self._receiver_target(lace), 0.05)

    def _picker_retreat(self, lace: np.ndarray) -> float:
        cur = self._pose4(self.picker)
        back = cur[:3] - 0.05 * self.axis + np.array([0, 0, 0.05])
        d = self._move(self.picker, np.array([*back, cur[3]]))
        return d + self._move(self.picker, self.home[self.picker])

    def _pull(self, lace: np.ndarray) -> float:
        cur = self._pose4(self.receiver)
        _, beyond = threaded_from_end(lace, self.end, self.center, self.axis, 0.01)
        need = max(self.config.pull_length - beyond, 0.0) + 0.02
        goal = cur[:3] + need * 0.8 * self.axis + np.array([0, 0, need * 0.45])
        goal[2] = min(goal[2], self.center[2] + 0.07)
        return self._move(self.receiver, np.array([*goal, cur[3]]), 0.06)

    def _put_down(self, lace: np.ndarray) -> float:
        cur = self._pose4(self.receiver)
        # set the end down beside the shoe: at least clear_distance past the eyelet
        along = (cur[:3] - self.center) @ self.axis
        goal = cur[:3] + max(self.config.clear_distance - along, 0.0) * self.axis
        goal[2] = TABLE_HEIGHT + 0.012
        return self._move(self.receiver, np.array([*goal, cur[3]]), 0.06)

    def _retreat(self, lace: np.ndarray) -> float:
        cur = self._pose4(self.receiver)
        d = self._move(self.receiver, np.array([*cur[:2], cur[2] + 0.06, cur[3]]))
        return d + 0.2

    # ------------------------------------------------------------------------- acting
    def act(self, lace: np.ndarray, q_measured: np.ndarray, dt: float | None = None
            ) -> np.ndarray:
        """Joint targets (16,) for the next control period, given the lace (V, 3), the
        measured joint positions (16,) and the time since the last call (default: the
        control period; a node passes the measured one, so a slow consumer stays on time)."""
        self.q_measured = np.asarray(q_measured, float)
        self.dt = self.dt if dt is None else dt
        self.steps += 1
        drift = np.abs(self.q_measured - self.q)
        if drift.max() > self.config.resync:
            # the robot is not where we commanded (a refused command, a hold): plan from
            # where it is, or every later command would be refused too
            self.q = self.q_measured.copy()
        if self.done:
            return self._with_grips(self.q)
        if self.t >= self.phase_end and not self.moves:
            self.phase_i += 1
            if self.phase_i >= len(self.phases):
                self.done = True
                return self._with_grips(self.q)
            self.phase_start = self.t
            self.phase_end = self.t + self.phases[self.phase_i][1](lace)
        self.t += self.dt
        # moves of one side run one after another; the two sides run together
        for side in desc.SIDES:
            queue = [m for m in self.moves if m.side == side]
            if not queue:
                continue
            m = queue[0]
            m.t += self.dt
            self.target[side] = m.start + min_jerk(m.t / m.duration) * (m.goal - m.start)
            if m.t >= m.duration:
                self.moves.remove(m)
        targets = {}
        for s in desc.SIDES:
            p = self.target[s] + self.target_offset(s)
            targets[s] = pose_matrix(p[:3], yaw_down(p[3]))
        self.q = self.ik.solve(self.q, targets, self.dt, iterations=2)
        return self._with_grips(self.q)

    def target_offset(self, side: str) -> np.ndarray:
        """(x, y, z, yaw) added to the tracked target; zero for the clean expert (a
        demonstrator overrides it with hand jitter)."""
        return np.zeros(4)

    def insert_phases(self, *phases: tuple[str, Callable[[np.ndarray], float]]) -> None:
        """Run ``phases`` right after the current one (demonstrators add retries this way)."""
        for k, phase in enumerate(phases):
            self.phases.insert(self.phase_i + 1 + k, phase)

    def _with_grips(self, q: np.ndarray) -> np.ndarray:
        out = q.copy()
        for side in desc.SIDES:
            out[self.names.index(desc.gripper_joint_name(side))] = self.grip[side]
        return out
