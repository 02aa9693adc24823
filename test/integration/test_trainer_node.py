"""The online trainer node over DDS (issue 7): a short online session through the real graph
(simulated robot, episode node, policy node steering a small tiny-state checkpoint, trainer):
episodes flow in, update rounds run, each new checkpoint is announced, hot-reloaded by the
policy node, and the next episodes' chunks carry its version; hand-crafted bad records (a NaN
action, missing transitions) are quarantined with their reasons, never trained on; a checkpoint
the policy node refuses is reported back and the trainer logs the reason."""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from grrl_tools.testing import wait_until

pytestmark = [pytest.mark.ros, pytest.mark.slow]

SMALL = {"tiny": {"width": 32, "layers": 2, "heads": 2, "kv_heads": 1, "head_dim": 16,
                  "text_encoder": "hashed"},
         "expert": {"width": 32, "heads": 2, "mlp_ratio": 2.0}, "horizon": 8}


def small_checkpoint(path: Path, overrides: dict | None = None, seed: int = 0) -> Path:
    import torch

    from grrl_policy.checkpoint import save_checkpoint
    from grrl_policy.model import GRRLModel, configure
    torch.manual_seed(seed)
    save_checkpoint(GRRLModel(configure("tiny-state", overrides or SMALL)), path, version=1)
    return path


def latched():
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    return QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                      reliability=ReliabilityPolicy.RELIABLE)


EPISODE_S = 6.0
"""simulated seconds per episode: enough decisions for a trainable record on a loaded machine"""


def said(proc, text: str, timeout: float = 60.0) -> str:
    """The first line of a node process's log that contains ``text`` (waits for it)."""
    return wait_until(lambda: next((line for line in proc.output.splitlines() if text in line),
                                   None), timeout, f"{proc.cmd[0]} to log '{text}'")


ROUND_S = 300.0
"""upper bound on a round trip (episode ends -> update -> announce -> policy loads): it takes
~10 s on an idle 2-core machine and over 90 s with four other jobs on its cores"""


def loaded(status, version: int, *procs) -> None:
    """Wait until the policy node reports ``version`` LOADED; on a timeout, show the logs."""
    from grrl_interfaces.msg import CheckpointInfo
    try:
        wait_until(lambda: any(s.status == CheckpointInfo.STATUS_LOADED and s.version == version
                               for s in list(status)), ROUND_S,
                   f"version {version} loaded by the policy node")
    except TimeoutError as e:
        logs = "\n".join(f"{p.cmd[0]}:\n{p.output[-2500:]}" for p in procs)
        raise AssertionError(f"{e}\n{logs}") from None


def run_episode(ros_node, client, seed: int, time_limit: float):
    from grrl_interfaces.action import RunEpisode
    from grrl_tools.action_goal import send_goal
    handle = send_goal(client, RunEpisode.Goal(seed=seed, time_limit=time_limit))
    assert handle.accepted
    result = handle.get_result_async()
    wait_until(result.done, ROUND_S, f"the result of episode seed {seed}")
    return result.result().result


