"""Online replay buffers: on/off-policy hand-over, 1:1 sampling, quarantine of bad episodes,
persistence, crash recovery (including SIGKILL of a writer at a random moment) and eviction."""
from __future__ import annotations

import inspect
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from grrl_trainer.online.replay import (OnlineEpisode, QuarantineError, ReplayBuffers,
                                       discounted_returns, validate)

torch.set_num_threads(1)
K, D, P, S = 4, 16, 16, 5


def episode(eid: str, version: int = 1, n: int = 5, success: bool = True, images: bool = False,
            seed: int | None = None) -> OnlineEpisode:
    """Rows encode (episode number, row) so that sampled transitions can be checked."""
    rng = np.random.default_rng(seed if seed is not None else abs(hash(eid)) % 2**32)
    tag = float(rng.integers(0, 10_000))
    rows = np.arange(n + 1, dtype=np.float32)
    obs = {"proprio": np.tile(rows[:, None], (1, P)) + tag,
           "state": np.stack([rows, np.full(n + 1, tag)] + [rows * 0] * (S - 2), 1)}
    if images:
        obs["images"] = rng.integers(0, 255, (n + 1, 3, 4, 6, 3), dtype=np.uint8)
    reward = np.zeros(n, np.float32)
    if success:
        reward[-1] = 0.99 ** 2
    done = np.zeros(n, bool)
    done[-1] = True
    return OnlineEpisode(
        episode_id=eid, robot="sim0", policy_version=version, instruction=f"thread {eid}",
        success=success, observations=obs,
        actions=(np.arange(n, dtype=np.float32)[:, None, None] + tag
                 + np.zeros((n, K, D), np.float32)),
        noise=rng.normal(size=(n, K, D)).astype(np.float32),
        steered=np.arange(n) % 2 == 0, reward=reward, done=done,
        offset=(np.arange(n) % K + 1).astype(np.int64))


@pytest.fixture
def buffers(tmp_path: Path):
    rb = ReplayBuffers(tmp_path / "rb", fsync=False)
    yield rb
    rb.close()


def reopen(rb: ReplayBuffers, **kw) -> ReplayBuffers:
    rb.close()
    return ReplayBuffers(rb.root, fsync=False, **kw)


# -- hand-over ------------------------------------------------------------------------------


def test_handover_when_versions_advance(buffers: ReplayBuffers):
    assert buffers.add(episode("a1", 1)) == "on"
    assert buffers.add(episode("a2", 2)) == "on"
    assert buffers.buffer_of("a1") == "on" and buffers.recent_versions == [1, 2]
    assert buffers.add(episode("a3", 3)) == "on"
    assert buffers.buffer_of("a1") == "off"
    assert buffers.buffer_of("a2") == "on"
    assert buffers.ids("on") == ["a2", "a3"] and buffers.ids("off") == ["a1"]
    assert buffers.add(episode("a4", 4)) == "on"
    assert buffers.ids("off") == ["a1", "a2"]
    s = buffers.stats()
    assert (s["on_episodes"], s["off_episodes"]) == (2, 2)
    assert (s["on_transitions"], s["off_transitions"]) == (10, 10)
    assert s["on_versions"] == [3, 4] and s["off_versions"] == [1, 2]


def test_late_episodes_and_warm_up(buffers: ReplayBuffers):
    assert buffers.warm_up(episode("w0", 0)) == "off"
    assert buffers.stats()["versions_seen"] == []  # warm-up versions do not count
    buffers.add(episode("b3", 3))
    buffers.add(episode("b5", 5))
    assert buffers.add(episode("late1", 1)) == "off"   # old version arriving late
    assert buffers.add(episode("late5", 5)) == "on"    # current version arriving late
    # a version between the recent ones becomes one of the two most recent and pushes v3 out
    assert buffers.add(episode("b4", 4)) == "on"
    assert buffers.ids("on") == ["b5", "late5", "b4"]
    assert buffers.ids("off") == ["w0", "b3", "late1"]
    assert buffers.warm_up(episode("w9", 9)) == "off"
    assert buffers.recent_versions == [4, 5]


