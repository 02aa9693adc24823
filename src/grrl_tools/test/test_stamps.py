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


def test_the_header_stamp_is_read_from_serialised_messages_without_deserialising():
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState

    from grrl_interfaces.msg import TaskState
    from grrl_tools.stamps import header_stamp_ns
    for msg in (JointState(), TaskState()):
        msg.header.stamp = time_msg(40.06)
        msg.header.frame_id = "world"
        assert header_stamp_ns(serialize_message(msg)) == 40_060_000_000
    big = b"\x00\x00\x00\x00" + (3).to_bytes(4, "big") + (5).to_bytes(4, "big")
    assert header_stamp_ns(big) == 3_000_000_005                 # big-endian CDR
    for bad in (b"", b"\x00\x01\x00\x00\x01", b"\x07\x01\x00\x00" + bytes(8)):
        assert header_stamp_ns(bad) is None