def rewrite_record(src: Path, dst: Path, episode_id: str, nan_chunk: int | None = None,
                   drop_joints_at_chunk: int | None = None) -> None:
    """A copy of a real episode record under another episode id, with one action of chunk
    ``nan_chunk`` made NaN, or the joint states around chunk ``drop_joints_at_chunk`` removed."""
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    from grrl_trainer.episodes.recorder import typestore_with_custom_types
    store = typestore_with_custom_types()
    with Reader(src) as bag:
        conns = list(bag.connections)
        msgs = list(bag.messages())
    chunk_stamps = sorted(store.deserialize_cdr(raw, c.msgtype).header.stamp.sec * 10**9
                          + store.deserialize_cdr(raw, c.msgtype).header.stamp.nanosec
                          for c, _, raw in msgs if c.topic.endswith("grrl/action_chunk"))
    writer = Writer(dst, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    out = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=store) for c in conns}
    n_chunk = 0
    for c, t, raw in msgs:
        if c.topic.endswith(("grrl/episode", "grrl/action_chunk")) or \
                (drop_joints_at_chunk is not None and c.topic.endswith("joint_states")):
            m = store.deserialize_cdr(raw, c.msgtype)
            if c.topic.endswith("joint_states"):
                stamp = m.header.stamp.sec * 10**9 + m.header.stamp.nanosec
                if abs(stamp - chunk_stamps[drop_joints_at_chunk]) < 50_000_000:
                    continue
            else:
                m = dataclasses.replace(m, episode_id=episode_id)
                if c.topic.endswith("grrl/action_chunk"):
                    if n_chunk == nan_chunk:
                        actions = np.array(m.actions, np.float32)
                        actions[3] = np.nan
                        m = dataclasses.replace(m, actions=actions)
                    n_chunk += 1
            raw = store.serialize_cdr(m, c.msgtype)
        writer.write(out[c.id], t, raw)
    writer.close()


