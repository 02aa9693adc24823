"""Times to and from seconds: exact round trips to the nanosecond, and the float pitfalls the
helpers exist for (2.3 s is 2.29999999... in binary; truncating it loses a nanosecond)."""
import pytest

from grrl_tools.stamps import duration_msg, stamp_ns, stamp_s, time_msg


@pytest.mark.parametrize("t", [0.0, 0.002, 0.06, 1.0, 2.3, 59.998, 3600.5])
def test_time_round_trips_to_the_nanosecond(t):
    msg = time_msg(t)
    assert 0 <= msg.nanosec < 1_000_000_000
    assert stamp_ns(msg) == round(t * 1e9)
    assert stamp_s(msg) == pytest.approx(t, abs=1e-9)
    assert time_msg(stamp_s(msg)) == msg


def test_binary_fractions_round_instead_of_truncating():
    assert (time_msg(2.3).sec, time_msg(2.3).nanosec) == (2, 300_000_000)
    assert stamp_ns(time_msg(0.06)) == 60_000_000


def test_negative_times_are_refused_and_durations_clamped():
    with pytest.raises(ValueError, match="negative"):
        time_msg(-0.5)
    assert stamp_ns(duration_msg(-0.5)) == 0
    assert (duration_msg(1.25).sec, duration_msg(1.25).nanosec) == (1, 250_000_000)
