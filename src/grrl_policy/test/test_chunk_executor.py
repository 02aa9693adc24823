"""The chunk executor: receding-horizon splices are continuous, temporal ensembling is the
ACT-weighted mean, bounds hold, bad input is refused, and task-space orientations are smooth
whatever the quaternions' signs."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from grrl_policy.chunk_executor import (ChunkExecutor, ChunkExecutorError, ExecutorConfig,
                                        JointLimits, Plan, SpliceState, TaskSpaceChunk,
                                        TaskSpaceLimits, make_sign_continuous)

K, D, DT = 16, 3, 0.05
LO, HI = np.full(D, -1.0), np.full(D, 1.0)
VMAX, AMAX, JMAX = 1.0, 4.0, 40.0
LIMITS = JointLimits(LO, HI, np.full(D, VMAX), np.full(D, AMAX), np.full(D, JMAX))
TOL = 1e-3


def executor(**overrides) -> ChunkExecutor:
    return ChunkExecutor(LIMITS, ExecutorConfig(dt=DT, **overrides))


def sampled(f, t_obs: float, k: int = K) -> np.ndarray:
    """A chunk predicted at t_obs that follows f exactly: step i at t_obs + (i + 1) DT."""
    return np.array([f(t_obs + (i + 1) * DT) for i in range(k)])


def wave(t: float) -> np.ndarray:
    """Smooth, within every joint bound (|v| <= 0.6, |a| <= 0.6, |j| <= 0.6)."""
    return 0.3 * np.sin(np.array([1.0, 2.0, 0.5]) * t + np.array([0.0, 0.5, 1.0]))


def wave_velocity(t: float) -> np.ndarray:
    w = np.array([1.0, 2.0, 0.5])
    return 0.3 * w * np.cos(w * t + np.array([0.0, 0.5, 1.0]))


def rates(sequence: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.diff(sequence, n, axis=0) / dt ** n for n in (1, 2, 3))


def executed(plans: list[Plan]) -> np.ndarray:
    """Positions the robot goes through: the first m knots of each plan, in order."""
    return np.concatenate([p.positions[:p.execute_steps] for p in plans])


# ------------------------------------------------------------------------------ joint space

def test_receding_horizon_executes_m_steps_and_splices_continuously():
    ex = executor(execute_steps=4)
    s0 = ex.state_at(0.0, measured=np.zeros(D))
    assert np.all(s0.velocity == 0) and np.all(s0.acceleration == 0)
    p1 = ex.plan(sampled(lambda t: np.array([0.4, -0.2, 0.1]) * t, 0.0), 0.0, s0)
    assert p1.execute_steps == 4 and p1.positions.shape == (K, D)
    np.testing.assert_allclose(p1.times, DT * np.arange(1, K + 1))
    t1 = p1.execute_until
    assert t1 == pytest.approx(4 * DT)
    s1 = ex.state_at(t1)                      # at a knot: exactly the plan's knot
    np.testing.assert_allclose(s1.position, p1.positions[3])
    np.testing.assert_allclose(s1.velocity, p1.velocities[3])
    np.testing.assert_allclose(s1.acceleration, p1.accelerations[3])

    # the next chunk disagrees: its raw first step jumps away from where the arm is
    chunk2 = sampled(lambda t: np.array([-0.5, 0.5, -0.3]) + 0 * t, t1)
    assert np.abs(chunk2[0] - s1.position).max() > 0.3
    p2 = ex.plan(chunk2, t1, s1)
    assert p2.start is not None and p2.start.t == t1
    np.testing.assert_allclose(p2.times, t1 + DT * np.arange(1, K + 1))
    # continuity at the switch: the first new knot continues p + v dt + a dt^2 / 2
    p, v, a = s1.position, s1.velocity, s1.acceleration
    assert np.abs(p2.positions[0] - (p + v * DT + 0.5 * a * DT ** 2)).max() <= JMAX * DT ** 3 + TOL
    # what the robot executes across the switch respects velocity and acceleration bounds
    path = np.concatenate([np.zeros((1, D)), executed([p1, p2])])
    vel, acc, jerk = rates(path, DT)
    assert np.abs(vel).max() <= VMAX * (1 + TOL)
    assert np.abs(acc).max() <= AMAX * (1 + TOL)
    assert np.abs(jerk).max() <= 2 * JMAX          # the splice reconstructs x_-2 to O(j dt^3)


def test_state_between_knots_interpolates_the_plan():
    ex = executor()
    plan = ex.plan(sampled(wave, 0.0), 0.0, SpliceState(0.0, wave(0.0), wave_velocity(0.0),
                                                        np.zeros(D)))
    mid = ex.state_at(2.5 * DT)
    assert np.all(np.minimum(plan.positions[1], plan.positions[2]) - 1e-6 <= mid.position)
    assert np.all(mid.position <= np.maximum(plan.positions[1], plan.positions[2]) + 1e-6)
    np.testing.assert_allclose(mid.velocity, wave_velocity(2.5 * DT), atol=0.02)
    held = ex.state_at(plan.times[-1] + 1.0)
    np.testing.assert_allclose(held.position, plan.positions[-1])
    assert np.all(held.velocity == 0)
    with pytest.raises(ValueError, match="before"):
        ex.state_at(-1.0)


def test_ensembling_consistent_predictions_returns_them():
    ex = executor(execute_steps=2, temporal_ensembling=True)
    state = SpliceState(0.0, wave(0.0), wave_velocity(0.0), np.zeros(D))
    for n in range(6):
        t_obs = n * 2 * DT
        plan = ex.plan(sampled(wave, t_obs), t_obs, state)
        # up to 8 chunks overlap, each predicting the same value for every time
        np.testing.assert_allclose(plan.reference, np.array([wave(t) for t in plan.times]),
                                   atol=1e-12)
        state = ex.state_at(plan.execute_until)
    # the same chunk twice at the same time blends to itself
    chunk = sampled(wave, state.t)
    ex.plan(chunk, state.t, state)
    np.testing.assert_allclose(ex.plan(chunk, state.t, state).reference, chunk, atol=1e-12)


def test_ensembling_two_chunks_is_the_weighted_mean_where_they_overlap():
    ex = executor(execute_steps=2, temporal_ensembling=True, ensemble_decay=0.1)
    old = 0.01 * np.arange(K)[:, None] * np.array([1.0, -2.0, 3.0])
    new = np.tile([0.3, 0.2, -0.1], (K, 1))
    ex.plan(old, 0.0, ex.state_at(0.0, measured=np.zeros(D)))
    state = ex.state_at(2 * DT)
    plan = ex.plan(new, 2 * DT, state)
    # target time 2 DT + (j + 1) DT is step j + 2 of the old chunk, which covers j <= K - 3;
    # the old chunk (rank 0) weighs 1, the new one (rank 1) exp(-0.1) = 0.904837...
    w_old, w_new = 1.0, 0.9048374180359595
    expected = new.copy()
    expected[:K - 2] = (w_old * old[2:] + w_new * new[:K - 2]) / (w_old + w_new)
    np.testing.assert_allclose(plan.reference, expected, atol=1e-12)
    # e.g. step 0, first joint: (0.02 + 0.9048 * 0.3) / 1.9048
    assert plan.reference[0, 0] == pytest.approx(0.153006, abs=1e-6)


def test_latency_resamples_the_chunk_onto_the_plans_knots():
    ex = executor()
    ramp = lambda t: np.array([0.2, -0.1, 0.05]) * t          # noqa: E731 (linear in time)
    t_splice = 2.3 * DT                                       # inference took 2.3 steps
    plan = ex.plan(sampled(ramp, 0.0), 0.0, SpliceState(t_splice, ramp(t_splice),
                                                        np.zeros(D), np.zeros(D)))
    np.testing.assert_allclose(plan.times, t_splice + DT * np.arange(1, K + 1))
    inside = plan.times <= K * DT
    np.testing.assert_allclose(plan.reference[inside], [ramp(t) for t in plan.times[inside]],
                               atol=1e-12)
    np.testing.assert_allclose(plan.reference[~inside], np.tile(ramp(K * DT), (3, 1)))


def test_bounds_are_met_for_an_aggressive_chunk():
    rng = np.random.default_rng(0)
    ex = executor(execute_steps=K)
    start = SpliceState(0.0, np.array([0.9, -0.9, 0.0]), np.array([0.5, -0.5, 0.0]),
                        np.array([1.0, 0.0, -1.0]))
    plan = ex.plan(rng.uniform(-1.5, 1.5, (K, D)), 0.0, start)
    assert np.all(plan.positions >= LO) and np.all(plan.positions <= HI)
    p, v, a = start.position, start.velocity, start.acceleration
    past = [p - 2 * v * DT + 2 * a * DT ** 2, p - v * DT + 0.5 * a * DT ** 2, p]
    vel, acc, jerk = rates(np.concatenate([np.array(past), plan.positions]), DT)
    assert np.abs(vel[2:]).max() <= VMAX * (1 + TOL)
    assert np.abs(acc[1:]).max() <= AMAX * (1 + TOL)
    assert np.abs(jerk).max() <= JMAX * (1 + TOL)
    for x in (plan.positions, plan.velocities, plan.accelerations):
        assert np.all(np.isfinite(x))


def test_robot_joint_limits_hold():
    from grrl_policy.robot import default_robot
    lim = np.stack(default_robot().joint_limits(), 1)                      # (16, 3) lo, hi, vel
    assert lim.shape == (16, 3)
    limits = JointLimits(lim[:, 0], lim[:, 1], lim[:, 2], 5 * lim[:, 2], 50 * lim[:, 2])
    # dt = 0.05: at 0.02 s the optimizer's OSQP needs > 10k iterations for such a chunk
    ex = ChunkExecutor(limits, ExecutorConfig(dt=0.05))
    rng = np.random.default_rng(1)
    chunk = rng.uniform(lim[:, 0] - 1.0, lim[:, 1] + 1.0, (16, 16))
    measured = np.clip(np.zeros(16), lim[:, 0], lim[:, 1])
    plan = ex.plan(chunk, 0.0, ex.state_at(0.0, measured))
    assert np.all(plan.positions >= lim[:, 0]) and np.all(plan.positions <= lim[:, 1])
    vel = np.diff(np.vstack([measured, plan.positions]), axis=0) / 0.05
    assert np.all(np.abs(vel) <= lim[:, 2] * (1 + TOL))


def test_bad_input_raises_and_changes_nothing():
    ex = executor()
    rest = ex.state_at(0.0, measured=np.zeros(D))
    first = ex.plan(np.zeros((K, D)), 0.0, rest)
    bad = np.zeros((K, D))
    bad[5, 1] = np.nan
    with pytest.raises(ChunkExecutorError, match="finite"):
        ex.plan(bad, 0.0, rest)
    with pytest.raises(ChunkExecutorError, match="finite"):
        ex.plan(np.zeros((K, D)), 0.0, SpliceState(0.0, np.array([0, np.inf, 0]),
                                                   np.zeros(D), np.zeros(D)))
    with pytest.raises(ChunkExecutorError, match="shape"):
        ex.plan(np.zeros((K, D + 1)), 0.0, rest)
    with pytest.raises(ChunkExecutorError, match="stale"):
        ex.plan(np.zeros((K, D)), 0.0, SpliceState(K * DT, np.zeros(D), np.zeros(D),
                                                   np.zeros(D)))
    # far too fast to stop within the bounds: the QP is infeasible
    with pytest.raises(ChunkExecutorError, match="optimization"):
        ex.plan(np.zeros((K, D)), 0.0, SpliceState(0.0, np.zeros(D), np.full(D, 50.0),
                                                   np.zeros(D)))
    assert ex.current_plan is first
    ex.reset()
    with pytest.raises(ChunkExecutorError, match="measured"):
        ex.state_at(0.0)
    with pytest.raises(ValueError):
        ChunkExecutor(LIMITS, ExecutorConfig(space="task"))


def test_steady_state_tracks_a_feasible_chunk():
    ex = executor(execute_steps=4)
    state = SpliceState(0.0, wave(0.0), wave_velocity(0.0), np.zeros(D))
    plans = []
    for _ in range(8):
        plan = ex.plan(sampled(wave, state.t), state.t, state)
        plans.append(plan)
        state = ex.state_at(plan.execute_until)
    for plan in plans[1:]:
        truth = np.array([wave(t) for t in plan.times[:plan.execute_steps]])
        assert np.abs(plan.positions[:plan.execute_steps] - truth).max() < 2e-3


# ------------------------------------------------------------------------------ task space

TASK = TaskSpaceLimits()


def task_executor(**overrides) -> ChunkExecutor:
    return ChunkExecutor(TASK, ExecutorConfig(dt=DT, space="task", **overrides))


POS = np.array([[0.4, 0.25, 1.0], [0.4, -0.25, 1.0]])


def task_pose(t: float, rate: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Both arms still in position, turning about a swinging axis: Rx(r t) Rz(r t) R_arm,
    i.e. w = r (1, -sin r t, cos r t) in the base frame; the left gripper opens at 2 mm/s.
    Returns poses (2, 7) and grippers (2,)."""
    base = Rotation.from_euler("xyz", [[0.3, -0.2, 0.5], [-0.3, 0.2, 2.5]])
    turn = Rotation.from_euler("x", rate * t) * Rotation.from_euler("z", rate * t)
    q = (turn * base).as_quat(scalar_first=True)
    return np.concatenate([POS, q], axis=1), np.array([0.01 + 0.002 * t, 0.03])


