"""grrl-reproduce end to end at the smoke size: every stage runs, results and plots are written,
the final policy is shipped, and a second run resumes instead of redoing the work."""
import json
import math

import pytest

from bytemini_driver.task import STAGES
from grrl_policy.checkpoint import load_checkpoint
from grrl_trainer.evaluation.evaluate import EvalConfig
from grrl_trainer.reproduce import RUNGS, SIZES, ReproduceConfig, main

OFFLINE = ("all", "filtered", "filtered_mirror")


def eval_dirs(sigma: float) -> dict[str, str]:
    """Where each rung of the ladder at σ was evaluated (σ = 1: the names they always had)."""
    tail = "" if sigma == 1 else f"_sigma{sigma:g}"
    return {**{r: f"eval_{v}{tail}" for r, v in zip(RUNGS, OFFLINE)}, RUNGS[3]: "eval_online"}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval, written out again from its formula."""
    p = k / n
    centre = (p + z ** 2 / (2 * n)) / (1 + z ** 2 / n)
    half = z / (1 + z ** 2 / n) * math.sqrt(p * (1 - p) / n + z ** 2 / (4 * n ** 2))
    return max(0.0, centre - half), min(1.0, centre + half)


def test_smoke_reproduction_runs_every_stage_and_resumes(tmp_path, capsys):
    out, pub, shipped = tmp_path / "run", tmp_path / "pub", tmp_path / "ship" / "policy"
    args = ["--out", str(out), "--size", "smoke", "--publish", str(pub), "--ship", str(shipped),
            "--quiet"]
    assert main(args) == 0
    results = json.loads((out / "results" / "results.json").read_text())
    assert list(results["rungs"]) == list(RUNGS)
    smoke = SIZES["smoke"]
    assert {k: results["config"][k] for k in smoke} == smoke
    seeds = list(range(results["config"]["eval_first_seed"],
                       results["config"]["eval_first_seed"] + smoke["eval_episodes"]))
    # a ladder per σ of the offline rungs' noise, ε = 0 first (the headline), then N(0, I)
    sigmas = results["config"]["offline_noise"]
    assert sigmas == [0.0, 1.0] and results["headline"] == "sigma=0"
    assert list(results["ladders"]) == ["sigma=0", "sigma=1"]
    assert results["ladders"]["sigma=0"] == results["rungs"]
    rungs = [(sigma, name, rung) for sigma, ladder in zip(sigmas, results["ladders"].values())
             for name, rung in ladder.items()]
    for sigma, name, rung in rungs:
        # every number of the rung, recomputed from the episodes of its evaluation report
        report = json.loads((out / eval_dirs(sigma)[name] / "eval.json").read_text())
        control = report["config"]["controller"]
        assert (control["steer"], control["noise_scale"]) == \
            ((True, 1.0) if name == RUNGS[3] else (False, sigma))
        episodes = report["results"]
        assert [e["seed"] for e in episodes] == seeds          # the same held-out seeds
        k, n = sum(bool(e["success"]) for e in episodes), len(episodes)
        assert rung["episodes"] == n == smoke["eval_episodes"] and rung["successes"] == k
        assert rung["success_rate"] == k / n
        assert rung["success_ci95"] == pytest.approx(wilson(k, n), abs=1e-12)
        highest = [max((STAGES.index(s) for s in e["stages"]), default=0) for e in episodes]
        assert list(rung["funnel"]) == list(STAGES[1:])
        assert rung["funnel"] == {s: sum(h >= i for h in highest) / n
                                  for i, s in enumerate(STAGES) if i}
        funnel = list(rung["funnel"].values())
        assert funnel == sorted(funnel, reverse=True)           # monotone non-increasing
        assert sum(rung["failure_reasons"].values()) == n - k
    for name in ("ladder.png", "ladder_sigma1.png", "funnel.png", "online_curve.png",
                 "online.csv", "results.md"):
        assert (out / "results" / name).stat().st_size > 0
        assert (pub / name).exists()
    assert results["online"]["episodes"] == 2
    # the demonstrations: the plain ones and the DART ones, merged, on disjoint seeds
    merged = json.loads((out / "demos_all" / "info.json").read_text())["merged_from"]
    assert [m["episodes"] for m in merged] == [smoke["demos"], smoke["dart_demos"]]
    noise = [m["collection"]["execution_noise_std"] for m in merged]
    assert noise == [0.0, results["config"]["dart_noise_std"]] and noise[1] > 0
    model, meta = load_checkpoint(str(shipped))
    assert model.cfg.name == "tiny-state-task" and model.cfg.action_space == "task"
    # the BC rungs use the imitation recipe
    bc_all, _ = load_checkpoint(str(out / "bc_all" / "policy"))
    assert (bc_all.cfg.action_mode, bc_all.cfg.action_norm, bc_all.cfg.state_norm) == \
        ("delta", "per_step", True)
    # the mirrored rung trains mirror_steps_factor x the steps (the same passes over each variant)
    trained = {v: json.loads((out / f"bc_{v}" / "policy.json").read_text())["extra"]["step"]
               for v in ("all", "filtered", "filtered_mirror")}
    factor = results["config"]["mirror_steps_factor"]
    assert trained == {"all": smoke["bc_steps"], "filtered": smoke["bc_steps"],
                       "filtered_mirror": round(factor * smoke["bc_steps"])} and factor == 2.0
    best = results["best_rung"]
    rates = {n: r["success_rate"] for n, r in results["rungs"].items()}
    assert best == [n for n in RUNGS if rates[n] == max(rates.values())][-1]   # the later on a tie
    assert results["best_noise_scale"] == (None if best == RUNGS[3] else 0.0)
    src = out / results["checkpoints"][best]
    assert meta.sha256 == load_checkpoint(str(src))[1].sha256
    table = capsys.readouterr().out
    assert "+ online RL" in table and "sigma=0" in table and "sigma=1" in table
    assert ("steer:=true" if best == RUNGS[3] else "noise_scale:=0") in table
    # the same command again: nothing is retrained or re-evaluated
    before = {p: p.stat().st_mtime for p in out.rglob("*.safetensors")}
    assert main(args) == 0
    assert {p: p.stat().st_mtime for p in out.rglob("*.safetensors")} == before
    # another configuration in the same directory is refused, not mixed in
    assert main(["--out", str(out), "--size", "smoke", "--bc-steps", "5", "--quiet"]) == 2
    assert "another configuration" in capsys.readouterr().err


def test_the_default_size_evaluates_as_grrl_eval_does():
    """The rungs are comparable with every held-out number published by grrl-eval."""
    assert ReproduceConfig().eval_time_limit == EvalConfig().time_limit
