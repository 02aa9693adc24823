"""Stage detection geometry: eyelet crossings, threading, the stage sequence, jams."""
from __future__ import annotations

import numpy as np

from bytemini_driver.task import (StageTracker, all_instructions, eyelet_crossings,
                                  instruction_text, threaded_from_end)

C, AX, R = np.array([0.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), 0.005


def line(y0, y1, n=11, x=0.0, z=0.0):
    return np.stack([np.full(n, x), np.linspace(y0, y1, n), np.full(n, z)], axis=1)


def test_crossings_signs_and_radius():
    assert [s for *_, s in eyelet_crossings(line(-0.1, 0.1), C, AX, R)] == [1]
    assert [s for *_, s in eyelet_crossings(line(0.1, -0.1), C, AX, R)] == [-1]
    assert eyelet_crossings(line(-0.1, 0.1, x=0.006), C, AX, R) == []   # beside the ring
    back = np.concatenate([line(-0.1, 0.1), line(0.1, -0.1)[1:] + [0.02, 0, 0]])
    assert [s for *_, s in eyelet_crossings(back, C, AX, R)] == [1]      # returns outside


def test_threaded_from_end_measures_length_beyond():
    # 21 points; middle (10) on the anchor side (y<0), end 20 beyond the eyelet (y>0)
    lace = np.concatenate([line(0.0, -0.2, 11)[::-1][:-1] * [1, 1, 1] + [0.3, 0, 0],
                           line(-0.1, 0.1, 11)])
    ok, beyond = threaded_from_end(lace, 20, C, AX, R)
    assert ok and abs(beyond - 0.1) < 1e-9
    assert threaded_from_end(lace, 0, C, AX, R) == (False, 0.0)


def test_stage_sequence_and_success():
    end = 20
    # (rest_length large: this synthetic lace is not equally spaced)
    tr = StageTracker(end, C + [0, 0, 0.1], AX, 0.0045, table_height=0.0, rest_length=1.0)
    flat = np.concatenate([np.stack([np.linspace(0.3, 0.1, 10), np.full(10, -0.05),
                                     np.zeros(10)], 1), line(-0.05, -0.01, 11)])
    flat[:, 1] -= 0.0
    assert tr.update(flat, set(), 0.0).stage == 0
    lifted = flat.copy()
    lifted[10:, 2] = 0.1
    assert tr.update(lifted, {"right"}, 0.0).stage == 1
    threaded = lifted.copy()
    threaded[10:, 1] = np.linspace(-0.03, 0.03, 11)
    assert tr.update(threaded, {"right"}, 0.0).stage == 2
    assert tr.update(threaded, {"left"}, 0.0).stage == 3
    pulled = threaded.copy()
    pulled[10:, 1] = np.linspace(-0.01, 0.19, 11)
    pulled[15:, 2] = 0.01
    st = tr.update(pulled, set(), 0.0)
    assert st.stage == 4 and st.success and st.reached == [1, 2, 3, 4]


def test_jams():
    tr = StageTracker(0, C, AX, 0.0045, 0.0, rest_length=0.02)
    lace = line(-0.1, 0.1, 11)
    lace[5, 1] += 0.05
    st = tr.update(lace, set(), 0.0)
    assert st.jammed and "over-stretched" in st.jam_reason
    tr = StageTracker(0, C, AX, 0.0045, 0.0, rest_length=0.02)
    assert "penetration" in tr.update(line(-0.1, 0.1, 11), set(), 0.01).jam_reason
    tr = StageTracker(0, C, AX, 0.0045, 0.0, rest_length=0.02)
    bad = line(-0.1, 0.1, 11)
    bad[3, 0] = np.nan
    assert tr.update(bad, set(), 0.0).jammed


def test_instruction_text():
    assert instruction_text("left", "right", 1) == \
        "thread the left lace end through the second eyelet on the right"


def test_all_instructions_are_distinct_and_exportable_by_name():
    from grrl_policy.text_encoder import instructions_from
    known = all_instructions()
    assert len(known) == len(set(known)) == 24
    assert instruction_text("right", "left", 5) in known
    # what `python -m grrl_policy.text_encoder OUT --from bytemini_driver.task:all_instructions`
    # precomputes features for
    assert instructions_from("bytemini_driver.task:all_instructions") == known
