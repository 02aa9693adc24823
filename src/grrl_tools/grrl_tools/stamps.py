"""``builtin_interfaces`` times and durations to and from seconds, one convention for every node:
stamps are matched exactly as integer nanoseconds, floats are rounded to the nearest one."""
from __future__ import annotations

import struct

from builtin_interfaces.msg import Duration, Time

_NS = 1_000_000_000
_HEADER = struct.Struct("<iI")      # builtin_interfaces/Time in little-endian CDR
_HEADER_BE = struct.Struct(">iI")


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


def header_stamp_ns(cdr: bytes) -> int | None:
    """Integer nanoseconds of the ``std_msgs/Header`` stamp that opens a CDR-serialised message
    (its first field), read without deserialising the rest (a 50 Hz recorder needs only the
    stamp); None when ``cdr`` is too short or not plain CDR."""
    if len(cdr) < 12 or cdr[0] != 0 or cdr[1] not in (0, 1):
        return None
    sec, nanosec = _HEADER.unpack_from(cdr, 4) if cdr[1] == 1 else _HEADER_BE.unpack_from(cdr, 4)
    return sec * _NS + nanosec