def test_online_session_through_the_graph(start_node, ros_node, tmp_path):
    from rclpy.action import ActionClient

    from grrl_interfaces.action import RunEpisode
    from grrl_interfaces.msg import ActionChunk, CheckpointInfo, EpisodeEvent

    policy = small_checkpoint(tmp_path / "bc")
    run = tmp_path / "online"
    chunks = ros_node.collect(ActionChunk, "/grrl/action_chunk", 100)
    announced = ros_node.collect(CheckpointInfo, "/grrl/checkpoint", latched())
    status = ros_node.collect(CheckpointInfo, "/grrl/checkpoint_status", latched())
    start_node("bytemini_driver", "driver_node", publish_images=False, autostart=True,
               real_time_factor=2.0)
    start_node("grrl_trainer", "episode_node", record=True, record_dir=str(tmp_path / "episodes"))
    policy_node = start_node("grrl_policy", "policy_node", checkpoint=str(policy), steer=True,
                             explore_std=0.3)
    trainer = start_node("grrl_trainer", "trainer_node", policy=str(policy), run_dir=str(run),
                         episodes_per_round=2, updates_per_round=2, batch_size=16)
    client = ActionClient(ros_node.node, RunEpisode, "/grrl/run_episode")
    assert client.wait_for_server(timeout_sec=60)
    said(policy_node, "policy tiny-state version 1 ready", 90)
    said(trainer, "trainer ready", 90)

    # round 1: two episodes of the offline checkpoint (version 1) -> version 2
    first = [run_episode(ros_node, client, seed, EPISODE_S) for seed in (20000, 20001)]
    loaded(status, 2, trainer, policy_node)
    ann = [a for a in list(announced) if a.status == CheckpointInfo.STATUS_ANNOUNCED]
    assert [a.version for a in ann] == [2] and ann[0].path == str(run / "checkpoints" / "v0002")
    said(trainer, "LOADED checkpoint version 2")
    # round 2: the next episodes are acted by version 2 -> version 3
    second = [run_episode(ros_node, client, seed, EPISODE_S) for seed in (20002, 20003)]
    loaded(status, 3, trainer, policy_node)
    by_episode = {}
    for c in list(chunks):
        by_episode.setdefault(c.episode_id, set()).add(c.policy_version)
    for r in first:
        assert by_episode.get(r.episode_id) == {1}, by_episode
    for r in second:
        assert by_episode.get(r.episode_id) == {2}, by_episode
    # the offline checkpoint is acted with epsilon ~ N(0, I) (warm-up), the trainer's steered
    steered: dict[int, set] = {}
    for c in list(chunks):
        steered.setdefault(c.policy_version, set()).add(c.noise_steered)
    assert steered.get(1) == {False} and steered.get(2) == {True}, steered
    said(policy_node, "acting with epsilon ~ N(0, I) (warm-up)")
    # an episode's first chunk is planned on the scene's first observation (t = 0), as in
    # evaluation, and its record holds that observation (or the episode would be quarantined);
    # (the very first episode may start while the node still waits for its first task state)
    first_chunk: dict[str, int] = {}
    for c in list(chunks):
        t = c.header.stamp.sec * 1_000_000_000 + c.header.stamp.nanosec
        first_chunk[c.episode_id] = min(t, first_chunk.get(c.episode_id, t))
    assert [first_chunk.get(r.episode_id) for r in first[1:] + second] == [0] * 3, first_chunk
    rows = list(csv.DictReader(open(run / "online.csv")))
    assert [(r["episode_id"], int(r["version"])) for r in rows] == \
        [(r.episode_id, 1) for r in first] + [(r.episode_id, 2) for r in second]
    said(trainer, f"episode {second[-1].episode_id} (robot, seed 20003, version 2)")

    # bad input: a record with a NaN action, one with missing transitions -> quarantined
    good = Path(second[-1].record_path)
    rewrite_record(good, tmp_path / "bad-nan", "ep-020098-badnan00", nan_chunk=1)
    rewrite_record(good, tmp_path / "bad-gap", "ep-020099-badgap00", drop_joints_at_chunk=2)
    events = ros_node.node.create_publisher(EpisodeEvent, "/grrl/episode", latched())
    ros_node.wait_for_matched(events, 2)              # the trainer and the policy node at least
    for eid, path in (("ep-020098-badnan00", "bad-nan"), ("ep-020099-badgap00", "bad-gap")):
        events.publish(EpisodeEvent(episode_id=eid, event=EpisodeEvent.EVENT_FINISHED,
                                    record_path=str(tmp_path / path), seed=20003))
    nan = said(trainer, "ep-020098-badnan00 (robot) QUARANTINED")
    assert "actions has 1 non-finite value(s)" in nan, nan
    gap = said(trainer, "ep-020099-badgap00 (robot) QUARANTINED")
    assert "no joint state at the stamp of decision 2" in gap and "missing transitions" in gap, gap
    reasons = sorted(p.read_text() for p in (run / "replay" / "quarantine").glob("*.reason.txt"))
    assert len(reasons) == 2 and "non-finite" in reasons[0] + reasons[1]
    assert len(list(csv.DictReader(open(run / "online.csv")))) == 4    # not trained on
    assert trainer.proc.poll() is None, trainer.output[-3000:]

    # a restarted trainer resumes at version 3: the latched episode ends arrive again and are
    # recognised, and the re-announced version 3 is already running on the robot
    assert trainer.stop() == 0
    again = start_node("grrl_trainer", "trainer_node", policy=str(policy), run_dir=str(run),
                       episodes_per_round=2, updates_per_round=2, batch_size=16)
    said(again, "at version 3 (resumed: 4 online episodes)", 90)
    said(again, f"episode {second[-1].episode_id} (robot): already stored; not counted again")
    said(again, "episode ep-020098-badnan00 (robot): already rejected: quarantined")
    said(again, "REFUSED checkpoint version 3")                      # not newer: a warning
    assert len(list(csv.DictReader(open(run / "online.csv")))) == 4