def task_chunk(t_obs: float, rate: float = 1.0) -> TaskSpaceChunk:
    steps = [task_pose(t_obs + (i + 1) * DT, rate) for i in range(K)]
    return TaskSpaceChunk(np.array([p for p, _ in steps]), np.array([g for _, g in steps]))


def task_rest(chunk: TaskSpaceChunk, t: float, ex: ChunkExecutor) -> SpliceState:
    return ex.state_at(t, measured=chunk.to_vector()[0])


def angles_between(qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
    ra = Rotation.from_quat(qa.reshape(-1, 4), scalar_first=True)
    rb = Rotation.from_quat(qb.reshape(-1, 4), scalar_first=True)
    return (ra * rb.inv()).magnitude()


def test_task_space_constant_pose_is_kept():
    ex = task_executor()
    pose = task_chunk(0.0, rate=0.0)
    chunk = TaskSpaceChunk(np.repeat(pose.poses[:1], K, axis=0),
                           np.repeat(pose.grippers[:1], K, axis=0))
    plan = ex.plan(chunk, 0.0, task_rest(chunk, 0.0, ex))
    out = TaskSpaceChunk.from_vector(plan.positions)
    np.testing.assert_allclose(out.poses[..., :3], chunk.poses[..., :3], atol=1e-6)
    np.testing.assert_allclose(out.grippers, chunk.grippers, atol=1e-6)
    assert angles_between(out.poses[..., 3:], chunk.poses[..., 3:]).max() < 1e-6
    assert np.abs(plan.velocities).max() < 1e-5
    assert plan.velocities.shape == (K, 14) and plan.positions.shape == (K, 16)


def test_task_space_sign_flips_do_not_create_jumps():
    chunk = task_chunk(0.0)
    flipped = chunk.poses.copy()
    flipped[1::2, :, 3:] *= -1                               # every other step
    flipped[:, 1, 3:] *= -1                                  # and the whole right arm
    ex_a, ex_b = task_executor(), task_executor()
    start = task_rest(chunk, 0.0, ex_a)
    a = ex_a.plan(chunk, 0.0, start)
    b = ex_b.plan(TaskSpaceChunk(flipped, chunk.grippers), 0.0, start)
    np.testing.assert_allclose(a.coordinates, b.coordinates, atol=1e-6)
    q = TaskSpaceChunk.from_vector(b.positions).poses[..., 3:]        # (K, 2, 4)
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-9)
    assert np.all(np.sum(q[1:] * q[:-1], axis=-1) > 0)               # sign-continuous output
    steps = angles_between(q[1:], q[:-1])
    assert steps.max() <= np.sqrt(3) * TASK.angular_velocity * DT * (1 + TOL)
    # the same holds for the helper
    cont = make_sign_continuous(flipped[..., 3:], chunk.poses[0, :, 3:])
    assert np.all(np.sum(cont[1:] * cont[:-1], axis=-1) > 0)