# -- sampling -------------------------------------------------------------------------------


def test_one_to_one_sampling_exact_per_batch(buffers: ReplayBuffers):
    buffers.add(episode("old", 1, n=50))
    buffers.add(episode("mid", 2, n=3))
    buffers.add(episode("new", 3, n=3))     # on: mid, new (6 transitions); off: old (50)
    for batch_size in (1, 2, 7, 64):
        batch = buffers.sample(batch_size)
        on = batch["on_policy"]
        assert int(on.sum()) == (batch_size + 1) // 2
        for i, eid in enumerate(batch["episode_id"]):
            assert (eid in ("mid", "new")) == bool(on[i])
            assert buffers.buffer_of(eid) == ("on" if on[i] else "off")
    # uniform over transitions within a buffer: 'mid' and 'new' have equal length
    ids = sum((buffers.sample(64)["episode_id"] for _ in range(20)), [])
    n_mid, n_new = ids.count("mid"), ids.count("new")
    assert n_mid + n_new == 640 and abs(n_mid - n_new) < 120


def test_one_empty_buffer(buffers: ReplayBuffers):
    with pytest.raises(ValueError, match="empty"):
        buffers.sample(4)
    buffers.warm_up(episode("w", 0))
    batch = buffers.sample(5)
    assert batch["episode_id"] == ["w"] * 5 and not batch["on_policy"].any()
    rb2 = ReplayBuffers(buffers.root.parent / "rb2", fsync=False)
    rb2.add(episode("x", 1))
    batch = rb2.sample(5)
    assert batch["on_policy"].all() and len(batch["episode_id"]) == 5
    rb2.close()


def test_sampled_rows_are_correct_transitions(buffers: ReplayBuffers):
    eps = {e.episode_id: e for e in (episode("s1", 1, n=6), episode("s2", 2, n=4, success=False),
                                     episode("s3", 0, n=5))}
    buffers.add(eps["s1"])
    buffers.add(eps["s2"])
    buffers.warm_up(eps["s3"])
    batch = buffers.sample(33, rng=np.random.default_rng(1))
    assert batch["obs"]["state"].shape == (33, S) and batch["obs"]["state"].dtype == torch.float32
    assert batch["proprio"].shape == (33, P) and batch["actions"].shape == (33, K, D)
    assert batch["mask"].shape == (33, K) and batch["mask"].all()
    assert batch["noise"].shape == (33, K, D) and batch["offset"].dtype == torch.int64
    assert batch["done"].dtype == torch.bool and batch["reward"].dtype == torch.float32
    for i, eid in enumerate(batch["episode_id"]):
        ep, t = eps[eid], int(batch["timestep"][i])
        assert batch["obs"]["instruction"][i] == ep.instruction
        assert batch["next_obs"]["instruction"][i] == ep.instruction
        np.testing.assert_array_equal(batch["obs"]["state"][i], ep.observations["state"][t])
        np.testing.assert_array_equal(batch["next_obs"]["state"][i],
                                      ep.observations["state"][t + 1])
        np.testing.assert_array_equal(batch["proprio"][i], ep.observations["proprio"][t])
        np.testing.assert_array_equal(batch["next_proprio"][i], ep.observations["proprio"][t + 1])
        np.testing.assert_array_equal(batch["actions"][i], ep.actions[t])
        np.testing.assert_array_equal(batch["noise"][i], ep.noise[t])
        assert float(batch["reward"][i]) == float(ep.reward[t])
        assert bool(batch["done"][i]) == bool(ep.done[t])
        assert int(batch["offset"][i]) == int(ep.offset[t])
        assert bool(batch["steered"][i]) == bool(ep.steered[t])
        assert int(batch["policy_version"][i]) == ep.policy_version
        assert int(batch["length"][i]) == len(ep)
    assert set(batch["episode_id"]) == set(eps)


