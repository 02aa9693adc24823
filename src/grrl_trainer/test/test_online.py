"""In-process online steering RL: warm-up rollouts go to the off-policy buffer, online rounds to
the on-policy one, every round writes a newer checkpoint whose episodes carry its version, and a
re-run of a finished (or interrupted) run adds nothing twice."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from grrl_critic.steering import SteeringConfig
from grrl_policy.checkpoint import read_meta, save_checkpoint
from grrl_policy.model import GRRLModel, configure
from grrl_trainer.online.trainer import OnlineConfig, RolloutConfig, run_online
from grrl_trainer.online.replay import ReplayBuffers

SMALL = {"tiny": {"width": 32, "layers": 2, "heads": 2, "kv_heads": 1, "head_dim": 16,
                  "text_encoder": "hashed"},
         "expert": {"width": 32, "heads": 2, "mlp_ratio": 2.0}, "horizon": 8}


@pytest.fixture
def policy(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(GRRLModel(configure("tiny-state", SMALL)), tmp_path / "bc", version=1)
    return tmp_path / "bc"


def test_warm_up_rounds_versions_and_rerun(policy, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = OnlineConfig(episodes_per_round=2, updates_per_round=2, warmup_episodes=2,
                           warmup_updates=2, batch_size=8, steering=SteeringConfig())
        rollout = RolloutConfig(episodes=4, workers=1, time_limit=2.0)
        run = tmp_path / "online"
        res = run_online(policy, run, cfg, rollout, progress=False)
        assert res["episodes"] == 4 and res["version"] == 1 + 1 + 2    # warm-up + two rounds
        assert read_meta(res["final_checkpoint"]).version == 4
        with ReplayBuffers(run / "replay") as b:
            stats = b.stats()
            ids = b.ids()
        assert sum(i.startswith("warm-v1-") for i in ids) == 2
        assert {i for i in ids if i.startswith("online-")} == {
            "online-v2-s20000", "online-v2-s20001", "online-v3-s20002", "online-v3-s20003"}
        # the two latest versions that have episodes (v2, v3) are on-policy; warm-up is off-policy
        assert stats["on_versions"] == [2, 3] and stats["on_episodes"] == 4
        assert stats["off_versions"] == [1] and stats["off_episodes"] == 2
        assert stats["quarantined"] == 0
        rows = list(csv.DictReader(open(run / "online.csv")))
        assert [int(r["version"]) for r in rows] == [2, 2, 3, 3] and (run / "online.png").exists()
        again = run_online(policy, run, cfg, rollout, progress=False)            # finished: nothing new
        assert again["episodes"] == 4 and len(again["log"]) == 4
        with pytest.raises(ValueError, match="another configuration"):
            run_online(policy, run, OnlineConfig(), RolloutConfig(episodes=6, workers=1),
                       progress=False)
    finally:
        torch.set_num_threads(threads)


def test_resume_a_round_stored_but_not_trained(policy, tmp_path, monkeypatch):
    """Stopped after a round's episodes were stored and before its update (the moment a random
    kill once hit): the rerun trains that round and goes on, storing nothing twice."""
    from grrl_trainer.online import trainer as trainer_mod

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    real = trainer_mod.OnlineTrainer.run_due

    def stop_before_the_first_round(self, force=False):
        if self.st["warmup_done"] and len(self.st["pending"]) == 2:
            raise KeyboardInterrupt
        return real(self, force)
    try:
        cfg = OnlineConfig(episodes_per_round=2, updates_per_round=1, warmup_episodes=1,
                           warmup_updates=1, batch_size=8, steering=SteeringConfig())
        rollout = RolloutConfig(episodes=4, workers=1, time_limit=2.0)
        run = tmp_path / "online"
        monkeypatch.setattr(trainer_mod.OnlineTrainer, "run_due", stop_before_the_first_round)
        with pytest.raises(KeyboardInterrupt):
            run_online(policy, run, cfg, rollout, progress=False)
        monkeypatch.setattr(trainer_mod.OnlineTrainer, "run_due", real)
        res = run_online(policy, run, cfg, rollout, progress=False)
        assert res["episodes"] == 4 and res["version"] == 4
        rows = list(csv.DictReader(open(run / "online.csv")))
        assert [(int(r["seed"]), int(r["version"])) for r in rows] == \
            [(20000, 2), (20001, 2), (20002, 3), (20003, 3)]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_kill_9_at_a_random_moment_then_resume(policy, tmp_path):
    """SIGKILL the online trainer while it works, run it again to the end: every online
    episode is counted once, the buffer holds each episode once, versions increase."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "online"
    cmd = [sys.executable, "-m", "grrl_trainer.online.trainer", "--policy", str(policy), "--out", str(run),
           "--episodes", "6", "--episodes-per-round", "2", "--updates-per-round", "3",
           "--warmup-episodes", "2", "--warmup-updates", "3", "--batch-size", "8",
           "--workers", "1", "--time-limit", "2.0", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # kill once the run is under way (after the warm-up checkpoint), at a random moment
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "v0002.json").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.05)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 3.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(open(run / "online.csv")))
    assert [int(r["seed"]) for r in rows] == list(range(20000, 20006))
    versions = [int(r["version"]) for r in rows]
    assert versions == sorted(versions) and versions[0] == 2 and versions[-1] == 4
    with ReplayBuffers(run / "replay") as b:
        ids = b.ids()
    online = [i for i in ids if i.startswith("online-")]
    assert len(online) == len(set(online)) == 6
    assert sorted(int(i.rsplit("-s", 1)[1]) for i in online) == list(range(20000, 20006))


