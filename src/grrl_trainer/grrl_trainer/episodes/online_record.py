"""An episode recorded through the ROS graph (the episode node's MCAP, rosbag2 layout) as an
:class:`~grrl_trainer.online.replay.OnlineEpisode`: the transitions the online trainer learns from.

One row per policy decision, i.e. per ``grrl/action_chunk`` of the episode (in order of their
stamps, the observation time the chunk was predicted from):

* the observation at a decision is rebuilt from what the policy node saw at the chunk's stamp:
  the joint positions of the joint state with that stamp (proprio) and, for state-observation
  models, the state vector of :mod:`bytemini_driver.sim_state` from the task state with that
  stamp (the driver publishes both with the same stamp every control tick); for image models
  the three camera frames nearest the stamp;
* the chunk, its initial noise and whether it was steered come from the message itself;
* the episode ends at the first task state that reports success (or a failure), else (time
  limit) at the last task state recorded before the final episode event; decisions after the
  end are dropped; the observation at the end closes the episode;
* reward and offsets follow :func:`grrl_trainer.evaluation.evaluate.online_episode` (eq. 1:
  ``gamma^(T - t)`` on the last decision of a successful episode, T - t in chunk steps);
* the policy version is the chunks' (if chunks of several versions appear, e.g. a hot reload
  during the episode, the first one's, and that is logged); the id is the episode node's
  episode id (``ep-<seed>-<uuid8>``: unique across robots, safe as a file name).

Errors: :class:`NotTrainable` for an episode that is fine but must not be learned from (no
action chunks: another controller acted; ended INVALID, or ABORTED other than by the time
limit); :class:`RecordError` for a record that is unreadable, unfinished or has missing data
(a decision without a joint state or task state at its stamp, malformed chunks). The trainer
quarantines the latter and ignores the former, both with the message logged.
"""
from __future__ import annotations

import logging
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grrl_trainer.episodes.record_reader import (CAMERA_TOPIC, CHUNK, EVENT_FINISHED, EVENTS,
                                                 JOINTS, TASK, RecordReader, header_stamp,
                                                 start_and_end, unusable_end)

LOG = logging.getLogger(__name__)

#: seconds between a chunk's stamp and the joint / task state it was computed from (they are
#: the same instant; this absorbs the float rounding of the chunk's stamp)
SYNC_TOLERANCE = 0.005
#: seconds between a chunk's stamp and the camera frames (10 Hz cameras, one frame late at most)
CAMERA_TOLERANCE = 0.25


class RecordError(ValueError):
    """A record that cannot become a training episode; the message is the reason."""


class NotTrainable(RecordError):
    """A correctly recorded episode that is not to be trained on (no policy decisions, or it
    ended INVALID / ABORTED other than by the time limit)."""


@dataclass
class RecordInfo:
    """What the trainer logs besides the episode."""

    episode_id: str
    seed: int
    success: bool
    message: str
    """the final event's message (e.g. 'task complete', 'time limit of 60 s reached ...')"""
    versions: list[int]
    """distinct policy versions of the chunks, in order of appearance"""
    decisions: int
    dropped: int
    """chunks after the end of the episode (not used)"""


def record_closed(record_dir: str | Path) -> bool:
    """True once the episode node has closed the record (rosbag2 writes metadata.yaml last)."""
    return (Path(record_dir) / "metadata.yaml").is_file()


def wait_for_record(record_dir: str | Path, timeout: float, period: float = 0.05,
                    stop: Any = None) -> None:
    """Block until the record is closed; :class:`RecordError` after ``timeout`` seconds,
    InterruptedError if ``stop`` (a threading.Event) is set meanwhile."""
    deadline = time.monotonic() + timeout
    while not record_closed(record_dir):
        if stop is not None and stop.is_set():
            raise InterruptedError("stopped while waiting for a record")
        if time.monotonic() > deadline:
            raise RecordError(f"{record_dir}: the record was not closed within {timeout:.0f} s "
                              f"(no metadata.yaml)")
        time.sleep(period)


def _stamp_of(raw: bytes) -> float | None:
    """The ``header.stamp`` of a CDR-serialised message whose first field is a Header (all the
    topics read here), without deserialising it; None if the encapsulation is unexpected."""
    if len(raw) < 12 or raw[0] != 0 or raw[1] not in (0, 1):
        return None
    sec, nsec = struct.unpack("<iI" if raw[1] == 1 else ">iI", raw[4:12])
    return sec + 1e-9 * nsec


class _Stream:
    """(stamp, raw) of one topic, sorted by stamp; messages are deserialised on demand."""

    def __init__(self, items: list[tuple[float, bytes]], msgtype: str, store: Any):
        items.sort(key=lambda x: x[0])
        self.stamps = np.array([s for s, _ in items], float)
        self.raw = [r for _, r in items]
        self.msgtype, self.store = msgtype, store

    def __len__(self) -> int:
        return len(self.raw)

    def msg(self, i: int) -> Any:
        return self.store.deserialize_cdr(self.raw[i], self.msgtype)

    def nearest(self, t: float, tol: float) -> int | None:
        if not len(self.raw):
            return None
        k = int(np.searchsorted(self.stamps, t))
        best = min((j for j in (k - 1, k) if 0 <= j < len(self.raw)),
                   key=lambda j: abs(self.stamps[j] - t))
        return best if abs(self.stamps[best] - t) <= tol else None


