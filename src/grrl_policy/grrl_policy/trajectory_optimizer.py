"""Jerk-constrained trajectory optimization of a predicted action chunk (a QP solved by OSQP).

Given a chunk of k waypoints y_1..y_k (one every ``dt``) and the state of the trajectory
being executed at the splice point (position p0, velocity v0, acceleration a0), find
x_1..x_k that

    minimise  sum_i w_i ||x_i - y_i||^2  +  lambda * sum ||jerk||^2
    subject to  lower <= x <= upper,  |velocity| <= v_max,  |acceleration| <= a_max,
                |jerk| <= j_max  (finite differences over dt)

The executed trajectory enters as three fixed points x_-2, x_-1, x_0 reconstructed from
(p0, v0, a0), so the differences that straddle the splice point are bounded too: the new
chunk continues the old one in position, velocity and acceleration (up to the jerk bound).
Dimensions are independent (joint space or task-space coordinates alike). The problem's
structure is built once per (k, D); each chunk only updates vectors, which keeps a solve
around a millisecond.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass

import numpy as np
import osqp
import scipy.sparse as sp


@dataclass
class OptimizerConfig:
    """Weights and solver settings of the chunk optimizer."""

    jerk_weight: float = 1e-6
    """lambda: smoothness against waypoint tracking"""
    first_weight: float = 1.0
    """tracking weight of the first waypoint; later ones decay towards last_weight"""
    last_weight: float = 0.3
    eps: float = 1e-6
    """OSQP absolute/relative tolerance"""
    max_iter: int = 4000


class TrajectoryOptimizerError(RuntimeError):
    """The QP could not be solved (e.g. an infeasible splice state); hold instead."""


def _diff(order: int, n: int) -> sp.csr_matrix:
    """(n - order, n) forward finite-difference matrix of ``order``."""
    coeffs = {1: [-1, 1], 2: [1, -2, 1], 3: [-1, 3, -3, 1]}[order]
    return sp.diags([float(c) for c in coeffs], list(range(order + 1)), shape=(n - order, n),
                    format="csr", dtype=float)


class JerkLimitedOptimizer:
    """Optimizes (k, D) chunks for fixed limits; ``solve`` is called once per chunk."""

    def __init__(self, horizon: int, dt: float, lower: np.ndarray, upper: np.ndarray,
                 v_max: np.ndarray, a_max: np.ndarray, j_max: np.ndarray,
                 config: OptimizerConfig | None = None):
        self.k, self.dt = horizon, dt
        self.lower, self.upper = np.asarray(lower, float), np.asarray(upper, float)
        self.dim = len(self.lower)
        self.v_max, self.a_max, self.j_max = (np.broadcast_to(np.asarray(x, float), (self.dim,))
                                              for x in (v_max, a_max, j_max))
        self.config = config or OptimizerConfig()
        k, D, h = horizon, self.dim, dt
        n = k + 3                                   # z = [x_-2, x_-1, x_0, x_1 .. x_k]
        S = sp.vstack([sp.csr_matrix((3, k)), sp.eye(k, format="csr")]).tocsr()
        # rows of each difference that involve at least one free point
        self.Dv = (_diff(1, n) / h)[2:]             # k rows
        self.Da = (_diff(2, n) / h ** 2)[1:]        # k rows
        self.Dj = _diff(3, n) / h ** 3              # k rows
        blocks = [sp.eye(k), self.Dv @ S, self.Da @ S, self.Dj @ S]
        # variables ordered dimension-major: x[d * k + i]
        A = sp.vstack([sp.kron(sp.eye(D), b) for b in blocks]).tocsc()
        w = np.geomspace(self.config.first_weight, self.config.last_weight, k)
        self.W = np.tile(w, D)
        DjS = self.Dj @ S
        P = 2 * (sp.diags(self.W) + self.config.jerk_weight * sp.kron(sp.eye(D), DjS.T @ DjS))
        self.P = sp.triu(P).tocsc()
        self.A = A
        # dense copies for the per-chunk constant terms (small: k x (k + 3))
        self._fixed_ops = [M.toarray()[:, :3] for M in (self.Dv, self.Da, self.Dj)]
        self._DjS = DjS.toarray()
        self._solver = osqp.OSQP()
        zeros = np.zeros(A.shape[0])
        self._solver.setup(self.P, np.zeros(k * D), A, zeros - 1.0, zeros + 1.0,
                           eps_abs=self.config.eps, eps_rel=self.config.eps,
                           max_iter=self.config.max_iter, polishing=False, verbose=False,
                           warm_starting=True)

    def _fixed(self, p0: np.ndarray, v0: np.ndarray, a0: np.ndarray) -> np.ndarray:
        """(D, 3) past points x_-2, x_-1, x_0 consistent with the splice state."""
        h = self.dt
        x0 = p0
        x1 = p0 - v0 * h + 0.5 * a0 * h * h
        x2 = p0 - 2 * v0 * h + 2.0 * a0 * h * h
        return np.stack([x2, x1, x0], axis=1)

    def solve(self, chunk: np.ndarray, p0: np.ndarray, v0: np.ndarray | None = None,
              a0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Optimize ``chunk`` (k, D) spliced at (p0, v0, a0) (each (D,)).

        Returns positions, velocities and accelerations, each (k, D), at t = dt .. k dt.
        Raises :class:`TrajectoryOptimizerError` if the QP is infeasible or non-finite.
        """
        k, D, h = self.k, self.dim, self.dt
        chunk = np.asarray(chunk, float)
        if chunk.shape != (k, D):
            raise TrajectoryOptimizerError(f"chunk has shape {chunk.shape}, expected {(k, D)}")
        if not np.all(np.isfinite(chunk)):
            raise TrajectoryOptimizerError(f"chunk has {int((~np.isfinite(chunk)).sum())} "
                                           f"non-finite values")
        p0 = np.asarray(p0, float)
        v0 = np.zeros(D) if v0 is None else np.asarray(v0, float)
        a0 = np.zeros(D) if a0 is None else np.asarray(a0, float)
        if not (np.all(np.isfinite(p0)) and np.all(np.isfinite(v0)) and np.all(np.isfinite(a0))):
            raise TrajectoryOptimizerError("non-finite splice state")
        fixed = self._fixed(p0, v0, a0)                         # (D, 3)
        cv, ca, cj = (fixed @ M.T for M in self._fixed_ops)    # (D, k) parts due to the past
        target = np.clip(chunk, self.lower, self.upper)
        lo = np.concatenate([np.repeat(self.lower, k),
                             (-self.v_max[:, None] - cv).ravel(),
                             (-self.a_max[:, None] - ca).ravel(),
                             (-self.j_max[:, None] - cj).ravel()])
        hi = np.concatenate([np.repeat(self.upper, k),
                             (self.v_max[:, None] - cv).ravel(),
                             (self.a_max[:, None] - ca).ravel(),
                             (self.j_max[:, None] - cj).ravel()])
        q = -2 * self.W * target.T.ravel() + 2 * self.config.jerk_weight * (
            cj @ self._DjS).ravel()
        self._solver.update(q=q, l=lo, u=hi)
        res = self._solver.solve()
        if res.info.status_val == osqp.SolverStatus.OSQP_SIGINT:
            # OSQP's build replaces the SIGINT handler while it solves and only stops the
            # solve: hand the Ctrl-C on to the process's own handler (a node's stop signal,
            # Python's KeyboardInterrupt), or a node stopped mid-solve never learns of it
            signal.raise_signal(signal.SIGINT)
            raise TrajectoryOptimizerError("OSQP: interrupted by SIGINT")
        if res.info.status not in ("solved", "solved inaccurate") or res.x is None \
                or not np.all(np.isfinite(res.x)):
            raise TrajectoryOptimizerError(f"OSQP: {res.info.status}")
        x = res.x.reshape(D, k).T                               # (k, D)
        z = np.concatenate([fixed.T, x, (2 * x[-1] - x[-2])[None] if k > 1 else x[-1:]])
        # x_i is z[i + 2]; central differences, the last point extrapolated linearly
        vel = (z[4:] - z[2:-2]) / (2 * h)                       # (k, D)
        acc = (z[4:] - 2 * z[3:-1] + z[2:-2]) / (h * h)
        return x, vel, acc
