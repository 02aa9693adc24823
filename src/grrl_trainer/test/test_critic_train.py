"""grrl-critic on a small synthetic dataset: train, resume, filter, plot; and the bad inputs
(no failures or keyframes, an empty filter result, a diverging critic) stop with a message and
write no broken checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from grrl_critic.filtering import FilterConfig, keep_mask, keep_masks
from grrl_critic.td3bc import TD3BCConfig
from grrl_policy.checkpoint import read_meta
from grrl_trainer.offline import critic_train
from grrl_trainer.offline.critic_train import CriticRunConfig, train_critic
from grrl_trainer.data.dataset import EpisodeDataset, episode_path, write_episode

from test_bc import SMALL, record


def make_data(root: Path, failures: bool = True, keyframes: bool = True) -> Path:
    for seed, (T, ok) in enumerate(zip((30, 24, 20), (True, not failures, True))):
        write_episode(episode_path(root, seed), record(seed, T, ok, keyframes=[5] if (seed and keyframes) else []))
    return root


def cfg(**kw) -> CriticRunConfig:
    base = dict(model={**SMALL, "horizon": 4}, steps=30, batch_size=16, checkpoint_every=10,
                log_every=5, workers=0, seed=1, td3bc=TD3BCConfig(gamma=0.9))
    return CriticRunConfig(**{**base, **kw})


def test_train_resume_filter_and_plot(tmp_path):
    data = make_data(tmp_path / "data")
    run = tmp_path / "run"
    part = train_critic(data, run, cfg(), progress=False, stop_after=20)
    assert part.name == "step_0000020" and not (run / "critic.json").exists()
    # a row logged after the last saved state (a kill between two states) is dropped on resume
    with open(run / "critic.csv", "a") as f:
        f.write("25,9.9,9.9,0.5,1.0,10\n")
    final = train_critic(data, run, cfg(), progress=False)
    meta = read_meta(final)
    assert meta.extra["role"] == "critic" and meta.extra["step"] == 30
    rows = (run / "critic.csv").read_text().splitlines()
    assert rows[0].startswith("step,critic_loss")
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(5, 35, 5))
    assert "25,9.9,9.9,0.5,1.0,10" not in (run / "critic.csv").read_text()
    # a changed configuration is refused
    with pytest.raises(ValueError, match="another configuration"):
        train_critic(data, run, cfg(batch_size=8), progress=False)
    code = critic_train.main(["filter", "--data", str(data), "--critic", str(final), "--out",
                              str(tmp_path / "f.npz"), "--delta", "0.5", "--plot", "2", "--quiet"])
    assert code == 0
    f = np.load(tmp_path / "f.npz")
    assert len(f["keep"]) == 30 + 24 + 20 and np.isfinite(f["progress"]).all()
    summary = json.loads((tmp_path / "f.json").read_text())
    assert summary["samples"] == 74 and summary["transitions_per_second"] > 0
    # without --horizon the window is the critic's chunk (4) and gamma its discount (0.9); the
    # mask is the delta rule's
    assert summary["config"] == {"delta": 0.5, "horizon": 4, "drop": "log_shortfall",
                                 "gamma": 0.9, "rho_floor": 0.001, "keep_stages": [],
                                 "max_removed_fraction": 1.0, "progress_bands": 10}
    for e in range(3):
        sel = f["episode"] == e
        np.testing.assert_array_equal(
            f["keep"][sel], keep_mask(f["progress"][sel], FilterConfig(delta=0.5, horizon=4, gamma=0.9)))
    assert (tmp_path / "f.png").stat().st_size > 0
    # the coverage guards from the command line: the dataset's stages and the progress cap
    code = critic_train.main(["filter", "--data", str(data), "--critic", str(final), "--out",
                              str(tmp_path / "g.npz"), "--delta", "0", "--keep-stages", "0",
                              "--max-removed-fraction", "0.2", "--plot", "0", "--quiet"])
    g = np.load(tmp_path / "g.npz")
    stages = {e: EpisodeDataset(data).load(e, "task/stage") for e in range(3)}
    guarded = FilterConfig(delta=0, horizon=4, gamma=0.9, keep_stages=(0,), max_removed_fraction=0.2)
    expected = keep_masks({e: f["progress"][f["episode"] == e] for e in range(3)}, guarded, stages)
    assert code == 0 and (~g["keep"]).sum() > 0
    np.testing.assert_array_equal(g["keep"], np.concatenate([expected[e] for e in range(3)]))
    assert json.loads((tmp_path / "g.json").read_text())["config"]["keep_stages"] == [0]
    code = critic_train.main(["compare", "--data", str(data), "--episode", "0", "--critic",
                              f"distributional={final}", "--out", str(tmp_path / "fig7.png")])
    assert code == 0 and (tmp_path / "fig7.png").exists()


def labelled_data(root: Path) -> Path:
    """make_data's episodes with ground-truth flaw labels around their keyframes."""
    for seed, (T, ok) in enumerate(zip((30, 24, 20), (True, False, True))):
        rec = record(seed, T, ok, keyframes=[5] if seed else [])
        rec.flaw = np.zeros(T, np.uint8)
        rec.flaw[2:7] = 1 if seed else 0
        rec.flaw[10:13] = 3
        write_episode(episode_path(root, seed), rec)
    return root