def test_task_space_tracks_rotation_and_reports_base_frame_angular_velocity():
    ex = task_executor(execute_steps=4)
    # start turning as the chunk does (w = (1, 0, 1) at t = 0), gripper opening at 2 mm/s
    v0 = np.tile([0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.002], 2)
    v0[-1] = 0.0
    state = SpliceState(0.0, TaskSpaceChunk(*(x[None] for x in task_pose(0.0))).to_vector()[0],
                        v0, np.zeros(14))
    plans = []
    for _ in range(6):
        chunk = task_chunk(state.t)
        plan = ex.plan(chunk, state.t, state)
        plans.append(plan)
        state = ex.state_at(plan.execute_until)
    for plan in plans:
        out = TaskSpaceChunk.from_vector(plan.positions)
        ref = task_chunk(plan.start.t)
        assert angles_between(out.poses[:6, :, 3:], ref.poses[:6, :, 3:]).max() < 5e-3
        np.testing.assert_allclose(out.poses[..., :3], ref.poses[..., :3], atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(out.poses[..., 3:], axis=-1), 1.0, atol=1e-9)
        # reported angular velocity = central difference of the orientations (base frame)
        q = out.poses[..., 3:]
        for i in range(1, 6):
            r = [Rotation.from_quat(q[j], scalar_first=True) for j in (i - 1, i + 1)]
            w_fd = (r[1] * r[0].inv()).as_rotvec() / (2 * DT)              # (2, 3)
            w = plan.velocities[i].reshape(2, 7)[:, 3:6]
            np.testing.assert_allclose(w, w_fd, atol=2e-3)
    # orientation is continuous across every switch: the executed sequence turns smoothly
    q = executed(plans).reshape(-1, 2, 8)[..., 3:7]
    steps = angles_between(q[1:], q[:-1]).reshape(-1, 2)
    assert np.abs(np.diff(steps, axis=0)).max() < 1e-4
    np.testing.assert_allclose(steps, np.sqrt(2) * DT, atol=3e-4)


