"""The jerk-limited chunk optimizer meets its bounds, splices continuously, tracks feasible
chunks and refuses bad input."""
from __future__ import annotations

import numpy as np
import pytest

from grrl_policy.trajectory_optimizer import JerkLimitedOptimizer, TrajectoryOptimizerError

K, D, DT = 16, 3, 0.05
LO, HI = np.full(D, -1.0), np.full(D, 1.0)
VMAX, AMAX, JMAX = 1.0, 4.0, 40.0


@pytest.fixture(scope="module")
def opt() -> JerkLimitedOptimizer:
    return JerkLimitedOptimizer(K, DT, LO, HI, VMAX, AMAX, JMAX)


def differences(p0, v0, a0, x):
    """Velocity, acceleration, jerk of the spliced sequence, as the constraints define them."""
    past = [p0 - 2 * v0 * DT + 2 * a0 * DT ** 2, p0 - v0 * DT + 0.5 * a0 * DT ** 2, p0]
    z = np.concatenate([np.array(past), x])
    v = np.diff(z, axis=0) / DT
    a = np.diff(z, 2, axis=0) / DT ** 2
    j = np.diff(z, 3, axis=0) / DT ** 3
    return v[2:], a[1:], j


def test_bounds_are_met_for_an_aggressive_chunk(opt):
    rng = np.random.default_rng(0)
    chunk = rng.uniform(-1.5, 1.5, (K, D))                    # jumps and out-of-range points
    p0, v0, a0 = np.zeros(D), np.array([0.5, -0.5, 0.0]), np.array([1.0, 0.0, -1.0])
    x, vel, acc = opt.solve(chunk, p0, v0, a0)
    v, a, j = differences(p0, v0, a0, x)
    tol = 1e-3
    assert np.all(x >= LO - tol) and np.all(x <= HI + tol)
    assert np.abs(v).max() <= VMAX * (1 + tol)
    assert np.abs(a).max() <= AMAX * (1 + tol)
    assert np.abs(j).max() <= JMAX * (1 + tol)
    assert vel.shape == acc.shape == (K, D)


def test_splice_is_continuous(opt):
    p0, v0, a0 = np.array([0.2, -0.1, 0.0]), np.array([0.3, 0.0, -0.2]), np.array([0.5, 0, 0])
    chunk = p0 + np.outer(np.arange(1, K + 1) * DT, v0)       # keep going as before
    x, vel, acc = opt.solve(chunk, p0, v0, a0)
    # the first step moves as the executed trajectory would have: p0 + v0 dt + a0 dt^2 / 2
    np.testing.assert_allclose(x[0], p0 + v0 * DT + 0.5 * a0 * DT ** 2, atol=2e-3)
    np.testing.assert_allclose(vel[0], v0 + a0 * DT, atol=0.05)


def test_feasible_chunks_are_tracked(opt):
    t = np.arange(1, K + 1) * DT
    chunk = 0.3 * np.sin(np.outer(t, [1.0, 2.0, 0.5]))        # smooth, within all bounds
    x, _, _ = opt.solve(chunk, np.zeros(D), 0.3 * np.array([1.0, 2.0, 0.5]), np.zeros(D))
    assert np.abs(x - chunk).max() < 5e-3


def test_bad_input_is_refused(opt):
    with pytest.raises(TrajectoryOptimizerError, match="shape"):
        opt.solve(np.zeros((K - 1, D)), np.zeros(D))
    bad = np.zeros((K, D))
    bad[3, 1] = np.nan
    with pytest.raises(TrajectoryOptimizerError, match="finite"):
        opt.solve(bad, np.zeros(D))
    with pytest.raises(TrajectoryOptimizerError, match="splice"):
        opt.solve(np.zeros((K, D)), np.array([0.0, np.inf, 0.0]))


def test_a_ctrl_c_during_a_solve_reaches_the_process_handler():
    """OSQP's build swaps in its own SIGINT handler while it solves and only stops the solve;
    the optimizer must hand the signal on (a node's stop signal would otherwise never see a
    Ctrl-C that lands mid-solve, and the node would run on) and not return a trajectory."""
    import signal
    from types import SimpleNamespace

    import osqp

    opt = JerkLimitedOptimizer(K, DT, LO, HI, VMAX, AMAX, JMAX)
    interrupted = SimpleNamespace(info=SimpleNamespace(
        status_val=osqp.SolverStatus.OSQP_SIGINT, status="interrupted"), x=None)
    opt._solver = SimpleNamespace(update=lambda **_: None, solve=lambda: interrupted)
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with pytest.raises(TrajectoryOptimizerError, match="interrupted"):
            opt.solve(np.zeros((K, D)), np.zeros(D))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [signal.SIGINT]
