"""The trainer node's ROS-free core (grrl_trainer.online.trainer.OnlineTrainer): episodes arrive one by
one; the warm-up, then a round every N on-policy episodes, each writing version v + 1; bad
episodes are quarantined; a restart resumes without counting an episode twice."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from bytemini_driver.sim_state import STATE_DIM
from grrl_critic.steering import SteeringConfig
from grrl_policy.checkpoint import read_meta, save_checkpoint
from grrl_policy.model import GRRLModel, configure
from grrl_trainer.online.trainer import OnlineConfig, OnlineTrainer, critic_separation
from grrl_trainer.online.replay import OnlineEpisode, QuarantineError

SMALL = {"tiny": {"width": 32, "layers": 2, "heads": 2, "kv_heads": 1, "head_dim": 16,
                  "text_encoder": "hashed"},
         "expert": {"width": 32, "heads": 2, "mlp_ratio": 2.0}, "horizon": 8}


@pytest.fixture
def policy(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(GRRLModel(configure("tiny-state", SMALL)), tmp_path / "bc", version=1)
    return tmp_path / "bc"


def episode(i: int, version: int, success: bool = False, n: int = 3) -> OnlineEpisode:
    rng = np.random.default_rng(i)
    reward = np.zeros(n, np.float32)
    reward[-1] = 0.99 if success else 0.0
    return OnlineEpisode(
        episode_id=f"ep-{i:06d}-test", robot="robot1", policy_version=version,
        instruction="thread the left lace end", success=success,
        observations={"proprio": rng.normal(size=(n + 1, 16)).astype(np.float32),
                      "state": rng.normal(size=(n + 1, STATE_DIM)).astype(np.float32)},
        actions=rng.normal(size=(n, 8, 16)).astype(np.float32),
        noise=rng.normal(size=(n, 8, 16)).astype(np.float32), steered=np.ones(n, bool),
        reward=reward, done=np.arange(n) == n - 1, offset=np.full(n, 8))


def test_warm_up_rounds_quarantine_and_restart(policy, tmp_path):
    cfg = OnlineConfig(episodes_per_round=2, updates_per_round=2, batch_size=8,
                       warmup_episodes=1, warmup_updates=2)
    run = tmp_path / "run"
    core = OnlineTrainer(policy, run, cfg)
    assert core.version == 1 and core.due() is None
    assert core.add(episode(0, 1), {"seed": 30000}) == "warm-up"
    assert core.due() == "warm-up"
    res = core.run_due()
    assert res["kind"] == "warm-up" and res["version"] == 2 and core.due() is None
    assert read_meta(res["path"]).version == 2
    assert core.add(episode(1, 2, success=True), {"seed": 20000, "reason": "task complete"}) == "on"
    assert core.add(episode(1, 2)) == "duplicate"                   # not counted twice
    bad = episode(2, 2)
    bad.reward[1] = np.nan
    with pytest.raises(QuarantineError, match="reward"):
        core.add(bad)
    assert core.seen(bad.episode_id).startswith("rejected: quarantined")
    assert core.due() is None                                        # 1 of 2 on-policy episodes
    core.reject("ep-000003-test", "no joint state at the stamp of decision 2", quarantine=True)
    assert core.add(episode(4, 2), {"seed": 20001}) == "on"
    assert core.due() == "round"
    res = core.run_due()
    assert (res["kind"], res["version"], res["episodes"]) == ("round", 3, 2)
    assert set(res["metrics"]) >= {"critic_loss", "noise_actor_loss", "noise_critic_loss"}
    assert [(r["kind"], r["version"]) for r in core.st["learner_log"]] == [("warm-up", 2), ("round", 3)]
    assert {"q_mean", "eps_abs_mean", "eps_saturated_frac"} <= set(core.st["learner_log"][1])
    assert (run / "learner.png").exists()
    rows = list(csv.DictReader(open(run / "online.csv")))
    assert [(r["episode_id"], r["success"], r["version"]) for r in rows] == [
        ("ep-000001-test", "1", "2"), ("ep-000004-test", "0", "2")]
    assert (run / "online.png").exists() and list((run / "tb").glob("events.out.tfevents.*"))
    assert len(list((run / "replay" / "quarantine").glob("*.reason.txt"))) == 2
    # an episode stored but not logged (killed between the buffer's write and the state's)
    core.buffers.add(episode(5, 3))
    core.close()

    again = OnlineTrainer(policy, run, cfg)
    assert again.resumed and again.version == 3 and again.st["rounds"] == 1
    assert [e["episode_id"] for e in again.st["log"]][-1] == "ep-000005-test"
    assert again.st["pending"] == ["ep-000005-test"]
    assert again.add(episode(4, 2)) == "duplicate" and again.seen("ep-000003-test")
    assert again.learner.updates == 4                                 # the learner resumed too
    assert again.add(episode(6, 3)) == "on" and again.run_due()["version"] == 4
    again.close()
    with pytest.raises(ValueError, match="online run of"):
        save_checkpoint(GRRLModel(configure("tiny-state", SMALL)), tmp_path / "other", version=1)
        OnlineTrainer(tmp_path / "other", run, cfg)


def test_restart_before_the_first_round(policy, tmp_path):
    cfg = OnlineConfig(episodes_per_round=2, updates_per_round=1, batch_size=4,
                       warmup_episodes=0)
    core = OnlineTrainer(policy, tmp_path / "run", cfg)
    assert core.add(episode(0, 1), {"seed": 7}) == "on" and core.due() is None
    core.close()
    assert not (tmp_path / "run" / OnlineTrainer.STATE).exists()     # no learner change yet
    again = OnlineTrainer(policy, tmp_path / "run", cfg)
    assert again.resumed and again.st["pending"] == ["ep-000000-test"]
    assert again.st["log"][0]["seed"] == 7 and again.add(episode(0, 1)) == "duplicate"
    assert again.add(episode(1, 1)) == "on" and again.run_due()["version"] == 2
    again.close()


def test_the_warm_up_reports_how_well_its_critics_separate_success_from_failure(policy, tmp_path):
    cfg = OnlineConfig(episodes_per_round=2, updates_per_round=1, batch_size=8,
                       warmup_episodes=4, warmup_updates=3)
    core = OnlineTrainer(policy, tmp_path / "run", cfg)
    for i in range(4):
        core.add(episode(i, 1, success=i % 2 == 0, n=3 + i))
    res = core.run_due()
    sep = json.loads((tmp_path / "run" / "warmup_critics.json").read_text())
    assert sep == core.st["warmup_critics"]
    assert (sep["episodes"], sep["successes"], sep["transitions"]) == (4, 2, 3 + 4 + 5 + 6)
    for key in ("auroc_q_transitions", "auroc_q_noise_transitions", "auroc_q_episodes",
                "auroc_q_noise_episodes"):
        assert 0.0 <= sep[key] <= 1.0 and res["metrics"][f"warmup_{key}"] == sep[key]
    core.close()


def test_critic_separation_is_the_auroc_of_each_critic_by_episode_outcome(policy, tmp_path):
    class Oracle:                       # Q_φ knows the outcome, Q_φ' knows nothing
        def transition_values(self, b):
            return b["success"].float(), torch.zeros(len(b["success"]))

    core = OnlineTrainer(policy, tmp_path / "run", OnlineConfig(warmup_episodes=3))
    for i in range(3):
        core.add(episode(i, 1, success=i == 1, n=2 + i))
    ids = [e["episode_id"] for e in core.st["warmup"]]
    sep = critic_separation(Oracle(), core.buffers, ids, batch_size=2)
    assert sep["auroc_q_transitions"] == 1.0 and sep["auroc_q_episodes"] == 1.0
    assert sep["auroc_q_noise_transitions"] == 0.5 and sep["auroc_q_noise_episodes"] == 0.5
    assert (sep["q_mean_success"], sep["q_mean_failure"]) == (1.0, 0.0)
    only_failures = critic_separation(Oracle(), core.buffers, [ids[0], ids[2]])
    assert only_failures["auroc_q_episodes"] is None and only_failures["successes"] == 0
    core.close()


def test_steering_of_an_offline_policy_starts_at_zero_noise_and_a_steered_one_keeps_its_own(
        policy, tmp_path):
    cfg = OnlineConfig(episodes_per_round=1, updates_per_round=2, batch_size=8,
                       warmup_episodes=1, warmup_updates=2)
    core = OnlineTrainer(policy, tmp_path / "run", cfg)
    head = core.learner.model.noise_predictor.head
    assert not head.weight.any() and not head.bias.any()
    assert not core.learner.noise_target.head.weight.any()
    core.add(episode(0, 1, success=True))
    core.run_due()
    core.add(episode(1, 2))
    steered = core.run_due()["path"]            # a round moved the predictor
    trained = core.learner.model.noise_predictor.head.weight.clone()
    assert trained.any()
    core.close()
    again = OnlineTrainer(steered, tmp_path / "run2", cfg)   # a steerable checkpoint: kept
    torch.testing.assert_close(again.learner.model.noise_predictor.head.weight, trained)
    again.close()
    kept = OnlineTrainer(policy, tmp_path / "run3", OnlineConfig(
        steering=SteeringConfig(noise_init="checkpoint")))
    assert kept.learner.model.noise_predictor.head.weight.any()
    kept.close()