def test_a_refused_checkpoint_is_reported_to_the_trainer(start_node, ros_node, tmp_path):
    """The trainer resumes a run at version 2 and announces it again; the policy node runs a
    model of another architecture, refuses it, says why, and the trainer logs that reason."""
    import torch

    from bytemini_driver.sim_state import STATE_DIM
    from grrl_interfaces.msg import CheckpointInfo
    from grrl_trainer.online.trainer import OnlineTrainer, OnlineConfig
    from grrl_trainer.online.replay import OnlineEpisode

    policy = small_checkpoint(tmp_path / "bc")
    other = small_checkpoint(tmp_path / "other", {**SMALL, "expert": {"width": 48, "heads": 2,
                                                                       "mlp_ratio": 2.0}})
    run = tmp_path / "online"
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        core = OnlineTrainer(policy, run, OnlineConfig(episodes_per_round=2, updates_per_round=1,
                                                       batch_size=4, warmup_episodes=0))
        for i in range(2):
            n = 3
            core.add(OnlineEpisode(
                episode_id=f"ep-{i:06d}-synthetic", robot="sim", policy_version=1,
                instruction="thread the left lace end", success=False,
                observations={"proprio": rng.normal(size=(n + 1, 16)).astype(np.float32),
                              "state": rng.normal(size=(n + 1, STATE_DIM)).astype(np.float32)},
                actions=rng.normal(size=(n, 8, 16)).astype(np.float32),
                noise=rng.normal(size=(n, 8, 16)).astype(np.float32),
                steered=np.ones(n, bool), reward=np.zeros(n, np.float32),
                done=np.arange(n) == n - 1, offset=np.full(n, 8)))
        assert core.run_due()["version"] == 2
        core.close()
    finally:
        torch.set_num_threads(threads)
    status = ros_node.collect(CheckpointInfo, "/grrl/checkpoint_status", latched())
    policy_node = start_node("grrl_policy", "policy_node", checkpoint=str(other))
    said(policy_node, "ready", 90)
    trainer = start_node("grrl_trainer", "trainer_node", policy=str(policy), run_dir=str(run),
                         episodes_per_round=2, updates_per_round=1, batch_size=4)
    refused = wait_until(lambda: next((s for s in list(status)
                                       if s.status == CheckpointInfo.STATUS_REFUSED), None),
                         90, "the policy node's refusal")
    assert refused.version == 2 and "model config differs" in refused.message
    text = said(trainer, "REFUSED checkpoint version 2")
    assert text.startswith("[ERROR]") and "model config differs" in text, text
    assert "training goes on" in text
    assert trainer.proc.poll() is None, trainer.output[-3000:]


def synthetic_episode(i: int, rng, version: int = 1):
    from bytemini_driver.sim_state import STATE_DIM
    from grrl_trainer.online.replay import OnlineEpisode
    n = 3
    return OnlineEpisode(
        episode_id=f"ep-{i:06d}-synthetic", robot="sim", policy_version=version,
        instruction="thread the left lace end", success=bool(i % 2),
        observations={"proprio": rng.normal(size=(n + 1, 16)).astype(np.float32),
                      "state": rng.normal(size=(n + 1, STATE_DIM)).astype(np.float32)},
        actions=rng.normal(size=(n, 8, 16)).astype(np.float32),
        noise=rng.normal(size=(n, 8, 16)).astype(np.float32),
        steered=np.ones(n, bool),
        reward=np.where(np.arange(n) == n - 1, float(i % 2), 0.0).astype(np.float32),
        done=np.arange(n) == n - 1, offset=np.full(n, 8))


