"""The whole simulated graph over DDS: driver + episode node + scripted expert + client.

Pytest twin of test/launch_testing/test_sim_episode.launch.py: the same launch file, started
with grrl-launch, runs one episode to success; its MCAP record is read back with rosbags.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from rosbags.rosbag2 import Reader

from grrl_trainer.episodes.recorder import typestore_with_custom_types

pytestmark = [pytest.mark.ros, pytest.mark.slow]
LAUNCH = Path(__file__).resolve().parents[2] / "launch" / "sim.launch.xml"


def test_expert_episode_succeeds_and_is_recorded(processes, tmp_path: Path):
    # 1.5x real time leaves the expert's node headroom on a loaded 2-core machine
    launch = processes.launch(str(LAUNCH), "episodes:=1", "seed:=0", "real_time_factor:=1.5",
                              "time_limit:=60")
    code = launch.wait(240)
    out = launch.output
    assert code == 0, out[-3000:]
    assert "episode 1/1 seed 0: SUCCESS | stages: picked, threaded, handed_over, placed" in out
    record = Path(re.search(r"record: (\S+)", out.split("episode 1/1")[1]).group(1))
    store = typestore_with_custom_types()
    with Reader(record) as bag:
        counts = {c.topic: c.msgcount for c in bag.connections}
        seconds = bag.duration / 1e9
        events = [store.deserialize_cdr(raw, c.msgtype) for c, _, raw in
                  bag.messages([c for c in bag.connections if c.topic == "/grrl/episode"])]
        joints = [store.deserialize_cdr(raw, c.msgtype) for c, _, raw in
                  bag.messages([c for c in bag.connections
                                if c.topic == "/bytemini/joint_states"])]
        joint = joints[0]
        image = next(store.deserialize_cdr(raw, c.msgtype) for c, _, raw in
                     bag.messages([c for c in bag.connections
                                   if c.topic == "/bytemini/camera/head/image_raw"]))
    # 50 Hz state and 10 Hz cameras over the simulated duration (the stamps are sim time)
    stamp = [j.header.stamp.sec + 1e-9 * j.header.stamp.nanosec for j in joints]
    sim_seconds = stamp[-1] - stamp[0]
    assert 5.0 < sim_seconds < 60.0 and seconds > 0
    assert counts["/bytemini/joint_states"] >= 0.95 * 50 * sim_seconds
    for cam in ("head", "left_wrist", "right_wrist"):
        assert counts[f"/bytemini/camera/{cam}/image_raw"] >= 0.7 * 10 * sim_seconds
    assert counts["/bytemini/command/joint_trajectory"] > 100
    assert counts["/grrl/instruction"] == 1
    assert [e.event for e in events] == [0, 1, 1, 1, 1, 3]
    assert [e.stage for e in events] == [0, 1, 2, 3, 4, 4]
    assert events[-1].success and events[-1].reward == 1.0
    assert len(joint.name) == 16 and joint.name[0] == "left_shoulder_pitch_joint"
    assert (image.height, image.width, image.encoding) == (224, 224, "rgb8")
    assert processes.leftovers() == [launch.proc.pid] or processes.leftovers() == []


def test_flawed_demonstration_through_the_graph_converts_to_the_dataset(processes, tmp_path):
    """The slow collection path: the demonstrator acts through the ROS graph, annotates its
    retries through the labelling service, and the MCAP converts to a dataset episode."""
    from grrl_trainer.data.convert import convert_record
    from grrl_trainer.data.dataset import EpisodeDataset

    # seed 3: the demonstrator misses the eyelet once and retries (see its flaw draw)
    launch = processes.launch(str(LAUNCH), "episodes:=1", "seed:=3", "real_time_factor:=2.0",
                              "controller:=demonstrator", "time_limit:=60")
    assert launch.wait(240) == 0, launch.output[-3000:]
    out = launch.output
    record = Path(re.search(r"record: (\S+)", out.split("episode 1/1")[1]).group(1))
    path = convert_record(record, tmp_path)
    ds = EpisodeDataset(tmp_path, strict=True)
    meta = ds.episodes[0]
    assert path.name == "ep_000003.h5" and meta["source"] == "ros"
    assert meta["success"] == ("SUCCESS" in out.split("episode 1/1")[1].splitlines()[0])
    assert len(meta["retry_keyframes"]) >= 1
    assert meta["cameras"] == ["head", "left_wrist", "right_wrist"]
    steps = meta["n_steps"]
    stamps = ds.load(0, "timestamp")
    # 10 Hz steps (every 5th joint state; a few may be lost on a loaded machine)
    assert abs((stamps[-1] - stamps[0]) * 10 - (steps - 1)) < max(3, 0.05 * steps)
    assert ds.load(0, "observation/images/head").shape == (steps, 224, 224, 3)