def test_task_space_workspace_box_is_met():
    ex = task_executor(execute_steps=K)
    chunk = task_chunk(0.0, rate=0.0)
    far = chunk.poses.copy()
    far[:, 0, :3] = [2.0, 0.25, 3.0]                           # outside the box (x, z)
    plan = ex.plan(TaskSpaceChunk(far, chunk.grippers + 1.0), 0.0, task_rest(chunk, 0.0, ex))
    out = TaskSpaceChunk.from_vector(plan.positions)
    assert np.all(out.poses[..., :3] <= TASK.workspace_upper) and np.all(
        out.poses[..., :3] >= TASK.workspace_lower)
    assert np.all(out.grippers <= TASK.gripper_upper)
    v = np.diff(np.concatenate([chunk.poses[:1, :, :3], out.poses[..., :3]]), axis=0) / DT
    assert np.abs(v).max() <= TASK.linear_velocity * (1 + TOL)


def test_task_space_bad_quaternion_raises():
    ex = task_executor()
    chunk = task_chunk(0.0)
    start = task_rest(chunk, 0.0, ex)
    bad = chunk.poses.copy()
    bad[3, 0, 3:] = 0.0
    with pytest.raises(ChunkExecutorError, match="quaternion"):
        ex.plan(TaskSpaceChunk(bad, chunk.grippers), 0.0, start)
    bad[3, 0, 3] = np.nan
    with pytest.raises(ChunkExecutorError, match="finite"):
        ex.plan(TaskSpaceChunk(bad, chunk.grippers), 0.0, start)


