"""Joint-trajectory commands: validation against the robot's limits and quintic execution.

A command is a list of waypoints (time from start, positions, optional velocities and
accelerations) for a subset of the joints, as in ``trajectory_msgs/JointTrajectory``. With
positions, velocities and accelerations, segments are quintic (as a ros2_control
JointTrajectoryController interpolates them); with fewer, cubic or linear. Validation refuses
anything that is not finite, names unknown joints, or leaves the limits; the driver then
holds position instead of passing garbage to the motors.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class TrajectoryError(ValueError):
    """A command that must not be executed; the message says why."""


@dataclass
class DriverLimits:
    """Per-joint limits a driver validates commands against, aligned with ``names`` (the
    planner's, with acceleration and jerk, are ``grrl_policy.chunk_executor.JointLimits``)."""

    names: list[str]
    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray
    position_tolerance: float = 1e-3
    """rad (m for the gripper) a waypoint may exceed a position limit by"""
    velocity_tolerance: float = 1.05
    """factor a waypoint velocity may exceed the velocity limit by"""
    min_segment_time: float = 0.1
    """segments shorter than this are judged over this time: a streaming commander's points
    come in bursts, and one 20 ms step says little about speed"""
    implied_velocity_tolerance: float = 3.0
    """factor the speed implied by consecutive waypoints may exceed the limit by: a guard
    against garbage (jumps), not a speed limit: streaming commanders splice onto a target
    that may lag their own, and the servos bound the actual speed"""


@dataclass
class Waypoint:
    t: float
    positions: np.ndarray
    velocities: np.ndarray | None = None
    accelerations: np.ndarray | None = None


@dataclass
class Trajectory:
    """A validated command over the full joint vector (unnamed joints hold)."""

    joint_index: np.ndarray              # (J,) indices of the commanded joints
    points: list[Waypoint] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.points[-1].t if self.points else 0.0


def validate(names: list[str], points: list[Waypoint], limits: DriverLimits,
             start: np.ndarray | None = None) -> Trajectory:
    """Check a command; raise :class:`TrajectoryError` naming the first problem.

    ``start`` (the full current target vector) also checks the speed the command implies:
    each arm joint must be able to reach each waypoint in time (|dp| / dt within the velocity
    limit), from the current target to the first point and between points. Grippers are
    position-servoed at their own speed, so only their range is checked.
    """
    if not names:
        raise TrajectoryError("no joint names")
    if len(set(names)) != len(names):
        raise TrajectoryError(f"duplicate joint names: {names}")
    unknown = [n for n in names if n not in limits.names]
    if unknown:
        raise TrajectoryError(f"unknown joint(s) {unknown}; this robot has {limits.names}")
    if not points:
        raise TrajectoryError("no trajectory points")
    idx = np.array([limits.names.index(n) for n in names])
    lo, hi, vmax = limits.lower[idx], limits.upper[idx], limits.velocity[idx]
    last_t = -np.inf
    for k, p in enumerate(points):
        if not np.isfinite(p.t) or p.t <= last_t or p.t < 0:
            raise TrajectoryError(f"point {k}: time_from_start {p.t} must be finite, >= 0 and "
                                  "increasing")
        last_t = p.t
        if p.positions.shape != (len(names),):
            raise TrajectoryError(f"point {k}: {p.positions.size} positions for "
                                  f"{len(names)} joints")
        if not np.all(np.isfinite(p.positions)):
            raise TrajectoryError(f"point {k}: non-finite position")
        tol = limits.position_tolerance
        bad = np.nonzero((p.positions < lo - tol) | (p.positions > hi + tol))[0]
        if bad.size:
            j = bad[0]
            raise TrajectoryError(f"point {k}: {names[j]} = {p.positions[j]:.4f} outside "
                                  f"[{lo[j]:.4f}, {hi[j]:.4f}]")
        for kind in ("velocities", "accelerations"):
            arr = getattr(p, kind)
            if arr is None:
                continue
            if arr.shape != (len(names),):
                raise TrajectoryError(f"point {k}: {arr.size} {kind} for {len(names)} joints")
            if not np.all(np.isfinite(arr)):
                raise TrajectoryError(f"point {k}: non-finite {kind[:-3]}y")
        if p.velocities is not None:
            bad = np.nonzero(np.abs(p.velocities) > vmax * limits.velocity_tolerance)[0]
            if bad.size:
                j = bad[0]
                raise TrajectoryError(f"point {k}: {names[j]} velocity {p.velocities[j]:.3f} "
                                      f"exceeds {vmax[j]:.3f}")
    arm = np.array([not n.endswith("gripper_finger_joint") for n in names])
    prev_t = 0.0
    prev_p = None if start is None else np.asarray(start, float)[idx]
    for k, p in enumerate(points):
        if prev_p is not None and arm.any():
            dt = p.t - prev_t
            dp = np.abs(p.positions - prev_p)[arm]
            vmax_arm = vmax[arm] * limits.implied_velocity_tolerance
            if dt <= 0:
                if np.any(dp > limits.position_tolerance):
                    raise TrajectoryError(f"point {k}: a jump of {dp.max():.3f} at "
                                          "time_from_start 0")
            else:
                span = max(dt, limits.min_segment_time)
                if np.any(dp / span > vmax_arm):
                    j = int(np.argmax(dp / span / vmax_arm))
                    name = [n for n, a in zip(names, arm) if a][j]
                    raise TrajectoryError(f"point {k}: {name} would need {dp[j] / dt:.2f} "
                                          f"rad/s (limit {vmax[arm][j]:.2f})")
        prev_t, prev_p = p.t, p.positions
    return Trajectory(idx, list(points))


def _quintic(p0, v0, a0, p1, v1, a1, T, t):
    """Position of the quintic with the given boundary conditions at time t in [0, T]."""
    T2, T3, T4, T5 = T * T, T ** 3, T ** 4, T ** 5
    c0, c1, c2 = p0, v0, a0 / 2
    d = p1 - (c0 + c1 * T + c2 * T2)
    dv = v1 - (c1 + 2 * c2 * T)
    da = a1 - 2 * c2
    c3 = (10 * d - 4 * dv * T + 0.5 * da * T2) / T3
    c4 = (-15 * d + 7 * dv * T - da * T2) / T4
    c5 = (6 * d - 3 * dv * T + 0.5 * da * T2) / T5
    return c0 + c1 * t + c2 * t * t + c3 * t ** 3 + c4 * t ** 4 + c5 * t ** 5


class TrajectoryFollower:
    """Samples the active trajectory into full-vector position targets each control tick."""

    def __init__(self, n_joints: int, lower: np.ndarray | None = None,
                 upper: np.ndarray | None = None):
        self.n = n_joints
        self.lower, self.upper = lower, upper
        self.active: Trajectory | None = None
        self.start_time = 0.0
        self.start_q = np.zeros(n_joints)
        self.start_v = np.zeros(n_joints)
        self.hold_q: np.ndarray | None = None
        self._last: tuple[float, np.ndarray] | None = None
        self._vel = np.zeros(n_joints)

    def start(self, traj: Trajectory, now: float, current_target: np.ndarray) -> None:
        """Begin ``traj`` at ``now``, splicing from the current target and its velocity."""
        self.active = traj
        self.start_time = now
        self.start_q = np.asarray(current_target, float).copy()
        self.start_v = self._vel.copy()

    def hold(self, q: np.ndarray) -> None:
        """Abort any trajectory and hold ``q``."""
        self.active = None
        self.hold_q = np.asarray(q, float).copy()
        self._vel = np.zeros(self.n)
        self._last = None

    def sample(self, now: float, current_target: np.ndarray) -> np.ndarray:
        """Full joint vector target at ``now``."""
        out = self._sample(now, current_target)
        if self.lower is not None:
            out = np.clip(out, self.lower, self.upper)   # a quintic may overshoot a limit
        if self._last is not None and now > self._last[0]:
            self._vel = (out - self._last[1]) / (now - self._last[0])
        self._last = (now, out.copy())
        return out

    def _sample(self, now: float, current_target: np.ndarray) -> np.ndarray:
        out = np.asarray(current_target, float).copy()
        if self.active is None:
            return self.hold_q.copy() if self.hold_q is not None else out
        tr = self.active
        t = now - self.start_time
        idx = tr.joint_index
        prev_t, prev_p = 0.0, self.start_q[idx]
        prev_v, prev_a = self.start_v[idx], np.zeros(len(idx))
        for p in tr.points:
            if t <= p.t:
                T = p.t - prev_t
                v1 = p.velocities if p.velocities is not None else np.zeros(len(idx))
                a1 = p.accelerations if p.accelerations is not None else np.zeros(len(idx))
                tau = min(max(t - prev_t, 0.0), T)
                out[idx] = _quintic(prev_p, prev_v, prev_a, p.positions, v1, a1, T, tau) \
                    if T > 1e-9 else p.positions
                return out
            prev_t, prev_p = p.t, p.positions
            prev_v = p.velocities if p.velocities is not None else np.zeros(len(idx))
            prev_a = p.accelerations if p.accelerations is not None else np.zeros(len(idx))
        out[idx] = tr.points[-1].positions
        self.hold_q = out.copy()
        self.active = None
        return out
