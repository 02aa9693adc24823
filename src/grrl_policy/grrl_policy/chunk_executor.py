"""From predicted action chunks to the trajectory the robot executes (ROS-free core).

The policy predicts chunks of k actions, one every ``dt``, but the robot never executes a
raw chunk. Receding-horizon control runs only the first m steps of each chunk before the
next one replaces it; temporal ensembling (optional, as in ACT) blends the overlapping
predictions of recent chunks for the same instant; the jerk-limited QP
(:mod:`grrl_policy.trajectory_optimizer`) then splices the result onto the motion in
progress and enforces the robot's limits. The executed actions therefore differ from the
policy's raw ones; this mismatch between what was learned from demonstrations and what
the robot does is the paper's motivation for online RL on the deployed, post-processed
policy. Keeping the post-processing in one small deterministic class makes it testable and
exposes both sides: each :class:`Plan` carries the (blended) reference and what is executed.

Time convention: a chunk predicted from an observation taken at ``t_obs`` holds its step
``i`` (0-based) for time ``t_obs + (i + 1) dt``. Between its steps a chunk is linear in
time and it holds its first/last value outside them. A plan spliced at time ``s`` has its
knots at ``s + (i + 1) dt``, i = 0..k-1, so a splice off the chunk's grid (inference
latency) resamples the chunk.

Temporal ensembling (ACT convention): for each knot, the chunks covering its time are ranked
by age, r = 0 for the oldest, and averaged with weights exp(-ensemble_decay * r), so with a
positive decay older predictions weigh more. The newest chunk always takes part (held
beyond its ends); chunks that end before the next knot are dropped.

Spaces. Joint space: a chunk is (k, D) joint targets and the QP runs on them directly.
Task space: a chunk is per-arm tcp poses and gripper openings, flattened per step as
``[x y z qw qx qy qz gripper]`` for each arm (left first, like the joint order), i.e.
(k, 8 A); velocities/accelerations are per arm ``[vx vy vz wx wy wz gripper]`` (k, 7 A)
with the angular velocity w in the base frame. Orientations are optimized in the chart of
rotation vectors xi around the splice orientation R_s (R = exp(xi) R_s) after making the
quaternions sign-continuous, so the QP sees smooth, linear coordinates.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy.spatial.transform import Rotation

from grrl_policy.robot import RobotDescription, resolve
from grrl_policy.trajectory_optimizer import (JerkLimitedOptimizer, OptimizerConfig,
                                              TrajectoryOptimizerError)

log = logging.getLogger(__name__)

_EPS_T = 1e-9            # seconds: times closer than this are equal


class ChunkExecutorError(TrajectoryOptimizerError):
    """The chunk cannot be executed (malformed or non-finite input, stale chunk, infeasible
    QP); the caller should hold. The executor's state is unchanged."""


# ------------------------------------------------------------------------------ configuration

@dataclass
class JointLimits:
    """Bounds of the commanded joints, each (D,) in the order of the chunk's columns."""

    lower: np.ndarray
    """position lower bounds"""
    upper: np.ndarray
    """position upper bounds"""
    velocity: np.ndarray
    """|velocity| bounds (units/s)"""
    acceleration: np.ndarray
    """|acceleration| bounds (units/s^2)"""
    jerk: np.ndarray
    """|jerk| bounds (units/s^3)"""


def _two_boxes(lo: tuple[float, float, float]) -> np.ndarray:
    return np.array([lo, lo], dtype=float)


@dataclass
class TaskSpaceLimits:
    """Bounds of task-space chunks. Rate bounds hold per axis (per component of the linear
    velocity and of the rotation vector's derivative), as the QP's box constraints do."""

    workspace_lower: np.ndarray = field(default_factory=lambda: _two_boxes((-0.3, -0.9, 0.3)))
    """(A, 3) lower corner of each arm's tcp box in the base frame (m)"""
    workspace_upper: np.ndarray = field(default_factory=lambda: _two_boxes((1.0, 0.9, 2.0)))
    """(A, 3) upper corner of each arm's tcp box (m)"""
    linear_velocity: float = 0.5
    """m/s per axis"""
    linear_acceleration: float = 2.0
    """m/s^2 per axis"""
    linear_jerk: float = 20.0
    """m/s^3 per axis"""
    angular_velocity: float = 1.5
    """rad/s per axis"""
    angular_acceleration: float = 6.0
    """rad/s^2 per axis"""
    angular_jerk: float = 60.0
    """rad/s^3 per axis"""
    gripper_lower: float = 0.0
    """gripper opening lower bound (m)"""
    gripper_upper: float = 0.04
    """gripper opening upper bound (m)"""
    gripper_velocity: float = 0.1
    """m/s"""
    gripper_acceleration: float = 1.0
    """m/s^2"""
    gripper_jerk: float = 20.0
    """m/s^3"""