def test_the_control_run_learns_but_acts_without_steering(policy, tmp_path):
    """``steer=False``: the same rounds and updates, every online decision from ε ~ N(0, I)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = OnlineConfig(episodes_per_round=1, updates_per_round=2, warmup_episodes=0,
                           batch_size=8)
        run = tmp_path / "control"
        res = run_online(policy, run, cfg, RolloutConfig(episodes=2, workers=1, time_limit=1.0,
                                                         steer=False), progress=False)
        assert res["episodes"] == 2 and res["version"] == 1 + 2
        with ReplayBuffers(run / "replay") as b:
            eps = [b.episode(i) for i in b.ids()]
        assert len(eps) == 2 and not any(e.steered.any() for e in eps)
    finally:
        torch.set_num_threads(threads)


def test_held_exploration_keeps_each_draw_for_explore_hold_decisions(policy, tmp_path):
    """The first steered episodes start at ε = 0 (the offline predictor zeroed), so what they
    record is the exploration alone: one draw per ``explore_hold`` decisions."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = OnlineConfig(episodes_per_round=1, updates_per_round=1, warmup_episodes=1,
                           warmup_updates=1, batch_size=8)
        run = tmp_path / "held"
        run_online(policy, run, cfg, RolloutConfig(episodes=1, workers=1, time_limit=1.0,
                                                   explore_hold=3), progress=False)
        with ReplayBuffers(run / "replay") as b:
            ep = b.episode("online-v2-s20000")
        assert ep.steered.all() and len(ep) >= 7
        noise = ep.noise.reshape(len(ep), -1)
        for start in range(0, len(ep) - 2, 3):
            group = noise[start:start + 3]
            np.testing.assert_array_equal(group, np.broadcast_to(group[0], group.shape))
        assert not np.array_equal(noise[0], noise[3])
        assert 0.1 < noise.std() < 0.5                      # explore_std 0.3 around zero
    finally:
        torch.set_num_threads(threads)


def test_unsteered_episodes_draw_their_noise_at_unsteered_noise(policy, tmp_path):
    """The warm-up rollouts (and the control run's episodes) act with ε ~ N(0, σ²I),
    σ = ``unsteered_noise`` (by default the steered episodes' exploration around ε = 0)."""
    assert RolloutConfig().unsteered_noise == RolloutConfig().explore_std
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = OnlineConfig(episodes_per_round=1, updates_per_round=1, warmup_episodes=1,
                           warmup_updates=1, batch_size=8)
        run = tmp_path / "near_zero"
        run_online(policy, run, cfg, RolloutConfig(episodes=1, workers=1, time_limit=1.0,
                                                   steer=False, unsteered_noise=0.5),
                   progress=False)
        with ReplayBuffers(run / "replay") as b:
            eps = {i: b.episode(i) for i in b.ids()}
        assert set(eps) == {"warm-v1-s30000", "online-v2-s20000"}
        for ep in eps.values():
            assert not ep.steered.any() and len(ep) >= 7
            assert 0.42 < ep.noise.std() < 0.58
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("bad", [dict(unsteered_noise=-0.1), dict(explore_std=float("nan")),
                                 dict(unsteered_noise=float("inf")), dict(workers=0),
                                 dict(explore_hold=0), dict(time_limit=0.0)])
def test_rollout_config_refuses_impossible_settings(bad):
    with pytest.raises(ValueError):
        RolloutConfig(**bad)
