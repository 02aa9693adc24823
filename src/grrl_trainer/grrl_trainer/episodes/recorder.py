"""Episode recording: serialized ROS 2 messages into an MCAP file in rosbag2 layout.

The episode node subscribes with ``raw=True`` and hands the CDR bytes straight to the
recorder, so nothing is deserialized and re-serialized (``rclpy.serialization`` pads its
output, which ``rosbags`` rejects). The result is a rosbag2 directory (``metadata.yaml`` +
``*.mcap``) that ``rosbags``, ``ros2 bag`` and Foxglove read.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

LOG = logging.getLogger(__name__)

#: Our interface package, whose message definitions the typestore must learn.
CUSTOM_PACKAGES = ("grrl_interfaces",)


def typestore_with_custom_types(share_dirs: dict[str, Path] | None = None) -> Typestore:
    """The ROS 2 Kilted typestore plus the messages of ``grrl_interfaces``."""
    store = get_typestore(Stores.ROS2_KILTED)
    if share_dirs is None:
        from ament_index_python.packages import get_package_share_directory

        share_dirs = {p: Path(get_package_share_directory(p)) for p in CUSTOM_PACKAGES}
    types: dict = {}
    for pkg, share in share_dirs.items():
        for msg in sorted((share / "msg").glob("*.msg")):
            types.update(get_types_from_msg(msg.read_text(), f"{pkg}/msg/{msg.stem}"))
    store.register(types)
    return store


class EpisodeRecorder:
    """Writes one episode. Thread-safe: subscriptions may call :meth:`write` concurrently."""

    def __init__(self, path: Path, topics: dict[str, str], typestore: Typestore):
        """path: the rosbag2 directory to create; topics: topic -> ROS type
        (``sensor_msgs/msg/Image``)."""
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"episode record {self.path} already exists")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._conns = {}
        for topic, msgtype in topics.items():
            if msgtype not in typestore.fielddefs:
                raise KeyError(f"type {msgtype} of {topic} is unknown to the typestore")
            self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=typestore)
        self.counts = {t: 0 for t in topics}
        self._lock = threading.Lock()
        self._closed = False

    def write(self, topic: str, data: bytes, stamp_ns: int) -> None:
        with self._lock:
            if self._closed:
                return
            self._writer.write(self._conns[topic], stamp_ns, bytes(data))
            self.counts[topic] += 1

    def close(self) -> dict[str, int]:
        """Finish the file (metadata.yaml included); returns message counts per topic."""
        with self._lock:
            if not self._closed:
                self._writer.close()
                self._closed = True
        return dict(self.counts)
