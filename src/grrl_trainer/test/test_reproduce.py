"""grrl-reproduce end to end at the smoke size: every stage runs, results and plots are written,
the final policy is shipped, and a second run resumes instead of redoing the work."""
import json


from grrl_policy.checkpoint import load_checkpoint
from grrl_trainer.reproduce import RUNGS, main


def test_smoke_reproduction_runs_every_stage_and_resumes(tmp_path, capsys):
    out, pub, shipped = tmp_path / "run", tmp_path / "pub", tmp_path / "ship" / "policy"
    args = ["--out", str(out), "--size", "smoke", "--publish", str(pub), "--ship", str(shipped),
            "--quiet"]
    assert main(args) == 0
    results = json.loads((out / "results" / "results.json").read_text())
    assert list(results["rungs"]) == list(RUNGS)
    for rung in results["rungs"].values():
        assert rung["episodes"] == 2 and 0.0 <= rung["success_rate"] <= 1.0
        lo, hi = rung["success_ci95"]
        assert 0.0 <= lo <= rung["success_rate"] <= hi <= 1.0
    for name in ("ladder.png", "funnel.png", "online_curve.png", "online.csv", "results.md"):
        assert (out / "results" / name).stat().st_size > 0
        assert (pub / name).exists()
    assert results["online"]["episodes"] == 2
    model, meta = load_checkpoint(str(shipped))
    assert model.cfg.name == "tiny-state-task" and model.cfg.action_space == "task"
    best = results["best_rung"]
    assert best in RUNGS and results["rungs"][best]["success_rate"] == \
        max(r["success_rate"] for r in results["rungs"].values())
    src = out / results["checkpoints"][best]
    assert meta.sha256 == load_checkpoint(str(src))[1].sha256
    table = capsys.readouterr().out
    assert "+ online RL" in table
    # the same command again: nothing is retrained or re-evaluated
    before = {p: p.stat().st_mtime for p in out.rglob("*.safetensors")}
    assert main(args) == 0
    assert {p: p.stat().st_mtime for p in out.rglob("*.safetensors")} == before
    # another configuration in the same directory is refused, not mixed in
    assert main(["--out", str(out), "--size", "smoke", "--bc-steps", "5", "--quiet"]) == 2
    assert "another configuration" in capsys.readouterr().err
