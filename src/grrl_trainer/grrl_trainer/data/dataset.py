"""The episode dataset: one HDF5 file per episode, chunked and compressed, random access.

Layout of a dataset directory::

    info.json                 schema version, step rate, image size, how it was collected
    episodes/ep_<seed>.h5     one episode (written to a temporary file, then renamed)

Schema version 2 of an episode file (T steps at ``fps``; layouts as in :mod:`grrl_trainer.keys`):

    attrs: schema_version, episode_id, seed, mirrored, instruction, success, fps, n_steps,
           retry_keyframes (int array, dataset steps), scene (JSON), flaws (JSON), source
    timestamp                     (T,)          float64  simulated time (s)
    observation/joint_positions   (T, 16)       float32
    observation/tcp_pose          (T, 2, 7)     float32  per side: xyz, quaternion wxyz
    observation/gripper           (T, 2)        float32
    observation/images/<camera>   (T, H, W, 3)  uint8    head, left_wrist, right_wrist (optional)
    observation/lace              (T, V, 3)     float32  simulator ground truth (optional)
    action/joint_positions        (T, 16)       float32  target the controller was heading to
    action/tcp_pose               (T, 2, 7)     float32  FK of that target
    action/gripper                (T, 2)        float32
    task/stage                    (T,)          uint8    ground-truth stage (0..4): plots, filter keep_stages
    task/flaw                     (T,)          uint8    ground-truth flaw of the step (optional:
                                                         simulated demonstrations only), codes
                                                         named by the attr ``flaw_types``

Version 1 is version 2 without ``task/flaw``; it is still read (``meta["flaw_labels"]`` False).
The flaw labels are for measuring a filter against the truth, never for training.

A retry keyframe m marks the step where a retry begins; the steps 0..m form a hindsight
failed trajectory (paper section 3.1).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from bytemini_driver.demonstrator import FLAW_TYPES
from grrl_trainer import keys

LOG = logging.getLogger(__name__)
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
FLAW = "task/flaw"
EPISODE_GLOB = "ep_*.h5"

#: HDF5 dataset path of each sample key
PATHS = {
    keys.STATE_JOINTS: "observation/joint_positions", keys.STATE_TCP: "observation/tcp_pose",
    keys.STATE_GRIPPER: "observation/gripper", keys.ACTION_JOINTS: "action/joint_positions",
    keys.ACTION_TCP: "action/tcp_pose", keys.ACTION_GRIPPER: "action/gripper",
    **{keys.IMAGE.format(camera=c): f"observation/images/{c}" for c in keys.CAMERAS},
}
REQUIRED = ("timestamp", "observation/joint_positions", "observation/tcp_pose",
            "observation/gripper", "action/joint_positions", "action/tcp_pose",
            "action/gripper", "task/stage")


class DatasetError(Exception):
    """A dataset or episode that cannot be used; the message names the file."""


@dataclass
class EpisodeRecord:
    """One episode in memory, as produced by a collector or a converter."""

    episode_id: str
    seed: int
    instruction: str
    success: bool
    fps: float
    timestamp: np.ndarray
    joints: np.ndarray
    tcp: np.ndarray
    gripper: np.ndarray
    action_joints: np.ndarray
    action_tcp: np.ndarray
    action_gripper: np.ndarray
    stage: np.ndarray
    retry_keyframes: list[int] = field(default_factory=list)
    mirrored: bool = False
    scene: dict[str, Any] = field(default_factory=dict)
    flaws: dict[str, Any] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    lace: np.ndarray | None = None
    source: str = "sim"
    flaw: np.ndarray | None = None
    """(T,) uint8 ground-truth flaw codes (bytemini_driver.demonstrator.FLAW_TYPES), if known"""

    def __len__(self) -> int:
        return len(self.timestamp)


def episode_path(root: Path, seed: int, mirrored: bool = False) -> Path:
    return Path(root) / "episodes" / f"ep_{seed:06d}{'_m' if mirrored else ''}.h5"


def write_episode(path: Path, rec: EpisodeRecord) -> Path:
    """Write atomically: a killed writer leaves no half episode behind."""
    n = len(rec)
    arrays = {"timestamp": np.asarray(rec.timestamp, np.float64),
              "observation/joint_positions": rec.joints, "observation/tcp_pose": rec.tcp,
              "observation/gripper": rec.gripper, "action/joint_positions": rec.action_joints,
              "action/tcp_pose": rec.action_tcp, "action/gripper": rec.action_gripper,
              "task/stage": np.asarray(rec.stage, np.uint8)}
    if rec.flaw is not None:
        if np.asarray(rec.flaw).max(initial=0) >= len(FLAW_TYPES):
            raise ValueError(f"flaw codes of episode {rec.episode_id} outside 0..{len(FLAW_TYPES) - 1}")
        arrays[FLAW] = np.asarray(rec.flaw, np.uint8)
    for name, arr in arrays.items():
        if len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} steps, timestamp has {n}")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} of episode {rec.episode_id} has non-finite values")
    if any(not 0 <= k < n for k in rec.retry_keyframes):
        raise ValueError(f"retry keyframes {rec.retry_keyframes} outside 0..{n - 1}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with h5py.File(tmp, "w") as f:
        f.attrs.update(schema_version=SCHEMA_VERSION, episode_id=rec.episode_id, seed=rec.seed,
                       mirrored=rec.mirrored, instruction=rec.instruction,
                       success=bool(rec.success), fps=float(rec.fps), n_steps=n,
                       retry_keyframes=np.asarray(rec.retry_keyframes, np.int64),
                       scene=json.dumps(rec.scene), flaws=json.dumps(rec.flaws),
                       source=rec.source)
        if rec.flaw is not None:
            f.attrs["flaw_types"] = json.dumps(list(FLAW_TYPES))
        for name, arr in arrays.items():
            a = np.asarray(arr)
            f.create_dataset(name, data=a if a.dtype != np.float64 or name == "timestamp"
                             else a.astype(np.float32), compression="gzip", compression_opts=4)
        for cam, imgs in rec.images.items():
            f.create_dataset(f"observation/images/{cam}", data=imgs, chunks=(1, *imgs.shape[1:]),
                             compression="lzf")
        if rec.lace is not None:
            f.create_dataset("observation/lace", data=np.asarray(rec.lace, np.float32),
                             compression="gzip", compression_opts=4)
    os.replace(tmp, path)
    return path


def read_meta(path: Path) -> dict[str, Any]:
    """Episode attributes, after checking the schema and that every array is complete."""
    try:
        with h5py.File(path, "r") as f:
            version = int(f.attrs.get("schema_version", -1))
            if version not in READABLE_VERSIONS:
                raise DatasetError(f"{path}: schema version {version} is not supported "
                                   f"(this code reads versions {READABLE_VERSIONS})")
            meta = {k: (v.item() if hasattr(v, "item") and np.ndim(v) == 0 else v)
                    for k, v in f.attrs.items()}
            n = int(meta["n_steps"])
            for name in REQUIRED:
                if name not in f:
                    raise DatasetError(f"{path}: missing {name}")
                if len(f[name]) != n:
                    raise DatasetError(f"{path}: {name} has {len(f[name])} steps, expected {n}")
            meta["cameras"] = sorted(f["observation/images"]) if "observation/images" in f \
                else []
            meta["has_lace"] = "observation/lace" in f
            meta["flaw_labels"] = FLAW in f
            if FLAW in f:
                if len(f[FLAW]) != n:
                    raise DatasetError(f"{path}: {FLAW} has {len(f[FLAW])} steps, expected {n}")
                if json.loads(meta.get("flaw_types", "[]")) != list(FLAW_TYPES):
                    raise DatasetError(f"{path}: flaw codes {meta.get('flaw_types')} differ "
                                       f"from this code's {list(FLAW_TYPES)}")
    except DatasetError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable or corrupt episode file ({exc})") from exc
    meta["retry_keyframes"] = [int(k) for k in np.atleast_1d(meta["retry_keyframes"])]
    meta["scene"] = json.loads(meta.get("scene", "{}"))
    meta["flaws"] = json.loads(meta.get("flaws", "{}"))
    meta["path"] = str(path)
    return meta


class EpisodeDataset:
    """All readable episodes of a dataset directory; bad files are reported and skipped."""

    def __init__(self, root: Path | str, strict: bool = False):
        self.root = Path(root)
        files = sorted((self.root / "episodes").glob(EPISODE_GLOB))
        if not files:
            raise DatasetError(f"{self.root}: no episodes (expected {self.root}/episodes/"
                               f"{EPISODE_GLOB})")
        self.episodes: list[dict[str, Any]] = []
        self.errors: list[str] = []
        for path in files:
            try:
                self.episodes.append(read_meta(path))
            except DatasetError as exc:
                if strict:
                    raise
                LOG.error("skipping episode: %s", exc)
                self.errors.append(str(exc))
        if not self.episodes:
            raise DatasetError(f"{self.root}: none of {len(files)} episode files is readable")
        self._files: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.episodes)

    #: open files kept per process (least recently used are closed beyond this)
    MAX_OPEN = 64

    def file(self, i: int) -> h5py.File:
        """Open handle of episode ``i`` (per process: safe with forked loader workers)."""
        if os.getpid() != self._pid:
            self._files, self._pid = {}, os.getpid()
        f = self._files.pop(i, None)
        if f is None:
            f = h5py.File(self.episodes[i]["path"], "r")
            while len(self._files) >= self.MAX_OPEN:
                oldest = next(iter(self._files))
                self._files.pop(oldest).close()
        self._files[i] = f  # (re)inserted last: dicts keep insertion order
        return f

    def load(self, i: int, name: str, index: Any = slice(None)) -> np.ndarray:
        """``name`` is an HDF5 path or a sample key; ``index`` selects steps."""
        return self.file(i)[PATHS.get(name, name)][index]

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}
