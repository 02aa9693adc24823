"""The filter's coverage guards: stages that are never removed, and a cap on the removals within
each band of progress. Hand-made progress curves whose drops are known."""

import numpy as np
import pytest

from grrl_critic.filtering import FilterConfig, keep_mask, keep_masks


def _episodes():
    """Two episodes; episode 0 dips early (low progress), episode 1 dips late (high progress)."""
    low = np.array([0.10, 0.12, 0.05, 0.06, 0.13, 0.15, 0.16, 0.17])
    high = np.array([0.60, 0.62, 0.64, 0.50, 0.66, 0.70, 0.72, 0.75])
    return {0: low, 1: high}


RULE = dict(delta=0.02, horizon=2, drop="peak_to_trough")


def test_without_guards_it_is_the_rule_per_episode():
    rho = _episodes()
    keep = keep_masks(rho, FilterConfig(**RULE))
    for e, r in rho.items():
        np.testing.assert_array_equal(keep[e], keep_mask(r, FilterConfig(**RULE)))
    assert not keep[0].all() and not keep[1].all()


def test_keep_stages_keeps_exactly_the_named_stages_back():
    rho = _episodes()
    stages = {0: np.array([0, 0, 0, 0, 1, 1, 1, 1]), 1: np.array([2, 2, 2, 2, 3, 3, 3, 3])}
    plain = keep_masks(rho, FilterConfig(**RULE))
    keep = keep_masks(rho, FilterConfig(**RULE, keep_stages=(0,)), stages)
    np.testing.assert_array_equal(keep[0], plain[0] | (stages[0] == 0))
    np.testing.assert_array_equal(keep[1], plain[1])           # stage 0 does not occur there
    assert keep[0][:4].all() and not plain[0][:4].all()        # something was kept back
    # stage numbers from a command line arrive as text
    assert FilterConfig(**RULE, keep_stages=("0", "2")).keep_stages == (0, 2)


def test_keep_stages_refuses_a_dataset_without_stage_labels():
    with pytest.raises(ValueError, match="task stage"):
        keep_masks(_episodes(), FilterConfig(**RULE, keep_stages=(0,)), None)
    with pytest.raises(ValueError, match="stage labels for"):
        keep_masks(_episodes(), FilterConfig(**RULE, keep_stages=(0,)), {0: np.zeros(3, int), 1: np.zeros(8, int)})
    with pytest.raises(ValueError, match="stage numbers"):
        FilterConfig(keep_stages=("pick",))


def test_the_cap_keeps_the_smallest_drops_back_within_each_band():
    rng = np.random.default_rng(0)
    # one long episode in the band [0, 0.5) whose every window drops, by a known amount each
    drops = rng.uniform(0.05, 0.2, 40)
    rho = {0: np.empty(81)}
    rho[0][0::2] = 0.3
    rho[0][1::2] = 0.3 - drops                  # a window of 1 step sees exactly one fall
    rho[1] = np.linspace(0.6, 0.9, 20)          # band [0.5, 1): rising, nothing removed
    cfg = dict(delta=0.01, horizon=1, drop="peak_to_trough", progress_bands=2)
    plain = keep_masks(rho, FilterConfig(**cfg))
    assert (~plain[0]).sum() == 40 and plain[1].all()
    keep = keep_masks(rho, FilterConfig(**cfg, max_removed_fraction=0.25))
    removed = ~keep[0]
    assert removed.sum() == int(0.25 * 81)      # 20 of the band's 81 samples
    assert keep[1].all()
    # the removed are the 20 largest drops (sample 2i falls by drops[i] to 2i+1)
    np.testing.assert_array_equal(np.flatnonzero(removed), np.sort(2 * np.argsort(drops)[-20:]))
    # a cap above what the rule removes changes nothing
    same = keep_masks(rho, FilterConfig(**cfg, max_removed_fraction=0.9))
    np.testing.assert_array_equal(np.concatenate(list(same.values())), np.concatenate(list(plain.values())))


@pytest.mark.parametrize("bad", [dict(max_removed_fraction=1.5), dict(max_removed_fraction=-0.1),
                                 dict(progress_bands=0)])
def test_guard_settings_out_of_range_are_refused(bad):
    with pytest.raises(ValueError):
        FilterConfig(**bad)


def test_keep_stages_that_cover_most_of_the_data_are_warned_about(caplog):
    rho = _episodes()
    unrecorded = {e: np.zeros(len(r), int) for e, r in rho.items()}   # stages never recorded
    with caplog.at_level("INFO", logger="grrl_critic.filtering"):
        keep = keep_masks(rho, FilterConfig(**RULE, keep_stages=(0,)), unrecorded)
    assert all(k.all() for k in keep.values())
    assert any(r.levelname == "WARNING" and "100.0% of the samples" in r.getMessage() for r in caplog.records)
