"""grrl-eval: deterministic parallel evaluation, limits of the executed commands, failures as
results (never crashes), the report, the CLI's errors."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from bytemini_driver import description as desc
from bytemini_driver.sim import PhysicsError, ShoeLacingSim
from bytemini_driver.sim_state import STATE_DIM
from grrl_policy.checkpoint import save_checkpoint
from grrl_policy.model import GRRLModel, preset
from grrl_policy.policy_runtime import Policy
from grrl_policy.tiny_backbone import TinyBackboneConfig
from grrl_trainer.evaluation import evaluate as evaluation
from grrl_trainer.evaluation.evaluate import (EpisodeResult, EvalConfig, evaluate, evaluate_or_reuse,
                                              main, make_sim, run_episode, save_gif, summarize,
                                              summary_line)

HASHED_STATE = preset("tiny-state", tiny=TinyBackboneConfig(
    observation="state", state_dim=STATE_DIM, text_encoder="hashed"))
HASHED_IMAGES = preset("tiny", tiny=TinyBackboneConfig(text_encoder="hashed"))


def state_policy(seed: int = 0) -> Policy:
    torch.manual_seed(seed)
    return Policy(GRRLModel(HASHED_STATE))


def deterministic(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("wall_time", "inference_time")}


def test_evaluation_is_independent_of_the_worker_count_and_writes_the_report(tmp_path):
    reports = {}
    for workers in (1, 2):
        cfg = EvalConfig(episodes=2, time_limit=3.0, workers=workers,
                         out_dir=str(tmp_path / f"w{workers}"))
        reports[workers] = evaluate(None, cfg, preset="tiny-state", progress=False)
    one, two = reports[1], reports[2]
    assert [deterministic(r) for r in one["results"]] == [deterministic(r) for r in two["results"]]
    for r in one["results"]:
        assert r["seed"] in (10_000, 10_001) and not r["success"]
        c = cfg.controller                             # a decision every m chunk steps
        assert r["steps"] == 150 and math.isclose(r["sim_time"], 3.0)
        assert r["chunks"] == math.ceil(3.0 / (c.step_period * c.execute_steps) - 1e-9)
        assert r["reason"] == "timeout" or r["reason"].startswith("jammed"), r["reason"]
        assert len(r["final_joints"]) == 16
    # different seeds, different scenes: the fingerprint tells them apart
    assert one["results"][0]["final_joints"] != one["results"][1]["final_joints"]
    rep = json.loads((tmp_path / "w2" / "eval.json").read_text())
    for key in ("checkpoint", "sha256", "policy_version", "config", "results", "success_rate",
                "success_ci95", "funnel", "funnel_counts", "mean_episode_time"):
        assert key in rep, key
    assert rep["checkpoint"] is None and rep["policy_version"] == 0 and rep["model"] == "tiny-state"
    assert rep["config"]["episodes"] == 2 and rep["config"]["first_seed"] == 10_000
    lo, hi = rep["success_ci95"]
    assert lo <= rep["success_rate"] <= hi and rep["success_rate"] == 0.0
    assert list(rep["funnel"]) == ["picked", "threaded", "handed_over", "placed"]
    assert math.isclose(rep["mean_episode_time"], 3.0)
    assert (tmp_path / "w2" / "eval.png").stat().st_size > 1000


def test_executed_commands_stay_within_the_joint_limits(monkeypatch):
    targets, positions = [], []
    set_targets, step = ShoeLacingSim.set_joint_targets, ShoeLacingSim.step

    def record_targets(self, q):
        targets.append(np.array(q, float))
        set_targets(self, q)

    def record_step(self, n=1):
        step(self, n)
        positions.append(self.joint_positions())

    monkeypatch.setattr(ShoeLacingSim, "set_joint_targets", record_targets)
    monkeypatch.setattr(ShoeLacingSim, "step", record_step)
    result = run_episode(state_policy(), 10_000, EvalConfig(time_limit=3.0))
    assert result.steps == len(targets) > 50 and result.chunks >= 2
    lo, hi, vel = desc.actuated_joint_limits()
    T, Q = np.array(targets), np.array(positions[-len(targets):])
    assert np.all(T >= lo) and np.all(T <= hi)
    # the simulated joints obey their range up to MuJoCo's soft limit constraint, which
    # contacts (a random policy pushes the arms into the table) can press a little beyond
    assert np.all(Q >= lo - 0.05) and np.all(Q <= hi + 0.05)
    # planned at 0.8 x the URDF velocity; the driver's quintic splice (its finite-difference
    # start velocity, zero start acceleration) adds an overshoot, but stays near the limit
    speed = np.abs(np.diff(T, axis=0)) / 0.02
    assert np.all(speed <= 1.25 * vel), (speed / vel).max(axis=0)


def test_noise_scale_zero_makes_every_noise_seed_give_the_same_episode():
    from grrl_policy.controller import ControllerConfig

    def episode(noise_seed: int, scale: float) -> list:
        cfg = EvalConfig(time_limit=1.0, controller=ControllerConfig(
            noise_seed=noise_seed, noise_scale=scale))
        return run_episode(state_policy(), 10_000, cfg).final_joints
    assert episode(1, 0.0) == episode(2, 0.0)
    assert episode(1, 1.0) != episode(2, 1.0)
    with pytest.raises(ValueError, match="noise_scale"):
        ControllerConfig(noise_scale=float("nan"))


def test_a_policy_producing_nan_ends_the_episode_with_a_reason():
    policy = state_policy()
    with torch.no_grad():
        policy._model.action_expert.head.bias.fill_(float("nan"))
    result = run_episode(policy, 10_000, EvalConfig(time_limit=2.0))
    assert not result.success and result.reason.startswith("policy error:")
    assert "non-finite" in result.reason and result.chunks == 0 and result.steps == 0


def test_a_physics_fault_ends_the_episode_with_a_reason(monkeypatch):
    step = ShoeLacingSim.step

    def blow_up(self, n=1):
        if self.data.time > 0.51:
            raise PhysicsError(f"non-finite physics state at t={self.data.time:.3f}s")
        step(self, n)

    monkeypatch.setattr(ShoeLacingSim, "step", blow_up)
    result = run_episode(state_policy(), 10_000, EvalConfig(time_limit=2.0))
    assert not result.success and result.reason.startswith("physics fault: non-finite")
    assert result.steps == 26 and math.isclose(result.sim_time, 0.52) and result.final_joints == []


def test_an_image_model_renders_at_its_size_and_records_video(tmp_path):
    torch.manual_seed(0)
    policy = Policy(GRRLModel(HASHED_IMAGES))
    cfg = EvalConfig(time_limit=1.0)
    sim = make_sim(policy.config, cfg)
    assert sim.render("head").shape == (128, 128, 3)
    result = run_episode(policy, 10_002, cfg, video=True, sim=sim)
    sim.close()
    assert result.reason == "timeout" or result.reason.startswith("jammed"), result.reason
    assert result.chunks >= 1 and result.steps >= 1 and result.frames
    assert all(f.shape == (128, 128, 3) and f.dtype == np.uint8 for f in result.frames)
    if result.reason == "timeout":
        c = cfg.controller                             # a decision every m chunk steps
        assert result.steps == 50 and len(result.frames) == 10
        assert result.chunks == math.ceil(1.0 / (c.step_period * c.execute_steps) - 1e-9)
    save_gif(result.frames, tmp_path / "ep.gif")
    from PIL import Image
    with Image.open(tmp_path / "ep.gif") as gif:
        assert gif.n_frames == len(result.frames) and gif.size == (128, 128)


def hand_made(success: bool, stages: list[str], t: float = 10.0) -> EpisodeResult:
    return EpisodeResult(0, False, "x", success, stages, 1, 1, t,
                         "success" if success else "timeout")


def test_summary_wilson_interval_and_funnel():
    full = ["picked", "threaded", "handed_over", "placed"]
    results = ([hand_made(True, full, 20.0)] * 37 + [hand_made(False, full[:3])] * 8
               + [hand_made(False, full[:2])] * 15 + [hand_made(False, full[:1])] * 30
               + [hand_made(False, [])] * 10)
    s = summarize(results)
    assert s["episodes"] == 100 and s["successes"] == 37 and s["success_rate"] == 0.37
    lo, hi = s["success_ci95"]
    assert round(100 * lo, 1) == 28.2 and round(100 * hi, 1) == 46.8
    assert s["funnel"] == {"picked": 0.9, "threaded": 0.6, "handed_over": 0.45, "placed": 0.37}
    assert s["funnel_counts"]["threaded"] == 60
    assert math.isclose(s["mean_episode_time"], (37 * 20 + 63 * 10) / 100)
    assert s["mean_success_time"] == 20.0 and s["failure_reasons"] == {"timeout": 63}
    line = summary_line(s)
    assert line == ("success 37/100 = 37.0% (95% CI 28.2-46.8%) | picked 90% threaded 60% "
                    "handed_over 45% placed 37%")
    empty = summarize([hand_made(False, [])])
    assert empty["success_ci95"][0] == 0.0 and 0 < empty["success_ci95"][1] < 1
    assert EpisodeResult.from_dict(results[0].to_dict()) == results[0]


def test_cli_refuses_missing_and_corrupt_checkpoints(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main([str(tmp_path / "nope"), "--out", out, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot load checkpoint" in err and "no such checkpoint" in err
    assert "Traceback" not in err
    torch.manual_seed(0)
    meta = save_checkpoint(GRRLModel(HASHED_STATE), tmp_path / "ck", version=3)
    assert meta.version == 3
    weights = tmp_path / "ck.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert main([str(tmp_path / "ck"), "--out", out, "--quiet"]) == 2
    assert "corrupt" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert main([str(tmp_path / "bad.json"), "--out", out, "--quiet"]) == 2
    assert "unreadable checkpoint config" in capsys.readouterr().err


def test_a_finished_evaluation_is_reused_only_for_the_same_weights_and_settings(tmp_path,
                                                                                monkeypatch):
    torch.manual_seed(0)
    save_checkpoint(GRRLModel(HASHED_STATE), tmp_path / "run" / "policy", version=1)
    ckpt = str(tmp_path / "run" / "policy")
    cfg = EvalConfig(episodes=1, time_limit=0.5, workers=1, out_dir=str(tmp_path / "eval"))
    first = evaluate_or_reuse(ckpt, cfg, progress=False)
    calls = []
    monkeypatch.setattr(evaluation, "evaluate",
                        lambda c, e, progress=True: calls.append((c, e)) or {"fresh": True})
    # how it ran does not matter; the same weights reached through a link are the same policy
    (tmp_path / "link").symlink_to(tmp_path / "run")
    again = [evaluate_or_reuse(ckpt, dataclasses.replace(cfg, workers=2), progress=False),
             evaluate_or_reuse(str(tmp_path / "link" / "policy"), cfg, progress=False)]
    assert again == [first, first] and calls == []
    # a report from before a controller setting existed is read with the setting's value that
    # gives its episodes (REPORT_LEGACY), and reused for that value only
    report_path = tmp_path / "eval" / "eval.json"
    old = json.loads(report_path.read_text())
    del old["config"]["controller"]["replan_slack"]
    report_path.write_text(json.dumps(old))
    assert evaluate_or_reuse(ckpt, cfg, progress=False) == old and calls == []
    slack = dataclasses.replace(cfg, controller=dataclasses.replace(cfg.controller, replan_slack=0.001))
    assert evaluate_or_reuse(ckpt, slack, progress=False) == {"fresh": True}
    # other seeds, another time limit, another controller: measured again, never reused
    for changed in (dataclasses.replace(cfg, first_seed=9000),
                    dataclasses.replace(cfg, time_limit=0.6),
                    dataclasses.replace(cfg, controller=dataclasses.replace(cfg.controller, steer=True))):
        assert evaluate_or_reuse(ckpt, changed, progress=False) == {"fresh": True}
    # other weights at the same path, or an unreadable report: measured again
    torch.manual_seed(1)
    save_checkpoint(GRRLModel(HASHED_STATE), tmp_path / "run" / "policy", version=2)
    assert evaluate_or_reuse(ckpt, cfg, progress=False) == {"fresh": True}
    (tmp_path / "eval" / "eval.json").write_text("{not json")
    assert evaluate_or_reuse(ckpt, cfg, progress=False) == {"fresh": True}
    assert len(calls) == 6


def test_cli_help():
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