@dataclass
class ExecutorConfig:
    """How chunks are blended, spliced and executed."""

    dt: float = 0.02
    """seconds between chunk steps (the rate the policy's demonstrations were recorded at)"""
    execute_steps: int = 8
    """m: execute the first m steps of each plan, then re-plan (receding horizon)"""
    temporal_ensembling: bool = False
    """blend the predictions of all stored chunks that cover each future step"""
    ensemble_decay: float = 0.1
    """ACT weights w_r = exp(-decay r), r = 0 for the oldest covering chunk (largest weight)"""
    space: str = "joint"
    """'joint' (JointLimits) or 'task' (TaskSpaceLimits)"""
    bound_tolerance: float = 5e-3
    """a QP solution beyond a position bound by more than this is refused (a solver failure),
    less is clipped: OSQP meets constraints to its tolerance, and learned policies push joints
    and grippers against their limits, where overshoots of 1e-4..1e-3 were measured"""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """weights and solver settings of the jerk-limited QP"""


# ------------------------------------------------------------------------------ data

@dataclass(frozen=True)
class SpliceState:
    """State of the executed trajectory at time ``t``, where a new plan starts.

    position: (P,) configuration (joint values, or the task-space pose vector (8 A,));
    velocity, acceleration: (V,) (V = P in joint space, 7 A in task space).
    """

    t: float
    position: np.ndarray
    velocity: np.ndarray
    acceleration: np.ndarray


@dataclass(frozen=True)
class Plan:
    """A spliced, limit-respecting trajectory; the caller publishes it as a trajectory.

    Knot i is at ``times[i] = start.t + (i + 1) dt``. ``positions`` (k, P) and
    ``velocities``/``accelerations`` (k, V) use the layouts of :class:`SpliceState`.
    ``reference`` (k, P) is the (blended) chunk the QP tracked, resampled onto ``times``:
    compare it with ``positions`` to see what post-processing changed. ``coordinates`` and
    its derivatives (k, V) are the QP's solution in its chart (joint space: the same as
    positions/velocities/accelerations; task space: per arm [xyz, rotation vector relative
    to ``start``'s orientation, gripper]).
    """

    start: SpliceState
    times: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    accelerations: np.ndarray
    execute_steps: int
    """m: knots to execute before the next re-plan"""
    reference: np.ndarray
    coordinates: np.ndarray
    coordinate_velocities: np.ndarray
    coordinate_accelerations: np.ndarray

    @property
    def execute_until(self) -> float:
        """Time of the last executed knot: where the next plan should be spliced."""
        return float(self.times[self.execute_steps - 1])


@dataclass(frozen=True)
class TaskSpaceChunk:
    """Per-arm tcp poses and gripper openings over k steps.

    poses: (k, A, 7) position xyz + quaternion wxyz; grippers: (k, A).
    """

    poses: np.ndarray
    grippers: np.ndarray

    def to_vector(self) -> np.ndarray:
        """(k, 8 A) rows of ``[x y z qw qx qy qz gripper]`` per arm."""
        poses, grippers = np.asarray(self.poses, float), np.asarray(self.grippers, float)
        if poses.ndim != 3 or poses.shape[2] != 7 or grippers.shape != poses.shape[:2]:
            raise ChunkExecutorError(f"task-space chunk needs poses (k, A, 7) and grippers "
                                     f"(k, A), got {poses.shape} and {grippers.shape}")
        return np.concatenate([poses, grippers[..., None]], axis=2).reshape(len(poses), -1)

    @classmethod
    def from_vector(cls, vector: np.ndarray) -> "TaskSpaceChunk":
        """Inverse of :meth:`to_vector`, for (k, 8 A) (e.g. ``Plan.positions``)."""
        v = np.asarray(vector, float)
        v = v.reshape(len(v), -1, 8)
        return cls(v[..., :7].copy(), v[..., 7].copy())


# ------------------------------------------------------------------------------ quaternions