def _joint_vector(msg: Any, names: list[str]) -> np.ndarray:
    order = {n: i for i, n in enumerate(msg.name)}
    missing = [n for n in names if n not in order]
    if missing or len(msg.position) != len(msg.name):
        raise RecordError(f"a joint state lacks joints {missing[:3]}")
    return np.array([msg.position[order[n]] for n in names], np.float32)


def _state(msg: Any) -> np.ndarray:
    from bytemini_driver.sim_state import state_from_task_state
    try:
        return state_from_task_state(msg)
    except ValueError as exc:
        raise RecordError(str(exc)) from exc


def read_record(record_dir: str | Path, gamma: float, step_period: float = 0.1,
                horizon: int | None = None, observation: str = "state", robot: str = "",
                end_event: Any = None, action_space: str = "joint"):
    """(OnlineEpisode, RecordInfo) of a closed record; see the module docstring.

    ``horizon``: the model's chunk length k (offsets are clipped to 1..k; None: the chunks'
    own ``horizon``). ``observation``: "state" or "images". ``end_event``: the final
    EpisodeEvent as received over DDS, used if the record lacks it. ``action_space``: the
    model's; 'task' turns the recorded joint states into its proprioception (FK)."""
    from grrl_policy.task_space import action_codec

    from bytemini_driver import description as desc
    from grrl_trainer.evaluation.evaluate import EpisodeResult, online_episode

    if observation not in ("state", "images"):
        raise ValueError(f"observation must be 'state' or 'images', got {observation!r}")
    record_dir = Path(record_dir)
    if not record_closed(record_dir):
        raise RecordError(f"{record_dir}: not a closed episode record (no metadata.yaml)")
    wanted = [JOINTS, TASK, CHUNK, EVENTS]
    if observation == "images":
        wanted += [CAMERA_TOPIC.format(c) for c in desc.CAMERAS]
    raw: dict[str, list[tuple[float, bytes]]] = {w: [] for w in wanted}
    final_recorded: float | None = None       # record time (ns) of the final event
    task_recorded: list[tuple[int, float]] = []  # (record time, stamp) of task states
    events = []
    try:
        with RecordReader(record_dir) as rec:
            for key, t_rec, data in rec.messages(wanted):
                if key == EVENTS:
                    events.append((t_rec, rec.decode(data, key)))
                    continue
                stamp = _stamp_of(data)
                if stamp is None:
                    stamp = header_stamp(rec.decode(data, key))
                raw[key].append((stamp, bytes(data)))
                if key == TASK:
                    task_recorded.append((t_rec, stamp))
    except Exception as exc:  # noqa: BLE001 - any reader error means an unusable record
        raise RecordError(f"{record_dir}: not a readable episode record ({exc!r})") from exc
    streams = {k: _Stream(v, rec.msgtypes.get(k, ""), rec.store) for k, v in raw.items()}

    # ---- the episode's start and end
    started, end = start_and_end(events)
    if started is None:
        raise RecordError(f"{record_dir}: no STARTED event in the record")
    if end is not None:
        final_recorded, final = end
    elif end_event is not None and end_event.episode_id == started.episode_id:
        final = end_event
    else:
        raise RecordError(f"{record_dir}: the record of {started.episode_id} has no end event")
    episode_id = started.episode_id
    why = unusable_end(final)
    if why == "invalid":
        raise NotTrainable(f"episode {episode_id} ended INVALID ({final.message})")
    if why == "aborted":
        raise NotTrainable(f"episode {episode_id} was aborted ({final.message}), not ended by "
                           f"the time limit")
    success = final.event == EVENT_FINISHED and bool(final.success)

    # ---- decisions: the episode's chunks in order of their stamps
    chunk_stream = streams[CHUNK]
    chunks = [chunk_stream.msg(i) for i in range(len(chunk_stream))]
    others = sum(c.episode_id != episode_id for c in chunks)
    chunks = [c for c in chunks if c.episode_id == episode_id]
    if not chunks:
        raise NotTrainable(f"episode {episode_id}: no action chunks in the record (no policy "
                           f"acted{f'; {others} chunk(s) of other episodes' if others else ''})")
    tasks, joints = streams[TASK], streams[JOINTS]
    if not len(tasks) or not len(joints):
        raise RecordError(f"episode {episode_id}: the record has {len(joints)} joint states and "
                          f"{len(tasks)} task states (missing transitions)")
    # the end: the first task state reporting the outcome, else the last one before the end event
    t_end = None
    if final.event == EVENT_FINISHED:
        # the outcome is latched by the simulator's tracker: walk back over the states after it
        i = len(tasks) - 1
        while i >= 0:
            m = tasks.msg(i)
            if not (m.seed == started.seed and (m.success or m.failed)):
                break
            t_end = float(tasks.stamps[i])
            i -= 1
    if t_end is None:
        before = [s for r, s in task_recorded if final_recorded is None or r <= final_recorded]
        t_end = max(before) if before else float(tasks.stamps[-1])
    used = [c for c in chunks if header_stamp(c) <= t_end + 1e-6]
    dropped = len(chunks) - len(used)
    if not used:
        raise NotTrainable(f"episode {episode_id}: no action chunk before its end at "
                           f"t = {t_end:.2f} s")
    versions = list(dict.fromkeys(int(c.policy_version) for c in used))
    if len(versions) > 1:
        LOG.warning("episode %s: chunks of policy versions %s (a reload during the episode); "
                    "recorded as version %d", episode_id, versions, versions[0])
    k, dim = int(used[0].horizon), int(used[0].action_dim)
    period = float(used[0].step_period) or step_period
    names = desc.actuated_joint_names()
    codec = action_codec(action_space, period)

    def observe(t: float, what: str) -> tuple[np.ndarray, np.ndarray]:
        j = joints.nearest(t, SYNC_TOLERANCE)
        if j is None:
            raise RecordError(f"episode {episode_id}: no joint state at the stamp of {what} "
                              f"(t = {t:.3f} s; missing transitions)")
        proprio = codec.proprio(_joint_vector(joints.msg(j), names))
        if observation == "state":
            i = tasks.nearest(t, SYNC_TOLERANCE)
            if i is None:
                raise RecordError(f"episode {episode_id}: no task state at the stamp of {what} "
                                  f"(t = {t:.3f} s; missing transitions)")
            m = tasks.msg(i)
            if m.seed != started.seed:
                raise RecordError(f"episode {episode_id}: the task state at {what} is of another "
                                  f"scene (seed {m.seed}, the episode's {started.seed})")
            return proprio, _state(m)
        from grrl_tools.image_codec import ImageError, decode_raw
        frames = []
        for cam in desc.CAMERAS:
            stream = streams[CAMERA_TOPIC.format(cam)]
            n = stream.nearest(t, CAMERA_TOLERANCE)
            if n is None:
                raise RecordError(f"episode {episode_id}: no {cam} camera frame within "
                                  f"{CAMERA_TOLERANCE} s of {what} (t = {t:.3f} s)")
            img = stream.msg(n)
            try:
                frames.append(decode_raw(img.encoding, img.height, img.width, img.step, img.data))
            except ImageError as exc:
                raise RecordError(f"episode {episode_id}: camera {cam}: {exc}") from exc
        return proprio, np.stack(frames)

    rec: dict[str, list] = {k_: [] for k_ in ("obs", "proprio", "actions", "noise", "steered", "t")}
    for n, c in enumerate(used):
        if len(c.actions) != k * dim or len(c.initial_noise) != k * dim or \
                (c.horizon, c.action_dim) != (k, dim):
            raise RecordError(f"episode {episode_id}: chunk {n} has {len(c.actions)} actions and "
                              f"{len(c.initial_noise)} noise values for a {c.horizon} x "
                              f"{c.action_dim} chunk (the first chunk is {k} x {dim})")
        t = header_stamp(c)
        proprio, obs = observe(t, f"decision {n}")
        rec["proprio"].append(proprio)
        rec["obs"].append(obs)
        rec["actions"].append(np.asarray(c.actions, np.float32).reshape(k, dim))
        rec["noise"].append(np.asarray(c.initial_noise, np.float32).reshape(k, dim))
        rec["steered"].append(bool(c.noise_steered))
        rec["t"].append(t)
    proprio, obs = observe(t_end, "the end of the episode")
    rec["final_proprio"], rec["final_obs"], rec["t_end"] = [proprio], [obs], [t_end]
    result = EpisodeResult(seed=int(started.seed), mirrored=False, instruction=started.instruction,
                           success=success, stages=[], steps=0, chunks=len(used),
                           sim_time=t_end, reason=final.message, decisions=rec)
    ep = online_episode(result, versions[0], gamma, period, horizon or k, observation,
                        robot=robot, episode_id=episode_id)
    info = RecordInfo(episode_id, int(started.seed), success, final.message, versions, len(used),
                      dropped)
    return ep, info


def episode_from_record(record_dir: str | Path, gamma: float, step_period: float = 0.1,
                        horizon: int | None = None, observation: str = "state",
                        robot: str = "", end_event: Any = None, action_space: str = "joint"):
    """The :class:`~grrl_trainer.online.replay.OnlineEpisode` of a closed episode record (see
    :func:`read_record`); raises :class:`RecordError` / :class:`NotTrainable`."""
    return read_record(record_dir, gamma, step_period, horizon, observation, robot, end_event,
                       action_space)[0]
