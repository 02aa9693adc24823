"""Convert an episode recorded through the ROS graph (the episode node's MCAP, rosbag2 layout)
into a dataset episode with the same schema as the fast collection path.

Steps are every ``50/fps``-th joint state; at each step the latest tcp poses, images and task
state are taken, and the action is the last command sent before the next step. Retry
keyframes come from the RETRY events (labelled by an operator or the demonstrator), success
from the final event.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bytemini_driver import description as desc
from grrl_tools.image_codec import decode_raw
from grrl_trainer.data.collect import GRIPPERS, CollectConfig, pose7
from grrl_trainer.data.dataset import DatasetError, EpisodeRecord, episode_path, write_episode
from grrl_trainer.episodes.record_reader import (CAMERA_TOPIC, COMMAND, EVENT_RETRY, EVENTS,
                                                 JOINTS, TASK, TCP_TOPIC, RecordReader,
                                                 header_stamp, start_and_end, unusable_end)

#: the topics a dataset episode is made of
TOPICS = [JOINTS, EVENTS, COMMAND, TASK, *(TCP_TOPIC.format(s) for s in desc.SIDES),
          *(CAMERA_TOPIC.format(c) for c in desc.CAMERAS)]


def _pose7_msg(m) -> np.ndarray:
    p, o = m.pose.position, m.pose.orientation
    return np.array([p.x, p.y, p.z, o.w, o.x, o.y, o.z])


def _latest(stream: list[tuple[int, object]], t: int):
    """Last item of a time-sorted (t, value) list at or before t (None if none)."""
    times = [s[0] for s in stream]
    k = int(np.searchsorted(times, t, side="right")) - 1
    return stream[k][1] if k >= 0 else None


def convert_record(record: Path, out_root: Path, fps: float = CollectConfig.fps,
                   control_rate: float = CollectConfig.control_rate) -> Path:
    streams: dict[str, list[tuple[int, object]]] = {}
    try:
        with RecordReader(record) as rec:
            for key, t, raw in rec.messages(TOPICS):
                streams.setdefault(key, []).append((t, rec.decode(raw, key)))
    except Exception as exc:  # noqa: BLE001 - any reader error means an unusable record
        raise DatasetError(f"{record}: not a readable episode record ({exc})") from exc
    for need in (JOINTS, EVENTS, COMMAND):
        if not streams.get(need):
            raise DatasetError(f"{record}: no '{need.split('/', 1)[1]}' messages")
    events = [m for _, m in streams[EVENTS]]
    started, end = start_and_end(streams[EVENTS])
    if started is None or end is None:
        raise DatasetError(f"{record}: the episode has no start or no end event")
    final = end[1]
    why = unusable_end(final)
    if why:
        raise DatasetError(f"{record}: the episode ended as {why} ({final.message}); not a "
                           f"demonstration")
    names = desc.actuated_joint_names()
    joints = streams[JOINTS]
    if list(joints[0][1].name) != names:
        raise DatasetError(f"{record}: joint states are not ByteMini-v2's joints")
    dec = max(1, int(round(control_rate / fps)))
    step_msgs = joints[::dec]
    commands = [(t, np.asarray(m.points[-1].positions)) for t, m in
                streams[COMMAND] if list(m.joint_names) == names and m.points]
    cams = {c: streams.get(CAMERA_TOPIC.format(c), []) for c in desc.CAMERAS}
    T = len(step_msgs)
    q = np.array([m.position for _, m in step_msgs])
    tcp = np.zeros((T, 2, 7))
    actions = np.zeros((T, len(names)))
    stage = np.zeros(T, np.uint8)
    lace = []
    images: dict[str, list] = {c: [] for c, s in cams.items() if s}
    for i, (t, _m) in enumerate(step_msgs):
        for k, side in enumerate(desc.SIDES):
            pose = _latest(streams.get(TCP_TOPIC.format(side), []), t)
            tcp[i, k] = _pose7_msg(pose) if pose is not None else np.r_[np.zeros(3), 1, 0, 0, 0]
        t_next = step_msgs[i + 1][0] if i + 1 < T else joints[-1][0]
        cmd = _latest(commands, t_next)
        actions[i] = cmd if cmd is not None else q[i]
        ts = _latest(streams.get(TASK, []), t)
        if ts is not None:
            stage[i] = ts.stage
            lace.append([[p.x, p.y, p.z] for p in ts.lace])
        for cam in images:
            img = _latest(cams[cam], t) or cams[cam][0][1]
            images[cam].append(decode_raw(img.encoding, img.height, img.width, img.step,
                                          img.data))
    keyframes = sorted({min(e.step // dec, T - 1) for e in events if e.event == EVENT_RETRY})
    from bytemini_driver.ik import DualArmIK

    ik = DualArmIK()
    action_tcp = np.array([[pose7(ik.fk(a, s)) for s in desc.SIDES] for a in actions])
    stamps = np.array([header_stamp(m) for _, m in step_msgs])
    rec = EpisodeRecord(
        episode_id=started.episode_id, seed=int(started.seed), instruction=started.instruction,
        success=bool(final.success), fps=fps, timestamp=stamps, joints=q, tcp=tcp,
        gripper=q[:, GRIPPERS], action_joints=actions, action_tcp=action_tcp,
        action_gripper=actions[:, GRIPPERS], stage=stage, retry_keyframes=keyframes,
        scene={"record": str(record)}, flaws={"failure": "" if final.success else final.message},
        images={c: np.array(v) for c, v in images.items()},
        lace=np.array(lace) if len(lace) == T else None, source="ros")
    return write_episode(episode_path(out_root, rec.seed), rec)