def test_image_observations(tmp_path: Path):
    with ReplayBuffers(tmp_path / "img", fsync=False) as rb:
        ep = episode("i1", 1, n=3, images=True)
        rb.add(ep)
        batch = rb.sample(4)
        assert batch["obs"]["images"].shape == (4, 3, 4, 6, 3)
        assert batch["obs"]["images"].dtype == torch.uint8
        for i in range(4):
            t = int(batch["timestep"][i])
            np.testing.assert_array_equal(batch["next_obs"]["images"][i],
                                          ep.observations["images"][t + 1])
        # an episode whose observations differ from the buffer's is quarantined
        with pytest.raises(QuarantineError, match="schema"):
            rb.add(episode("noimg", 1))


# -- duplicates and quarantine --------------------------------------------------------------


def test_duplicates_ignored(buffers: ReplayBuffers):
    assert buffers.add(episode("d", 1)) == "on"
    other = episode("d", 7, n=9)
    assert buffers.add(other) == "duplicate"
    assert buffers.warm_up(other) == "duplicate"
    assert buffers.stats()["episodes"] == 1 and buffers.transitions() == 5
    assert buffers.recent_versions == [1]


def _broken(kind: str) -> OnlineEpisode:
    ep = episode(f"bad_{kind}", 1)
    if kind == "missing_transition":
        ep.observations = {k: v[:-1] for k, v in ep.observations.items()}
    elif kind == "missing_action":
        ep.actions = ep.actions[:-1]
    elif kind == "nan_reward":
        ep.reward = ep.reward.copy()
        ep.reward[1] = np.nan
    elif kind == "nan_obs":
        ep.observations["state"] = ep.observations["state"].copy()
        ep.observations["state"][2, 1] = np.nan
    elif kind == "nan_noise":
        ep.noise[0, 0, 0] = np.inf
    elif kind == "done_middle":
        ep.done = ep.done.copy()
        ep.done[2] = True
    elif kind == "offset":
        ep.offset = ep.offset.copy()
        ep.offset[0] = K + 1
    elif kind == "reward_range":
        ep.reward = ep.reward.copy()
        ep.reward[-1] = 1.5
    elif kind == "empty":
        ep = episode("bad_empty", 1, n=1)
        ep.observations = {k: v[:1] for k, v in ep.observations.items()}
        for name in ("actions", "noise", "steered", "reward", "done", "offset"):
            setattr(ep, name, getattr(ep, name)[:0])
    elif kind == "unsafe_id":
        ep.episode_id = "../escape"
    return ep


REASONS = {
    "missing_transition": r"missing or extra transitions\): observations\['proprio'\] has 5 "
                          r"rows, expected 6 for N = 5",
    "missing_action": r"missing or extra transitions\): actions has 4 rows, expected 5",
    "nan_reward": r"reward has 1 non-finite value\(s\), first at index \(1,\)",
    "nan_obs": r"observations\['state'\] has 1 non-finite value\(s\), first at index \(2, 1\)",
    "nan_noise": r"noise has 1 non-finite",
    "done_middle": r"done must be True exactly on the last row 4, it is True on rows \[2, 4\]",
    "offset": r"offset 5 at row 0 is outside 1\.\.k = 1\.\.4",
    "reward_range": r"reward 1\.5 at row 4 is outside \[0, 1\]",
    "empty": r"N == 0",
    "unsafe_id": r"'\.\./escape' is not a safe file name",
}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_quarantine(buffers: ReplayBuffers, kind: str, caplog):
    ep = _broken(kind)
    with pytest.raises(QuarantineError, match=REASONS[kind]):
        validate(ep)
    with caplog.at_level(logging.ERROR, logger="grrl_trainer.online.replay"):
        with pytest.raises(QuarantineError, match=REASONS[kind]):
            buffers.add(ep)
    assert any("quarantined" in r.message for r in caplog.records)
    reasons = list((buffers.root / "quarantine").glob("*.reason.txt"))
    assert len(reasons) == 1 and re.search(REASONS[kind], reasons[0].read_text())
    assert len(list((buffers.root / "quarantine").glob("*.npz"))) == 1
    assert not (buffers.root / "escape.npz").exists()
    assert buffers.stats()["quarantined"] == 1 and buffers.stats()["episodes"] == 0
    assert list((buffers.root / "episodes").iterdir()) == []


