"""Command validation and quintic execution."""
from __future__ import annotations

import numpy as np
import pytest

from bytemini_driver.trajectory import (DriverLimits, TrajectoryError, TrajectoryFollower,
                                        Waypoint, validate)

LIMITS = DriverLimits(["a", "b", "g_gripper_finger_joint"], np.array([-1.0, -1.0, 0.0]), np.array([1.0, 1.0, 0.04]),
                     np.array([2.0, 2.0, 0.1]))


def wp(t, p, v=None, a=None):
    return Waypoint(t, np.asarray(p, float), None if v is None else np.asarray(v, float),
                    None if a is None else np.asarray(a, float))


@pytest.mark.parametrize("names, points, match", [
    ([], [wp(1, [])], "no joint names"),
    (["a", "a"], [wp(1, [0, 0])], "duplicate"),
    (["a", "z"], [wp(1, [0, 0])], r"unknown joint\(s\) \['z'\]"),
    (["a"], [], "no trajectory points"),
    (["a", "b"], [wp(1, [0])], "1 positions for 2 joints"),
    (["a"], [wp(1, [np.nan])], "non-finite position"),
    (["a"], [wp(1, [1.5])], r"a = 1.5000 outside \[-1.0000, 1.0000\]"),
    (["g_gripper_finger_joint"], [wp(1, [0.05])], "g_gripper_finger_joint = 0.0500 outside"),
    (["a"], [wp(1, [0.0], [np.inf])], "non-finite velocity"),
    (["a"], [wp(1, [0.0], [3.0])], "velocity 3.000 exceeds 2.000"),
    (["a"], [wp(1, [0.0]), wp(0.5, [0.1])], "increasing"),
    (["a"], [wp(np.nan, [0.0])], "finite"),
    (["a"], [wp(1, [0.0], [0.0, 0.0])], "2 velocities for 1 joints"),
])
def test_bad_commands_are_refused_with_a_reason(names, points, match):
    with pytest.raises(TrajectoryError, match=match):
        validate(names, points, LIMITS)


def test_quintic_meets_waypoints_and_is_continuous():
    traj = validate(["b", "a"], [wp(0.5, [0.5, -0.2], [0.4, 0.0], [0.0, 0.0]),
                                 wp(1.0, [0.8, 0.3], [0.0, 0.0], [0.0, 0.0])], LIMITS)
    f = TrajectoryFollower(3)
    start = np.array([0.1, 0.0, 0.02])
    f.hold(start)
    f.start(traj, 10.0, start)
    ts = np.arange(10.0, 11.2, 0.001)
    out = np.array([f.sample(t, start) for t in ts])
    assert np.allclose(out[0], start, atol=1e-9)
    i = np.searchsorted(ts, 10.5)
    assert np.allclose(out[i, [1, 0]], [0.5, -0.2], atol=2e-3)
    assert np.allclose(out[-1], [0.3, 0.8, 0.02])          # final point, then held
    vel = np.diff(out, axis=0) / 0.001
    assert np.abs(np.diff(vel, axis=0)).max() < 0.05       # no velocity jumps
    assert np.allclose(out[:, 2], 0.02)                    # unnamed joint holds
    assert f.active is None and np.allclose(f.sample(20.0, start), [0.3, 0.8, 0.02])


def test_hold_aborts_the_trajectory():
    traj = validate(["a"], [wp(1.0, [0.9])], LIMITS)
    f = TrajectoryFollower(3)
    f.start(traj, 0.0, np.zeros(3))
    mid = f.sample(0.5, np.zeros(3))
    f.hold(mid)
    assert f.active is None
    assert np.allclose(f.sample(5.0, mid), mid)


def test_implied_speed_is_checked_from_the_current_target():
    start = np.array([0.0, 0.0, 0.02])
    with pytest.raises(TrajectoryError, match=r"a would need 10.00 rad/s \(limit 2.00\)"):
        validate(["a"], [wp(0.1, [1.0])], LIMITS, start=start)
    with pytest.raises(TrajectoryError, match=r"a would need 50.00 rad/s"):
        validate(["a"], [wp(0.02, [1.0])], LIMITS, start=start)
    validate(["a"], [wp(0.02, [0.5])], LIMITS, start=start)         # a burst step: judged over 0.1 s
    with pytest.raises(TrajectoryError, match="a jump of 0.500 at time_from_start 0"):
        validate(["a"], [wp(0.0, [0.5])], LIMITS, start=start)
    with pytest.raises(TrajectoryError, match="b would need"):
        validate(["b"], [wp(0.5, [0.5]), wp(0.55, [-0.5])], LIMITS, start=start)
    validate(["a"], [wp(0.25, [1.0])], LIMITS, start=start)         # 4 rad/s: tolerated
    validate(["g_gripper_finger_joint"], [wp(0.02, [0.0])], LIMITS, start=start)  # servoed


def test_sampled_targets_stay_inside_the_limits():
    traj = validate(["a"], [wp(0.5, [0.99], [1.9]), wp(1.0, [0.99])], LIMITS)
    f = TrajectoryFollower(3, LIMITS.lower, LIMITS.upper)
    f.hold(np.zeros(3))
    f.start(traj, 0.0, np.zeros(3))
    out = np.array([f.sample(t, np.zeros(3)) for t in np.arange(0, 1.0, 0.005)])
    assert out[:, 0].max() <= 1.0
