"""The state observation: same numbers from the simulator and from the dataset's scene, and its
mirror is the mirrored scene's state."""
import numpy as np

from bytemini_driver.sim import ShoeLacingSim
from bytemini_driver.sim_state import (STATE_DIM, eyelet_from_scene, mirror_state,
                                       state_vector)
from grrl_policy import sim_state_spec as spec


def test_scene_parameters_give_the_simulators_eyelet_and_mirror_matches_the_mirrored_scene():
    sim = ShoeLacingSim()
    states = []
    for mirrored in (False, True):
        p = sim.reset(3, mirrored=mirrored)
        c, d = sim.eyelet_world(p.eyelet_side, p.eyelet_index, p.end_side)
        c2, d2, yaw = eyelet_from_scene(p.as_dict())
        np.testing.assert_allclose(c, c2, atol=1e-3)
        np.testing.assert_allclose(d, d2, atol=1e-3)
        states.append(state_vector(p.lace_points, c, d, yaw))
    assert states[0].shape == (STATE_DIM,)
    # the simulator fills the policy's spec row by row (grrl_policy.sim_state_spec); c, d, p:
    # the mirrored episode's
    np.testing.assert_allclose(states[1][spec.EYELET_CENTER], c, atol=1e-6)
    np.testing.assert_allclose(states[1][spec.THREADING_DIRECTION], d, atol=1e-6)
    np.testing.assert_allclose(states[1][spec.SHOE_AXIS], [np.cos(p.shoe_yaw), np.sin(p.shoe_yaw), 0],
                               atol=1e-4)                       # the yaw as the dataset rounds it
    lace = states[1][spec.LACE].reshape(spec.LACE_POINTS, 3)
    np.testing.assert_allclose(lace[[0, -1]], p.lace_points[[0, -1]], atol=1e-6)
    np.testing.assert_allclose(mirror_state(states[0]), states[1], atol=2e-3)
    np.testing.assert_array_equal(mirror_state(mirror_state(states[0])), states[0])


def test_batched_lace_broadcasts_the_episode_constants():
    lace = np.random.default_rng(0).normal(size=(5, 41, 3))
    s = state_vector(lace, np.ones(3), np.zeros(3), 0.3)
    assert s.shape == (5, STATE_DIM) and s.dtype == np.float32
    np.testing.assert_allclose(s[2, :3], lace[2, 0])
    np.testing.assert_allclose(s[4, 30:33], lace[4, 40])
