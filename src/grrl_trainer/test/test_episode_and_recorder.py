"""Episode bookkeeping (eq. 1 reward, stages, time limit) and the MCAP recorder."""
from __future__ import annotations

from pathlib import Path

import pytest
from rosbags.rosbag2 import Reader

from grrl_trainer.episodes.episode import EpisodeMonitor, sparse_reward
from grrl_trainer.episodes.recorder import EpisodeRecorder, typestore_with_custom_types


def test_sparse_reward_eq1():
    assert sparse_reward(True) == 1.0 and sparse_reward(False) == 0.0


def test_monitor_stages_success_and_limits():
    m = EpisodeMonitor("ep", time_limit=10.0)
    assert m.update(100.0, 0, False, False) == []
    assert m.update(101.0, 2, False, False) == [1, 2]
    assert m.update(102.0, 4, True, False) == [3, 4]
    assert m.success and m.reward == 1.0 and m.reached == [1, 2, 3, 4]
    assert m.end_time == 102.0
    assert m.update(103.0, 4, True, False) == []          # ended: no more updates
    t = EpisodeMonitor("ep", time_limit=1.0)
    t.update(5.0, 1, False, False)
    t.update(6.5, 1, False, False)
    assert t.status == "timeout" and "stage 'picked'" in t.message and t.reward == 0.0
    assert t.end_time == 6.0          # when the limit passed, not the later state that told
    j = EpisodeMonitor("ep", 10.0)
    j.update(0.0, 1, False, True, "lace over-stretched (1.6x)")
    assert j.status == "failure"
    f = EpisodeMonitor("ep", 10.0)
    f.update(0.0, 0, False, True, "physics fault: non-finite physics state")
    assert f.status == "invalid"
    late = EpisodeMonitor("ep", 10.0)      # success first seen after the limit: a timeout
    late.update(0.0, 3, False, False)
    late.update(10.04, 4, True, False)
    assert late.status == "timeout" and not late.success


def test_recorder_writes_a_rosbag2_mcap_that_rosbags_reads(tmp_path: Path):
    store = typestore_with_custom_types()
    String = store.types["std_msgs/msg/String"]
    Event = store.types["grrl_interfaces/msg/EpisodeEvent"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]
    rec = EpisodeRecorder(tmp_path / "ep", {"/grrl/instruction": "std_msgs/msg/String",
                                            "/grrl/episode": "grrl_interfaces/msg/EpisodeEvent"},
                          store)
    rec.write("/grrl/instruction", store.serialize_cdr(String(data="thread it"),
                                                      "std_msgs/msg/String"), 1)
    ev = Event(header=Header(stamp=Time(sec=1, nanosec=0), frame_id=""), episode_id="e",
               event=3, stage=4, stage_name="placed", step=10, success=True, reward=1.0,
               seed=7, instruction="x", policy_version=2, record_path="", message="")
    rec.write("/grrl/episode", store.serialize_cdr(ev, "grrl_interfaces/msg/EpisodeEvent"), 2)
    assert rec.close() == {"/grrl/instruction": 1, "/grrl/episode": 1}
    assert (tmp_path / "ep" / "metadata.yaml").is_file()
    with Reader(tmp_path / "ep") as bag:
        msgs = {c.topic: store.deserialize_cdr(raw, c.msgtype) for c, _, raw in bag.messages()}
    assert msgs["/grrl/instruction"].data == "thread it"
    assert msgs["/grrl/episode"].success and msgs["/grrl/episode"].seed == 7
    with pytest.raises(FileExistsError):
        EpisodeRecorder(tmp_path / "ep", {}, store)
    with pytest.raises(KeyError, match="unknown to the typestore"):
        EpisodeRecorder(tmp_path / "ep2", {"/x": "nope_msgs/msg/Nope"}, store)