def make_sign_continuous(quaternions: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Flip signs of (n, A, 4) quaternions so that each has a non-negative dot product with
    its predecessor, the first with ``reference`` (A, 4). Rotations are unchanged."""
    q = np.asarray(quaternions, float)
    prev = np.concatenate([np.asarray(reference, float)[None], q[:-1]])
    step = np.where(np.sum(q * prev, axis=-1) < 0, -1.0, 1.0)          # (n, A)
    return q * np.cumprod(step, axis=0)[..., None]


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of wxyz quaternions (broadcast, signs preserved)."""
    aw, av, bw, bv = a[..., :1], a[..., 1:], b[..., :1], b[..., 1:]
    return np.concatenate([aw * bw - np.sum(av * bv, -1, keepdims=True),
                           aw * bv + bw * av + np.cross(av, bv)], axis=-1)


def _quat_log(q: np.ndarray) -> np.ndarray:
    """Rotation vectors (..., 3) of unit wxyz quaternions; keeps the sign, so a
    sign-continuous sequence gives continuous vectors (angles up to 2 pi)."""
    w, v = q[..., 0], q[..., 1:]
    s = np.linalg.norm(v, axis=-1)
    angle = 2.0 * np.arctan2(s, w)
    scale = np.where(s > 1e-12, angle / np.maximum(s, 1e-12), 2.0 / np.where(w < 0, -1.0, 1.0))
    return v * scale[..., None]


def _left_jacobian(xi: np.ndarray) -> np.ndarray:
    """(..., 3, 3) J_l(xi): the base-frame angular velocity of exp(xi) R_s is J_l(xi) dxi/dt."""
    theta = np.linalg.norm(xi, axis=-1)[..., None, None]
    K = np.zeros(xi.shape + (3,))
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -xi[..., 2], xi[..., 1], -xi[..., 0]
    K[..., 1, 0], K[..., 2, 0], K[..., 2, 1] = xi[..., 2], -xi[..., 1], xi[..., 0]
    small = theta < 1e-6
    t = np.where(small, 1.0, theta)
    c1 = np.where(small, 0.5 - theta ** 2 / 24, (1 - np.cos(t)) / t ** 2)
    c2 = np.where(small, 1 / 6 - theta ** 2 / 120, (t - np.sin(t)) / t ** 3)
    return np.eye(3) + c1 * K + c2 * (K @ K)


# ------------------------------------------------------------------------------ spaces

class _Space(Protocol):
    """Maps configurations (P,) to the QP's linear chart (V,) around a splice origin."""

    config_dim: int
    tangent_dim: int
    lower: np.ndarray
    upper: np.ndarray
    rates: tuple[np.ndarray, np.ndarray, np.ndarray]

    def parse(self, chunk: np.ndarray | TaskSpaceChunk) -> np.ndarray: ...
    def to_chart(self, config: np.ndarray, origin: np.ndarray) -> np.ndarray: ...
    def from_chart(self, coords: np.ndarray, origin: np.ndarray) -> np.ndarray: ...
    def tangent(self, coords: np.ndarray, vel: np.ndarray,
                acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def _finite_2d(chunk: np.ndarray, width: int) -> np.ndarray:
    c = np.asarray(chunk, float)
    if c.ndim != 2 or c.shape[1] != width or len(c) == 0:
        raise ChunkExecutorError(f"chunk must have shape (k, {width}), got {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ChunkExecutorError("chunk is not finite")
    return c


class _JointSpace:
    """The chart is the identity."""

    def __init__(self, limits: JointLimits):
        self.lower, self.upper = (np.asarray(x, float) for x in (limits.lower, limits.upper))
        self.config_dim = self.tangent_dim = len(self.lower)
        self.rates = tuple(np.broadcast_to(np.asarray(x, float), (self.config_dim,))
                           for x in (limits.velocity, limits.acceleration, limits.jerk))

    def parse(self, chunk: np.ndarray | TaskSpaceChunk) -> np.ndarray:
        if isinstance(chunk, TaskSpaceChunk):
            raise ChunkExecutorError("a task-space chunk given to a joint-space executor")
        return _finite_2d(chunk, self.config_dim)

    def to_chart(self, config: np.ndarray, origin: np.ndarray) -> np.ndarray:
        return config

    def from_chart(self, coords: np.ndarray, origin: np.ndarray) -> np.ndarray:
        return coords

    def tangent(self, coords: np.ndarray, vel: np.ndarray,
                acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return vel, acc


class _TaskSpace:
    """Chart per arm: [xyz, rotation vector of R R_s^-1, gripper]."""

    def __init__(self, limits: TaskSpaceLimits):
        lo = np.asarray(limits.workspace_lower, float).reshape(-1, 3)
        hi = np.asarray(limits.workspace_upper, float).reshape(-1, 3)
        self.arms = len(lo)
        self.config_dim, self.tangent_dim = 8 * self.arms, 7 * self.arms
        inf = np.full((self.arms, 3), np.inf)
        g = np.ones((self.arms, 1))
        self.lower = np.concatenate([lo, -inf, limits.gripper_lower * g], axis=1).ravel()
        self.upper = np.concatenate([hi, inf, limits.gripper_upper * g], axis=1).ravel()

        def per_arm(lin: float, ang: float, grip: float) -> np.ndarray:
            return np.tile([lin] * 3 + [ang] * 3 + [grip], self.arms).astype(float)
        L = limits
        self.rates = (per_arm(L.linear_velocity, L.angular_velocity, L.gripper_velocity),
                      per_arm(L.linear_acceleration, L.angular_acceleration,
                              L.gripper_acceleration),
                      per_arm(L.linear_jerk, L.angular_jerk, L.gripper_jerk))

    def parse(self, chunk: np.ndarray | TaskSpaceChunk) -> np.ndarray:
        if isinstance(chunk, TaskSpaceChunk):
            chunk = chunk.to_vector()
        c = _finite_2d(chunk, self.config_dim)
        c = c.reshape(len(c), self.arms, 8).copy()
        norms = np.linalg.norm(c[..., 3:7], axis=-1, keepdims=True)
        if np.any(norms < 1e-6):
            raise ChunkExecutorError("chunk has a zero quaternion")
        c[..., 3:7] /= norms
        return c.reshape(len(c), -1)

    def _split(self, config: np.ndarray) -> np.ndarray:
        return config.reshape(len(config), self.arms, -1)

    def _origin_quat(self, origin: np.ndarray) -> np.ndarray:
        q = origin.reshape(self.arms, 8)[:, 3:7]
        return q / np.linalg.norm(q, axis=-1, keepdims=True)

    def to_chart(self, config: np.ndarray, origin: np.ndarray) -> np.ndarray:
        c = self._split(config)
        q0 = self._origin_quat(origin)
        q = make_sign_continuous(c[..., 3:7] / np.linalg.norm(c[..., 3:7], axis=-1,
                                                               keepdims=True), q0)
        q0_inv = q0 * np.array([1.0, -1.0, -1.0, -1.0])
        xi = _quat_log(_quat_mul(q, q0_inv))                          # R = exp(xi) R_s
        return np.concatenate([c[..., :3], xi, c[..., 7:]], axis=-1).reshape(len(c), -1)

    def from_chart(self, coords: np.ndarray, origin: np.ndarray) -> np.ndarray:
        x = self._split(coords)
        n = len(x)
        q0 = self._origin_quat(origin)
        rot = (Rotation.from_rotvec(x[..., 3:6].reshape(-1, 3))
               * Rotation.from_quat(np.tile(q0, (n, 1)), scalar_first=True))
        q = make_sign_continuous(rot.as_quat(scalar_first=True).reshape(n, self.arms, 4), q0)
        return np.concatenate([x[..., :3], q, x[..., 6:]], axis=-1).reshape(n, -1)

    def tangent(self, coords: np.ndarray, vel: np.ndarray,
                acc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Chart derivatives -> [v, base-frame w, gripper rate]; the angular acceleration is
        J_l(xi) d2xi/dt2, exact at the splice (xi = 0) and first-order accurate elsewhere."""
        J = _left_jacobian(self._split(coords)[..., 3:6])             # (n, A, 3, 3)
        out = []
        for d in (vel, acc):
            d = self._split(d).copy()
            d[..., 3:6] = np.einsum("naij,naj->nai", J, d[..., 3:6])
            out.append(d.reshape(len(d), -1))
        return out[0], out[1]


# ------------------------------------------------------------------------------ executor

@dataclass(frozen=True)
class _Stored:
    t_obs: float
    chunk: np.ndarray                  # (k, P) validated configuration


class ChunkExecutor:
    """Turns a stream of predicted chunks into spliced, limit-respecting plans.

    Usage per inference: ``s = ex.state_at(t_splice, measured)``, then
    ``plan = ex.plan(chunk, t_obs, s)``; publish ``plan``, and splice the next chunk at (or
    after) ``plan.execute_until``. Not thread-safe.
    """

    def __init__(self, limits: JointLimits | TaskSpaceLimits,
                 config: ExecutorConfig | None = None):
        self.config = config or ExecutorConfig()
        cfg = self.config
        if cfg.space == "joint" and isinstance(limits, JointLimits):
            self._space: _Space = _JointSpace(limits)
        elif cfg.space == "task" and isinstance(limits, TaskSpaceLimits):
            self._space = _TaskSpace(limits)
        else:
            raise ValueError(f"space {cfg.space!r} needs JointLimits ('joint') or "
                             f"TaskSpaceLimits ('task'), got {type(limits).__name__}")
        if cfg.execute_steps < 1 or cfg.dt <= 0 or not np.isfinite(cfg.ensemble_decay):
            raise ValueError("execute_steps >= 1, dt > 0 and a finite ensemble_decay needed")
        self._optimizers: dict[int, JerkLimitedOptimizer] = {}
        self._history: list[_Stored] = []
        self._plan: Plan | None = None

    @property
    def current_plan(self) -> Plan | None:
        """The last plan returned by :meth:`plan` (None before the first, after reset)."""
        return self._plan

    @property
    def position_dim(self) -> int:
        """P: size of a configuration (a chunk row)."""
        return self._space.config_dim

    @property
    def velocity_dim(self) -> int:
        """V: size of a velocity/acceleration row."""
        return self._space.tangent_dim

    def reset(self) -> None:
        """Forget the current plan and the stored chunks (new episode, or after holding)."""
        self._history.clear()
        self._plan = None

    # --------------------------------------------------------------------- state

    def state_at(self, t: float, measured: np.ndarray | None = None) -> SpliceState:
        """State of the current plan at time ``t``.

        Between knots positions are cubic Hermite in the chart (matching knot velocities) and
        accelerations linear; after the last knot the plan holds its last position with zero
        velocity/acceleration. Without a plan: ``measured`` (P,) at rest.
        """
        V = self._space.tangent_dim
        plan = self._plan
        if plan is None:
            if measured is None:
                raise ChunkExecutorError("no plan yet: the measured position is needed")
            p = np.asarray(measured, float)
            if p.shape != (self._space.config_dim,):
                raise ChunkExecutorError(f"measured position has shape {p.shape}, expected "
                                         f"({self._space.config_dim},)")
            if not np.all(np.isfinite(p)):
                raise ChunkExecutorError("measured position has non-finite values")
            return SpliceState(float(t), p.copy(), np.zeros(V), np.zeros(V))
        if t < plan.start.t - _EPS_T:
            raise ValueError(f"t={t} is before the current plan's start {plan.start.t}")
        if t > plan.times[-1] + _EPS_T:
            return SpliceState(float(t), plan.positions[-1].copy(), np.zeros(V), np.zeros(V))
        origin = plan.start.position
        T = np.concatenate([[plan.start.t], plan.times])
        X = np.concatenate([self._space.to_chart(origin[None], origin), plan.coordinates])
        Xd = np.concatenate([plan.start.velocity[None], plan.coordinate_velocities])
        Xdd = np.concatenate([plan.start.acceleration[None], plan.coordinate_accelerations])
        i = int(np.clip(np.searchsorted(T, t, side="right") - 1, 0, len(T) - 2))
        h = T[i + 1] - T[i]
        s = float(np.clip((t - T[i]) / h, 0.0, 1.0))
        h00, h10, h01, h11 = 2*s**3 - 3*s**2 + 1, s**3 - 2*s**2 + s, -2*s**3 + 3*s**2, s**3 - s**2
        d00, d10, d01, d11 = 6*s**2 - 6*s, 3*s**2 - 4*s + 1, -6*s**2 + 6*s, 3*s**2 - 2*s
        x = h00 * X[i] + h10 * h * Xd[i] + h01 * X[i + 1] + h11 * h * Xd[i + 1]
        xd = (d00 * X[i] + d01 * X[i + 1]) / h + d10 * Xd[i] + d11 * Xd[i + 1]
        xdd = (1 - s) * Xdd[i] + s * Xdd[i + 1]
        x = np.clip(x, self._space.lower, self._space.upper)    # a cubic may overshoot a bound
        vel, acc = self._space.tangent(x[None], xd[None], xdd[None])
        return SpliceState(float(t), self._space.from_chart(x[None], origin)[0], vel[0], acc[0])

    def _check_state(self, state: SpliceState) -> SpliceState:
        P, V = self._space.config_dim, self._space.tangent_dim
        p, v, a = (np.array(x, float) for x in (state.position, state.velocity,
                                                 state.acceleration))
        if p.shape != (P,) or v.shape != (V,) or a.shape != (V,):
            raise ChunkExecutorError(f"splice state needs position ({P},), velocity and "
                                     f"acceleration ({V},); got {p.shape}, {v.shape}, {a.shape}")
        if not (np.isfinite(state.t) and np.all(np.isfinite(p)) and np.all(np.isfinite(v))
                and np.all(np.isfinite(a))):
            raise ChunkExecutorError("splice state is not finite")
        self._space.parse(p[None])                   # task space: a usable quaternion
        return SpliceState(float(state.t), p, v, a)

    # --------------------------------------------------------------------- planning

    def _blend(self, chunks: list[_Stored], times: np.ndarray, origin: np.ndarray) -> np.ndarray:
        """(k, V) chart targets at ``times``: the newest chunk everywhere (held beyond its
        ends), averaged with ACT weights with every older chunk covering the time."""
        dt, n = self.config.dt, len(chunks)
        samples = np.empty((n, len(times), self._space.tangent_dim))
        covers = np.ones((n, len(times)), bool)
        for c, stored in enumerate(chunks):
            coords = self._space.to_chart(stored.chunk, origin)            # (k_c, V)
            k_c = len(coords)
            u = np.clip((times - stored.t_obs) / dt - 1.0, 0.0, k_c - 1)   # fractional step
            i0 = np.minimum(np.floor(u + 1e-9).astype(int), max(k_c - 2, 0))
            frac = (u - i0)[:, None]
            i1 = np.minimum(i0 + 1, k_c - 1)
            samples[c] = (1 - frac) * coords[i0] + frac * coords[i1]
            if c < n - 1:
                covers[c] = ((times >= stored.t_obs + dt - _EPS_T)
                             & (times <= stored.t_obs + k_c * dt + _EPS_T))
        rank = np.cumsum(covers, axis=0) - 1                 # 0: oldest chunk covering a time
        w = np.where(covers, np.exp(-self.config.ensemble_decay * rank), 0.0)
        return np.einsum("ck,ckv->kv", w, samples) / w.sum(axis=0)[:, None]

    def _optimizer(self, k: int) -> JerkLimitedOptimizer:
        if k not in self._optimizers:
            sp = self._space
            self._optimizers[k] = JerkLimitedOptimizer(k, self.config.dt, sp.lower, sp.upper,
                                                       *sp.rates, config=self.config.optimizer)
        return self._optimizers[k]

    def _solve(self, target: np.ndarray, p0: np.ndarray,
               state: SpliceState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """QP on (k, V) chart targets. OSQP keeps its step size (rho) and warm start from
        the previous chunk, which can stall on a very different one: retry once, cold. A
        splice moving into a position bound faster than the jerk and acceleration limits can
        stop it makes the QP infeasible: the last try stops those components at the splice
        (the bound stops them anyway)."""
        k = len(target)
        v0, a0 = state.velocity, state.acceleration
        for attempt in (0, 1, 2):
            try:
                return self._optimizer(k).solve(target, p0, v0, a0)
            except TrajectoryOptimizerError as e:
                del self._optimizers[k]
                if attempt == 1:
                    v0, a0, n = self._stop_at_bounds(p0, v0, a0)
                    if n:
                        log.info("trajectory optimization failed (%s); %d component(s) moving "
                                 "into a position bound stopped at the splice", e, n)
                        continue
                if attempt:
                    raise ChunkExecutorError(f"trajectory optimization failed: {e}") from e
                log.info("trajectory optimization failed (%s); retrying with a fresh solver", e)
        raise AssertionError("unreachable")

    def _stop_at_bounds(self, p0: np.ndarray, v0: np.ndarray, a0: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, int]:
        """Velocity/acceleration with the components that cannot stop before their bound
        (braking distance v^2 / 2 a_max, plus a step at v) set to zero; and how many. A
        splice faster than the velocity bound is not a plan's state: nothing is changed."""
        vmax, amax, _ = self._space.rates
        if np.any(np.abs(v0) > vmax * (1 + 1e-3)):
            return v0, a0, 0
        brake = v0 * v0 / (2 * amax) + np.abs(v0) * self.config.dt
        out_up = (v0 > 0) & (p0 + brake >= self._space.upper)
        out_lo = (v0 < 0) & (p0 - brake <= self._space.lower)
        hit = out_up | out_lo
        return np.where(hit, 0.0, v0), np.where(hit, 0.0, a0), int(hit.sum())

    def plan(self, chunk: np.ndarray | TaskSpaceChunk, t_obs: float,
             state: SpliceState) -> Plan:
        """Plan the execution of ``chunk`` predicted from the observation at ``t_obs``.

        chunk: (k, P) (joint targets, or task-space pose vectors) or a TaskSpaceChunk; step i
        is meant for ``t_obs + (i + 1) dt``. state: where the plan starts (``state.t``, the
        splice time, usually ``state_at(previous.execute_until)``); the plan's knots are at
        ``state.t + (i + 1) dt``. With temporal ensembling, chunks stored from earlier calls
        are blended in. Raises :class:`ChunkExecutorError` (and changes nothing) if the input
        is malformed or non-finite, the chunk ends before the first knot, or the QP fails.
        """
        cfg, sp = self.config, self._space
        config_chunk = sp.parse(chunk)
        state = self._check_state(state)
        if not np.isfinite(t_obs):
            raise ChunkExecutorError("t_obs is not finite")
        k = len(config_chunk)
        times = state.t + cfg.dt * np.arange(1, k + 1)
        if t_obs + k * cfg.dt < times[0] - _EPS_T:
            raise ChunkExecutorError(f"stale chunk: it ends at {t_obs + k * cfg.dt:.3f} s, "
                                     f"before the first knot at {times[0]:.3f} s")
        history = self._history if cfg.temporal_ensembling else []
        if history and t_obs < history[-1].t_obs - _EPS_T:
            raise ChunkExecutorError(f"chunk from t_obs={t_obs} is older than the last one "
                                     f"({history[-1].t_obs})")
        history = [h for h in history if h.t_obs + len(h.chunk) * cfg.dt >= times[0] - _EPS_T]
        history.append(_Stored(float(t_obs), config_chunk))

        origin = state.position
        target = self._blend(history, times, origin)
        p0 = sp.to_chart(origin[None], origin)[0]
        x, xd, xdd = self._solve(target, p0, state)
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(xd)) and np.all(np.isfinite(xdd))):
            raise ChunkExecutorError("trajectory optimization returned non-finite values")
        excess = np.maximum(sp.lower - x, x - sp.upper).max()
        if excess > cfg.bound_tolerance:
            raise ChunkExecutorError(f"optimized trajectory exceeds the position bounds by "
                                     f"{excess:.2e}")
        x = np.clip(x, sp.lower, sp.upper)
        vel, acc = sp.tangent(x, xd, xdd)
        plan = Plan(start=state, times=times, positions=sp.from_chart(x, origin),
                    velocities=vel, accelerations=acc, execute_steps=min(cfg.execute_steps, k),
                    reference=sp.from_chart(target, origin), coordinates=x,
                    coordinate_velocities=xd, coordinate_accelerations=xdd)
        self._plan = plan
        if cfg.temporal_ensembling:
            self._history = history
        log.debug("plan at t=%.3f from chunk t_obs=%.3f (%d blended), max |executed - "
                  "reference| in chart %.3g", state.t, t_obs, len(history),
                  float(np.abs(x - target).max()))
        return plan


# ------------------------------------------------------------------------------ robot limits

def joint_limits(velocity_scale: float = 0.8, acceleration_limit: float = 4.0,
                 jerk_limit: float = 40.0, robot: RobotDescription | None = None) -> JointLimits:
    """The limits chunks of the robot's actuated joints (16 for ByteMini-v2, the default
    robot) are planned with: the URDF's position range, ``velocity_scale`` x its velocity
    limits, and acceleration/jerk bounds of ``acceleration_limit`` / ``jerk_limit`` x that
    planned velocity (per second / second^2).

    Shared by the policy node and offline evaluation, so both execute chunks identically."""
    lo, hi, vel = resolve(robot).joint_limits()
    v = vel * float(velocity_scale)
    return JointLimits(lo, hi, v, v * float(acceleration_limit), v * float(jerk_limit))