def test_evaluate_against_flaw_labels_and_select_a_checkpoint(tmp_path, capsys):
    from grrl_policy.checkpoint import file_sha256
    data = labelled_data(tmp_path / "data")
    run = tmp_path / "run"
    final = train_critic(data, run, cfg(), progress=False)
    code = critic_train.main(["evaluate", "--data", str(data), "--critic", str(final), "--out",
                              str(tmp_path / "ev.json"), "--truth", "chunk", "--quiet"])
    assert code == 0, capsys.readouterr().err
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert set(ev["auroc"]) == {"all", "miss", "pause"} and ev["samples"] == 74
    assert ev["config"]["truth"] == "chunk" and ev["config"]["horizon"] == 4
    assert ev["config"]["drop_gamma"] == 0.9 and (tmp_path / "ev.png").stat().st_size > 0
    # the stopping rule: checkpoints in step order until `patience` without improvement
    code = critic_train.main(["select", "--run", str(run), "--data", str(data), "--patience", "1",
                              "--quiet"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((run / "selection.json").read_text())
    steps = [r["step"] for r in doc["rows"]]
    assert steps == sorted(steps) and steps[0] == 10 and len(steps) >= 2
    best = max(doc["rows"], key=lambda r: r["auroc"]["all"])
    assert doc["selected"]["step"] == best["step"]
    assert file_sha256(run / "critic_selected.safetensors") == \
        file_sha256(Path(best["checkpoint"] + ".safetensors"))
    assert read_meta(run / "critic_selected").extra["role"] == "critic"
    # a dataset without labels is refused with the reason
    make_data(tmp_path / "plain")
    code = critic_train.main(["evaluate", "--data", str(tmp_path / "plain"), "--critic",
                              str(final), "--out", str(tmp_path / "x.json"), "--quiet"])
    assert code == 2 and "no per-step flaw labels" in capsys.readouterr().err


def test_a_dataset_without_failures_or_keyframes_is_refused(tmp_path, capsys):
    data = make_data(tmp_path / "data", failures=False, keyframes=False)
    code = critic_train.main(["train", "--data", str(data), "--out", str(tmp_path / "run"),
                              "--model", json.dumps({**SMALL, "horizon": 4}), "--steps", "5", "--quiet"])
    assert code == 2
    assert "no failed episodes and no retry keyframes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_empty_filter_result_is_refused(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    final = train_critic(data, tmp_path / "run", cfg(steps=5), progress=False)
    # a negative delta would remove everything: refused before anything is written
    code = critic_train.main(["filter", "--data", str(data), "--critic", str(final), "--out",
                              str(tmp_path / "f.npz"), "--delta", "-1", "--plot", "0", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "delta must be >= 0" in err
    assert not (tmp_path / "f.npz").exists()
    # an empty filter result (what no valid delta gives from the CLI) is not written either
    from grrl_critic.filtering import FilterResult
    empty = FilterResult(np.zeros(3, int), np.arange(3), np.zeros(3, bool), np.zeros(3), FilterConfig())
    with pytest.raises(ValueError, match="kept 0 of 3"):
        empty.save(tmp_path / "g.npz")


def test_a_diverging_critic_stops_without_a_checkpoint(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    code = critic_train.main(["train", "--data", str(data), "--out", str(tmp_path / "run"),
                              "--model", json.dumps({**SMALL, "horizon": 4}), "--steps", "20",
                              "--lr", "1e30", "--quiet", "--checkpoint-every", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "critic loss is nan" in err and "without writing a checkpoint" in err, err
    assert not list((tmp_path / "run" / "checkpoints").glob("*.json"))
    assert not (tmp_path / "run" / "critic.json").exists()


def test_filter_once_filters_again_when_any_part_of_the_rule_changed(tmp_path, monkeypatch):
    from dataclasses import asdict
    from grrl_trainer.offline import pipeline
    calls = []

    def fake_run_filter(critic, data, out, cfg, progress=True):
        calls.append(cfg)
        out.write_bytes(b"npz")
        out.with_suffix(".json").write_text(json.dumps({"config": asdict(cfg), "kept": len(calls)}))
        return out, {}
    monkeypatch.setattr(pipeline, "run_filter", fake_run_filter)
    monkeypatch.setattr(pipeline, "plot_filtered", lambda *a, **k: None)
    filt = tmp_path / "filter.npz"
    for rule, runs in [(FilterConfig(), 1), (FilterConfig(), 1), (FilterConfig(horizon=8), 1),
                       (FilterConfig(keep_stages=(0,)), 2), (FilterConfig(keep_stages=(0,)), 2),
                       (FilterConfig(keep_stages=(0,), max_removed_fraction=0.3), 3),
                       (FilterConfig(delta=0.2, keep_stages=(0,), max_removed_fraction=0.3), 4)]:
        _, summary = pipeline.filter_once(Path("critic"), tmp_path, filt, rule, tmp_path / "f.png", False)
        assert len(calls) == runs and summary["kept"] == runs, rule