def test_a_splice_moving_into_a_bound_it_cannot_stop_before_is_stopped_not_refused():
    """At (or just before) a joint's limit while moving towards it, no jerk-limited plan can
    stay inside the bound: the QP is infeasible. The executor stops that joint at the splice
    instead of failing (the limit stops it anyway); the plan stays inside every bound."""
    from grrl_policy.chunk_executor import SpliceState, joint_limits
    lim = joint_limits(0.8, 4.0, 40.0)
    ex = ChunkExecutor(lim, ExecutorConfig(dt=0.1, execute_steps=8))
    base = 0.5 * (lim.lower + lim.upper)
    for margin, speed in ((0.0, 0.5), (0.01, 0.5), (0.05, 1.0)):
        p0 = base.copy()
        p0[0] = lim.upper[0] - margin
        v0 = np.zeros(16)
        v0[0] = speed * lim.velocity[0]
        v0[9] = -0.3 * lim.velocity[9]                # a joint far from its bounds keeps moving
        plan = ex.plan(np.tile(p0, (16, 1)), 0.0, SpliceState(0.0, p0, v0, np.zeros(16)))
        assert np.all(plan.positions <= lim.upper + 1e-6) and np.all(plan.positions >= lim.lower - 1e-6)
        assert np.all(np.abs(plan.velocities) <= lim.velocity + 1e-6)
        assert plan.positions[0, 9] < p0[9]           # its motion was kept, only joint 0 stopped