def stored_run(policy: Path, run: Path, params: dict, seed: int) -> str:
    """A run directory holding two synthetic episodes (stored through the core, one torch
    thread); returns what is due."""
    import torch

    from grrl_trainer.online.trainer import OnlineTrainer, OnlineConfig
    rng = np.random.default_rng(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        core = OnlineTrainer(policy, run, OnlineConfig(**params))
        for i in range(2):
            core.add(synthetic_episode(i, rng))
        due = core.due()
        core.close()
    finally:
        torch.set_num_threads(threads)
    return due


def test_kill_9_of_the_trainer_node_mid_round_loses_and_doubles_nothing(start_node, tmp_path):
    """Two stored episodes make a round due; the node starts it, is SIGKILLed in the middle,
    and a restarted node runs the round again from the saved state: version 2 once, each
    episode counted once, the buffers intact."""
    from grrl_policy.checkpoint import load_checkpoint
    from grrl_trainer.online.replay import ReplayBuffers

    policy = small_checkpoint(tmp_path / "bc")
    run = tmp_path / "online"
    params = dict(episodes_per_round=2, updates_per_round=1000, batch_size=16, warmup_episodes=0)
    assert stored_run(policy, run, params, seed=1) == "round"
    trainer = start_node("grrl_trainer", "trainer_node", policy=str(policy), run_dir=str(run),
                         **params)
    said(trainer, "round: 1000 updates on", 90)
    trainer.proc.kill()                                   # SIGKILL, mid-round
    assert trainer.proc.wait(30) == -9
    assert not (run / "checkpoints" / "v0002.json").exists()
    again = start_node("grrl_trainer", "trainer_node", policy=str(policy), run_dir=str(run),
                       **params)
    said(again, "at version 1 (resumed: 2 online episodes)", 90)
    done = said(again, "round done in", 240)
    assert "version 2 (2 new episodes" in done, done
    assert again.stop() == 0
    rows = list(csv.DictReader(open(run / "online.csv")))
    assert sorted(r["episode_id"] for r in rows) == ["ep-000000-synthetic", "ep-000001-synthetic"]
    model, meta = load_checkpoint(str(run / "checkpoints" / "v0002"))
    assert meta.version == 2 and meta.extra["steerable"]
    buffers = ReplayBuffers(run / "replay")
    try:
        assert buffers.stats()["episodes"] == 2
    finally:
        buffers.close()


def test_the_trainer_holds_the_robots_during_its_warm_up(start_node, ros_node, tmp_path):
    """The warm-up's episodes are in: the trainer holds every robot's new episodes
    (grrl/hold_episodes True) while it runs the critic warm-up, announces version 2, and
    releases each robot once its policy node reports that version LOADED (robot1), or after
    release_timeout without an answer (robot2)."""
    from std_msgs.msg import Bool

    from grrl_interfaces.msg import CheckpointInfo
    from grrl_tools.node_main import HOLD_QOS

    policy = small_checkpoint(tmp_path / "bc")
    run = tmp_path / "online"
    params = dict(episodes_per_round=2, updates_per_round=1, batch_size=16, warmup_episodes=2,
                  warmup_updates=2)
    assert stored_run(policy, run, params, seed=2) == "warm-up"
    holds = {ns: ros_node.collect(Bool, f"/{ns}/grrl/hold_episodes", HOLD_QOS)
             for ns in ("robot1", "robot2")}
    announced = ros_node.collect(CheckpointInfo, "/robot1/grrl/checkpoint", latched())
    status = ros_node.node.create_publisher(CheckpointInfo, "/robot1/grrl/checkpoint_status",
                                            latched())
    trainer = start_node("grrl_trainer", "trainer_node", policy=str(policy), run_dir=str(run),
                         namespaces=["robot1", "robot2"], release_timeout=20.0, **params)
    ros_node.wait_for_matched(status, 1)      # (before the announcement starts its timer)
    said(trainer, "held during the warm-up updates", 90)

    def last(ns: str):
        return [m.data for m in list(holds[ns])][-1:]
    for ns in ("robot1", "robot2"):
        wait_until(lambda n=ns: last(n) == [True], 60, f"{ns} held")
    ann = wait_until(lambda: next(iter(list(announced)), None), ROUND_S, "version 2 announced")
    assert ann.version == 2
    status.publish(CheckpointInfo(status=CheckpointInfo.STATUS_LOADED, version=2,
                                  path=ann.path, sha256=ann.sha256))
    said(trainer, "robot 'robot1': new episodes released (its policy node answered on version 2)")
    wait_until(lambda: last("robot1") == [False], 60, "robot1 released")
    assert last("robot2") == [True]                      # no answer yet: still held
    said(trainer, "robot 'robot2': new episodes released (no LOADED answer within 20 s)", 120)
    wait_until(lambda: last("robot2") == [False], 60, "robot2 released")
    assert [m.data for m in list(holds["robot1"])][-2:] == [True, False]
