"""The shoe-lacing scene compiles and steps cleanly, mirrors exactly, and the scripted expert
solves it through the same interface a policy has."""
from __future__ import annotations

import re

import mujoco
import numpy as np
import pytest

from bytemini_driver.expert import ScriptedExpert
from bytemini_driver.rollout import run_expert_episode, wilson_interval
from bytemini_driver.scene import mirror_params, sample_scene
from bytemini_driver.sim import ShoeLacingSim


@pytest.fixture(scope="module")
def sim() -> ShoeLacingSim:
    s = ShoeLacingSim()
    yield s
    s.close()


def test_scene_steps_a_second_of_random_control_without_warnings(sim: ShoeLacingSim):
    sim.reset(7)
    rng = np.random.default_rng(0)
    lo, hi = sim.joint_limits
    home = sim.home_q
    for _ in range(50):
        sim.set_joint_targets(np.clip(home + rng.normal(0, 0.05, home.shape), lo, hi))
        sim.step(10)
    assert all(w.number == 0 for w in sim.data.warning), \
        [(mujoco.mjtWarning(i).name, w.number) for i, w in enumerate(sim.data.warning) if w.number]
    assert sim.data.time == pytest.approx(1.0, abs=0.01)
    assert np.all(np.isfinite(sim.lace_points()))


def test_reset_is_deterministic_and_lace_rests_on_the_table(sim: ShoeLacingSim):
    a = sim.reset(3)
    pa = sim.lace_points()
    b = sim.reset(3)
    assert a.as_dict() == b.as_dict()
    assert np.allclose(pa, sim.lace_points(), atol=1e-9)
    ends = pa[[0, -1]]
    assert np.all(np.abs(ends[:, 2] - 0.752) < 0.003)


def test_mirrored_scene_is_the_mirror_image():
    p = sample_scene(11)
    m = sample_scene(11, mirrored=True)
    assert m.mirrored and not p.mirrored
    assert m.shoe_xy == (p.shoe_xy[0], -p.shoe_xy[1]) and m.shoe_yaw == -p.shoe_yaw
    assert {p.end_side, m.end_side} == {"left", "right"}
    assert {p.eyelet_side, m.eyelet_side} == {"left", "right"}
    assert np.allclose(m.lace_points[::-1], p.lace_points * [1, -1, 1])
    assert mirror_params(m).as_dict() == p.as_dict()


@pytest.mark.slow
@pytest.mark.parametrize("seed, mirrored", [(0, False), (1, False), (0, True)])
def test_expert_solves_seeded_scenes(sim: ShoeLacingSim, seed: int, mirrored: bool):
    result = run_expert_episode(sim, ScriptedExpert(), seed, mirrored)
    assert result.success, result
    assert sim.tracker.state.reached == [1, 2, 3, 4]
    assert result.sim_time < 25.0


def test_fixing_a_task_choice_keeps_the_rest_of_the_scene():
    free = sample_scene(21)
    for other in ("left", "right"):
        fixed = sample_scene(21, end_side=other, eyelet_index=1 - free.eyelet_index)
        assert fixed.end_side == other and fixed.eyelet_index == 1 - free.eyelet_index
        np.testing.assert_array_equal(fixed.lace_points, free.lace_points)
        assert (fixed.shoe_xy, fixed.shoe_yaw, fixed.eyelet_side) == \
            (free.shoe_xy, free.shoe_yaw, free.eyelet_side)


@pytest.mark.parametrize("choice", [dict(eyelet_index=2), dict(eyelet_index=-1),
                                    dict(eyelet_index=99), dict(eyelet_index=True),
                                    dict(end_side="up"), dict(eyelet_side="")])
def test_impossible_task_choices_are_refused_by_name(choice):
    (name, value), = choice.items()
    with pytest.raises(ValueError, match=f"{name} must .* got {re.escape(repr(value))}"):
        sample_scene(3, **choice)


def test_wilson_interval():
    lo, hi = wilson_interval(97, 100)
    assert 0.915 < lo < 0.916 and 0.989 < hi < 0.990  # Wilson 95% for 97/100
