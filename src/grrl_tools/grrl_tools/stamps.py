"""``builtin_interfaces`` times and durations to and from seconds, one convention for every node:
stamps are matched exactly as integer nanoseconds, floats are rounded to the nearest one."""
from __future__ import annotations

from builtin_interfaces.msg import Duration, Time

_NS = 1_000_000_000


def stamp_ns(stamp) -> int:
    """Integer nanoseconds of a ``builtin_interfaces/Time`` (exact, for matching stamps)."""
    return int(stamp.sec) * _NS + int(stamp.nanosec)


def stamp_s(stamp) -> float:
    """Seconds of a ``builtin_interfaces/Time`` (or Duration)."""
    return stamp.sec + stamp.nanosec * 1e-9


def time_msg(seconds: float) -> Time:
    """The ``builtin_interfaces/Time`` of ``seconds`` (>= 0), to the nearest nanosecond: the
    inverse of :func:`stamp_s`."""
    ns = round(seconds * 1e9)
    if ns < 0:
        raise ValueError(f"a time stamp cannot be negative, got {seconds} s")
    return Time(sec=ns // _NS, nanosec=ns % _NS)


def duration_msg(seconds: float) -> Duration:
    """The ``builtin_interfaces/Duration`` of ``seconds``, to the nearest nanosecond (negative
    durations become 0: a trajectory point is never in the past)."""
    ns = max(round(seconds * 1e9), 0)
    return Duration(sec=ns // _NS, nanosec=ns % _NS)
