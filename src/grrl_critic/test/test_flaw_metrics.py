"""Measuring progress against ground-truth flaws: AUROC, the best precision at a recall, the
chunk truth, the delta table and the calibration, on hand-made progress curves."""
from __future__ import annotations

import numpy as np
import pytest

from grrl_critic.flaw_metrics import (FlawEvalConfig, auroc, best_precision_at_recall,
                                      evaluate_flaws, flawed_samples)

TYPES = ("none", "miss", "drop")


def test_auroc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    score = rng.integers(0, 5, 200).astype(float)           # many ties
    pos = rng.random(200) < 0.3
    pairs = [(a > b) + 0.5 * (a == b) for a in score[pos] for b in score[~pos]]
    assert auroc(score, pos) == pytest.approx(np.mean(pairs))
    assert auroc(np.arange(4.0), np.array([0, 0, 1, 1], bool)) == 1.0
    assert auroc(np.arange(4.0), np.array([1, 1, 0, 0], bool)) == 0.0
    assert auroc(np.ones(3), np.zeros(3, bool)) is None


def test_best_precision_at_recall_cuts_only_between_distinct_scores():
    score = np.array([0.9, 0.8, 0.8, 0.1, 0.0])
    pos = np.array([1, 1, 0, 0, 1], bool)
    # recall >= 0.6 needs the first three (two tied at 0.8): precision 2/3, remove if > 0.1
    prec, thr = best_precision_at_recall(score, pos, 0.6)
    assert prec == pytest.approx(2 / 3) and thr == pytest.approx(0.1)
    removed = score > thr
    assert (removed & pos).sum() / pos.sum() >= 0.6
    assert best_precision_at_recall(score, pos, 1.0)[0] == pytest.approx(3 / 5)
    assert best_precision_at_recall(score, np.zeros(5, bool), 0.5) == (None, None)


def test_chunk_truth_marks_the_samples_whose_chunk_enters_a_flaw():
    flaw = np.array([0, 0, 0, 2, 2, 0, 0])
    np.testing.assert_array_equal(flawed_samples(flaw, 2, "step"), flaw)
    np.testing.assert_array_equal(flawed_samples(flaw, 2, "chunk"), [0, 2, 2, 2, 2, 0, 0])
    np.testing.assert_array_equal(flawed_samples(flaw, 2, "onset"), [0, 2, 2, 0, 0, 0, 0])


def test_a_critic_whose_progress_falls_at_misses_scores_them_and_not_the_clean_steps():
    T, k = 60, 4
    rho, flaw, success = {}, {}, {}
    for e in range(20):
        r = np.linspace(0.2, 1.0, T)
        f = np.zeros(T, np.uint8)
        if e % 2:                                  # a miss at 30..39: progress falls there
            f[30:40] = 1
            r[30:40] -= 0.3
        if e % 5 == 0:                             # a drop the critic does not see
            f[10:15] = 2
        rho[e], flaw[e], success[e] = r, f, e % 3 != 0
    ev = evaluate_flaws(rho, flaw, success, TYPES, FlawEvalConfig(horizon=k, deltas=(0.05, 0.5)))
    # the window's drop fires on the k steps before the fall, where no step is flawed itself:
    # per step the miss scores below chance, per onset perfectly
    assert ev.auroc["miss"] < 0.5 and ev.auroc["drop"] == pytest.approx(0.5, abs=0.1)
    onset = evaluate_flaws(rho, flaw, success, TYPES, FlawEvalConfig(horizon=k, truth="onset"))
    assert onset.auroc["miss"] == 1.0 and onset.precision_at_recall["miss"] == 1.0
    assert ev.samples == 20 * T and ev.samples_by_type == {"miss": 100, "drop": 20}
    row = {r["delta"]: r for r in ev.by_delta}
    assert row[0.5]["removed_fraction"] == 0.0 and row[0.5]["precision"] is None
    assert row[0.05]["recall_by_type"] == {"miss": 0.0, "drop": 0.0}
    assert row[0.05]["removed_fraction"] == pytest.approx(10 * k / (20 * T))
    chunk = evaluate_flaws(rho, flaw, success, TYPES, FlawEvalConfig(horizon=k, truth="chunk"))
    assert 0.6 < chunk.auroc["miss"] < onset.auroc["miss"]   # the removals count, the rest not
    cal = ev.calibration
    assert cal["rho_last_successful"] == pytest.approx(1.0)
    assert sum(b["count"] for b in cal["bins"]) == 20 * T and 0 <= cal["ece"] <= 1
    d = ev.as_dict()
    assert "curves" not in d and d["config"]["horizon"] == k


def test_by_stage_says_where_the_filter_removes_and_how_well():
    T, k = 40, 4
    rho, flaw, stages = {}, {}, {}
    for e in range(6):
        r = np.linspace(0.2, 1.0, T)
        f = np.zeros(T, np.uint8)
        r[25:30] -= 0.3                            # a fall in stage 1 where a miss is labelled
        f[25:30] = 1
        r[5] -= 0.3                                # a fall in stage 0 on clean steps
        rho[e], flaw[e] = r, f
        stages[e] = (np.arange(T) >= 20).astype(np.int8)
    cfg = FlawEvalConfig(horizon=k, truth="chunk", deltas=(0.1,))
    ev = evaluate_flaws(rho, flaw, {e: True for e in rho}, TYPES, cfg, stages)
    s0, s1 = ev.by_stage["0"], ev.by_stage["1"]
    assert s0["samples"] + s1["samples"] == 6 * T and s0["flawed_fraction"] == 0.0
    assert s0["by_delta"][0]["removed_fraction"] > 0 and s0["by_delta"][0]["precision"] == 0.0
    assert s1["by_delta"][0]["precision"] == 1.0 and s1["by_delta"][0]["recall"] > 0
    assert evaluate_flaws(rho, flaw, {e: True for e in rho}, TYPES, cfg).by_stage == {}
    with pytest.raises(ValueError, match="stage labels"):
        evaluate_flaws(rho, flaw, {e: True for e in rho}, TYPES, cfg, {e: np.zeros(3) for e in rho})


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no flaw labels"):
        evaluate_flaws({0: np.zeros(3)}, {}, {0: True}, TYPES)
    with pytest.raises(ValueError, match="3 progress values, 2 labels"):
        evaluate_flaws({0: np.zeros(3)}, {0: np.zeros(2)}, {0: True}, TYPES)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_flaws({0: np.array([0, np.nan, 1])}, {0: np.zeros(3)}, {0: True}, TYPES)
    with pytest.raises(ValueError, match="truth"):
        FlawEvalConfig(truth="episode")