def test_reward_must_follow_eq1(buffers: ReplayBuffers):
    ep = episode("fail_with_reward", 1, success=False)
    ep.reward[-1] = 0.5
    with pytest.raises(QuarantineError, match="positive iff successful"):
        buffers.add(ep)
    ep = episode("early_reward", 1)
    ep.reward[0] = 0.5
    with pytest.raises(QuarantineError, match="only the last decision"):
        buffers.add(ep)


# -- persistence and recovery ---------------------------------------------------------------


def test_persistence_round_trip(buffers: ReplayBuffers):
    buffers.warm_up(episode("w", 0))
    for v in (1, 2, 3):
        buffers.add(episode(f"p{v}", v, n=v + 2))
    before = buffers.stats()
    rb = reopen(buffers)
    assert rb.stats() == before
    assert rb.ids("on") == ["p2", "p3"] and rb.ids("off") == ["w", "p1"]
    orig = episode("p3", 3, n=5)
    got = rb.episode("p3")
    for name in ("actions", "noise", "steered", "reward", "done", "offset"):
        np.testing.assert_array_equal(getattr(got, name), getattr(orig, name))
    for k, v in orig.observations.items():
        np.testing.assert_array_equal(got.observations[k], v)
    assert got.instruction == orig.instruction and got.robot == "sim0" and got.success
    assert rb.add(episode("p2", 2)) == "duplicate"
    index = json.loads((rb.root / "index.json").read_text())
    assert index["episodes"]["p1"]["buffer"] == "off" and index["versions_seen"] == [1, 2, 3]
    rb.close()


def test_lock_refuses_a_second_writer(buffers: ReplayBuffers):
    with pytest.raises(RuntimeError, match="in use"):
        ReplayBuffers(buffers.root)


def test_recovery_killed_between_episode_file_and_index(buffers: ReplayBuffers, monkeypatch):
    buffers.add(episode("r1", 1))
    buffers.add(episode("r2", 2))

    def killed() -> None:
        raise KeyboardInterrupt("killed before the index write")

    monkeypatch.setattr(buffers, "_save_index", killed)
    with pytest.raises(KeyboardInterrupt):
        buffers.add(episode("r3", 3))   # file written, index not: r1 still 'on' in the index
    monkeypatch.undo()
    index = json.loads((buffers.root / "index.json").read_text())
    assert "r3" not in index["episodes"] and index["episodes"]["r1"]["buffer"] == "on"
    rb = reopen(buffers)
    assert rb.ids("on") == ["r2", "r3"] and rb.ids("off") == ["r1"]
    assert rb.add(episode("r3", 3)) == "duplicate"
    assert rb.add(episode("r4", 4)) == "on"   # the arrival order continues after r3
    assert rb.ids() == ["r1", "r2", "r3", "r4"]
    index = json.loads((rb.root / "index.json").read_text())
    assert index["episodes"]["r2"]["buffer"] == "off" and index["episodes"]["r3"]["buffer"] == "on"
    rb.close()


