"""Reading an episode record (the episode node's MCAP, rosbag2 layout): its typestore, the
messages of chosen topics, and the episode's start and final events. One reader for the
dataset converter (:mod:`grrl_trainer.data.convert`) and the online trainer
(:mod:`grrl_trainer.episodes.online_record`).

    with RecordReader(path) as rec:
        for topic, t_rec, raw in rec.messages([JOINTS, EVENTS]):
            msg = rec.decode(raw, topic)

Topics are named by their suffix relative to the robot's namespace (``bytemini/joint_states``
matches ``/bytemini/joint_states`` and ``/robot1/bytemini/joint_states``); ``t_rec`` is the
record time (ns) the episode node wrote the message at.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

LOG = logging.getLogger(__name__)

#: EpisodeEvent.event values (grrl_interfaces/msg/EpisodeEvent)
EVENT_STARTED, EVENT_RETRY, EVENT_FINISHED, EVENT_ABORTED, EVENT_INVALID = 0, 2, 3, 4, 5
END_EVENTS = (EVENT_FINISHED, EVENT_ABORTED, EVENT_INVALID)

#: topics of a record, relative to the namespace
JOINTS, TASK, CHUNK, EVENTS = ("bytemini/joint_states", "bytemini/sim/task_state",
                               "grrl/action_chunk", "grrl/episode")
COMMAND = "bytemini/command/joint_trajectory"
CAMERA_TOPIC = "bytemini/camera/{}/image_raw"
TCP_TOPIC = "bytemini/{}/tcp_pose"


def record_typestore(bag) -> Any:
    """The record's own message definitions (so records of older interface versions stay
    readable), else those of the installed ``grrl_interfaces``."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from grrl_trainer.episodes.recorder import typestore_with_custom_types

    try:
        store = get_typestore(Stores.ROS2_KILTED)
        types: dict = {}
        for conn in bag.connections:
            if conn.msgtype.startswith("grrl_interfaces/") and conn.msgdef and conn.msgdef.data:
                types.update(get_types_from_msg(conn.msgdef.data, conn.msgtype))
        if types:
            store.register(types)
            return store
    except Exception as exc:  # noqa: BLE001 - any trouble: the installed definitions
        LOG.debug("record message definitions unusable (%s); using the installed ones", exc)
    return typestore_with_custom_types()


def topic_key(topic: str, wanted: list[str]) -> str | None:
    """The entry of ``wanted`` that the recorded ``topic`` is (by suffix), None if none."""
    return next((w for w in wanted if topic == "/" + w or topic.endswith("/" + w)), None)


def header_stamp(msg: Any) -> float:
    """A message's ``header.stamp`` in seconds."""
    return msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec


class RecordReader:
    """An open episode record. Any error of the underlying reader propagates as it is: callers
    turn it into their own "not a readable episode record"."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.msgtypes: dict[str, str] = {}
        """ROS type of each topic read so far, by its key in ``messages``' ``topics``"""
        self._bag = None
        self.store: Any = None

    def __enter__(self) -> "RecordReader":
        from rosbags.rosbag2 import Reader

        self._bag = Reader(self.path)
        self._bag.open()
        try:
            self.store = record_typestore(self._bag)
        except BaseException:
            self._bag.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._bag.close()

    def messages(self, topics: list[str]) -> Iterator[tuple[str, int, bytes]]:
        """(topic key, record time in ns, CDR bytes) of the messages on ``topics``, in record
        order."""
        keys = {}
        for conn in self._bag.connections:
            key = topic_key(conn.topic, topics)
            if key is not None:
                keys[conn.id] = key
                self.msgtypes[key] = conn.msgtype
        conns = [c for c in self._bag.connections if c.id in keys]
        if not conns:               # (an empty list would mean every connection to rosbags)
            return
        for conn, t_rec, raw in self._bag.messages(connections=conns):
            yield keys[conn.id], t_rec, raw

    def decode(self, raw: bytes, key: str) -> Any:
        """The message of topic ``key`` (as returned by :meth:`messages`)."""
        return self.store.deserialize_cdr(raw, self.msgtypes[key])


def start_and_end(events: list[tuple[int, Any]]) -> tuple[Any | None, tuple[int, Any] | None]:
    """From the (record time, EpisodeEvent) of a record: its STARTED event and (record time,
    event) of its final end event (FINISHED, ABORTED or INVALID), each None if missing."""
    started = next((e for _, e in events if e.event == EVENT_STARTED), None)
    ends = [(t, e) for t, e in events if e.event in END_EVENTS]
    return started, (ends[-1] if ends else None)


def unusable_end(final: Any) -> str:
    """Why an episode that ended with ``final`` is not to be learned from: 'invalid' (physics
    blow-up, sensor failure) or 'aborted' (cancelled or preempted, not by the time limit);
    '' if it may be (finished, or stopped by the time limit)."""
    if final.event == EVENT_INVALID:
        return "invalid"
    if final.event == EVENT_ABORTED and not final.message.startswith("time limit"):
        return "aborted"
    return ""