def test_recovery_stray_temp_truncated_and_missing_files(buffers: ReplayBuffers, caplog):
    for i in range(4):
        buffers.add(episode(f"c{i}", 1))
    ep_dir = buffers.root / "episodes"
    (ep_dir / "c9.npz.tmp12345").write_bytes(b"half an episode")
    (buffers.root / "index.json.tmp999").write_text("{")
    data = (ep_dir / "c1.npz").read_bytes()
    (ep_dir / "c1.npz").write_bytes(data[: len(data) // 2])       # truncated
    (ep_dir / "c2.npz").unlink()                                   # index entry without file
    with caplog.at_level(logging.WARNING, logger="grrl_trainer.online.replay"):
        rb = reopen(buffers)
    assert rb.ids() == ["c0", "c3"]
    assert not list(ep_dir.glob("*tmp*")) and not list(rb.root.glob("*.tmp*"))
    reasons = [p.read_text() for p in (rb.root / "quarantine").glob("*.reason.txt")]
    assert len(reasons) == 1 and "c1.npz" in reasons[0] and "corrupt" in reasons[0]
    assert rb.stats()["quarantined"] == 1
    text = caplog.text
    assert "c2 is in the index but its file is missing" in text and "temporary file" in text
    # a dropped episode (c2) may be fed again; a quarantined one (c1) too
    assert rb.add(episode("c2", 1)) == "on"
    assert rb.add(episode("c1", 1)) == "on"
    rb.close()


def test_corrupt_index_is_rebuilt_from_files(buffers: ReplayBuffers):
    buffers.add(episode("x1", 1))
    buffers.add(episode("x2", 2))
    buffers.add(episode("x3", 3))
    (buffers.root / "index.json").write_text("{not json")
    rb = reopen(buffers)
    assert rb.ids("on") == ["x2", "x3"] and rb.ids("off") == ["x1"]
    assert list(rb.root.glob("index.json.corrupt*"))
    rb.close()


# -- capacity -------------------------------------------------------------------------------


def test_capacity_evicts_oldest_off_policy_first(tmp_path: Path):
    rb = ReplayBuffers(tmp_path / "cap", capacity=20, fsync=False)
    rb.warm_up(episode("w1", 0, n=4))
    rb.warm_up(episode("w2", 0, n=4))
    rb.add(episode("e1", 1, n=4))
    rb.add(episode("e2", 2, n=4))
    rb.add(episode("e3", 2, n=4))           # 20 transitions: nothing evicted
    assert rb.transitions() == 20
    rb.add(episode("e4", 3, n=4))           # e1 -> off; the oldest off (w1) goes
    assert rb.ids() == ["w2", "e1", "e2", "e3", "e4"]
    rb.add(episode("e5", 3, n=8))           # w2, e1 (off) go, not e2 (on, older than e4)
    assert rb.ids() == ["e2", "e3", "e4", "e5"] and rb.ids("off") == []
    rb.add(episode("e6", 4, n=8))           # e2, e3 -> off, then evicted
    assert rb.ids() == ["e4", "e5", "e6"] and rb.transitions() == 20
    assert not (rb.root / "episodes" / "w1.npz").exists()
    assert rb.add(episode("w1", 0)) == "duplicate"   # evicted ids stay known
    assert rb.stats()["evicted"] == 5
    rb.close()
    # on-policy episodes go only when the off-policy buffer is empty
    rb = ReplayBuffers(tmp_path / "cap2", capacity=10, fsync=False)
    rb.add(episode("o1", 1, n=4))
    rb.add(episode("o2", 1, n=4))
    rb.add(episode("o3", 2, n=4))
    assert rb.ids() == ["o2", "o3"] and rb.ids("off") == []
    rb = reopen(rb)
    assert rb.ids() == ["o2", "o3"]
    rb = reopen(rb, capacity=5)            # a smaller capacity on restart evicts at once
    assert rb.ids() == ["o3"]
    rb.close()


# -- kill -9 --------------------------------------------------------------------------------

# a trainer feeding episodes (no torch import: fast to start); prints each id once acknowledged
WRITER = textwrap.dedent(f"""
    import sys
    import numpy as np
    from grrl_trainer.online.replay import OnlineEpisode, ReplayBuffers
    K, D, P, S = {K}, {D}, {P}, {S}
""") + inspect.getsource(episode) + textwrap.dedent("""
    rb = ReplayBuffers(sys.argv[1])
    for i in range(int(sys.argv[2])):
        eid = f"k{i:04d}"
        result = rb.add(episode(eid, version=i // 3, n=3 + i % 4, seed=i))
        print(eid, result, flush=True)
""")


def _run_and_kill(root: Path, rng: random.Random, count: int = 5000) -> list[str]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(count)],
                            stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # the writer is up and adding
    assert first, "the writer died before acknowledging an episode"
    time.sleep(rng.uniform(0.0, 0.15))
    os.kill(proc.pid, signal.SIGKILL)
    rest = proc.stdout.read()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the writer finished before the kill"
    return [line.split()[0] for line in (first + rest).splitlines()]


def test_sigkill_at_random_moment_loses_nothing(tmp_path: Path):
    seed = time.time_ns() % 2**32
    rng = random.Random(seed)
    print(f"kill timing seed {seed}")   # shown by pytest on failure
    root = tmp_path / "killed"
    acknowledged: set[str] = set()
    for _ in range(3):
        acked = _run_and_kill(root, rng)
        acknowledged.update(acked)
        with ReplayBuffers(root, fsync=False) as rb:
            stored = rb.ids()
            assert acknowledged <= set(stored), sorted(acknowledged - set(stored))
            assert len(stored) == len(set(stored))
            # at most the episode being written when killed is stored without acknowledgement
            assert len(set(stored) - acknowledged) <= 1
            files = sorted(p.stem for p in (root / "episodes").glob("*.npz"))
            assert files == sorted(stored)
            index = json.loads((root / "index.json").read_text())
            assert sorted(index["episodes"]) == sorted(stored)
            n = len(stored)
            assert rb.transitions() == sum(3 + int(i[1:]) % 4 for i in stored)
            last = max(int(i[1:]) for i in stored)
            assert stored == [f"k{i:04d}" for i in range(last + 1)]   # in order, no gaps
            recent = rb.recent_versions
            assert all((rb.buffer_of(i) == "on") == (int(i[1:]) // 3 in recent) for i in stored)
            # re-feeding everything is a no-op for what is stored
            assert all(rb.add(episode(i, version=int(i[1:]) // 3, n=3 + int(i[1:]) % 4,
                                      seed=int(i[1:]))) == "duplicate" for i in stored)
            assert len(rb.ids()) == n
            acknowledged.update(stored)   # stored unacknowledged: the next run re-feeds it
        # the next run re-feeds from k0000 (a restarted trainer): duplicates, then new ones


def test_batches_carry_monte_carlo_returns_when_given_a_discount(tmp_path):
    r = np.array([0.0, 0.0, 0.5], np.float32)
    g = discounted_returns(r, np.array([2, 1, 3]), np.array([False, False, True]), 0.9)
    np.testing.assert_allclose(g, [0.9 ** 3 * 0.5, 0.9 * 0.5, 0.5], rtol=1e-6)
    with ReplayBuffers(tmp_path / "mc", gamma=0.9) as b:
        b.add(episode("mc-ep", n=3))                 # offsets 1, 2, 3; reward 0.99^2 at the end
        batch = b.batch([("mc-ep", 0), ("mc-ep", 1), ("mc-ep", 2)])
        last = 0.99 ** 2
        np.testing.assert_allclose(batch["mc_return"].numpy(),
                                   [0.9 * 0.9 ** 2 * last, 0.9 ** 2 * last, last], rtol=1e-6)
    with ReplayBuffers(tmp_path / "plain") as b:
        b.add(episode("e", n=3))
        assert "mc_return" not in b.sample(4)
