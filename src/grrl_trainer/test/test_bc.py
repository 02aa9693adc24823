"""Behaviour cloning of the flow policy: the loss goes down, an interrupted run resumes to the
same weights, bad filters and changed configurations are refused before anything is written,
the keep mask restricts the samples exactly, and a diverging run keeps its last good checkpoint."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from grrl_policy.checkpoint import load_checkpoint, read_meta
from grrl_policy.model import GRRLModel
from grrl_trainer.offline import bc
from grrl_trainer.offline.bc import BCConfig, load_keep, plot_loss, train_bc
from grrl_trainer.offline.run_utils import StepBatches
from grrl_trainer.data.dataset import EpisodeDataset, EpisodeRecord, episode_path, write_episode
from grrl_trainer.data.windows import TransitionWindows, WindowConfig

LENGTHS = (30, 24, 20)
SMALL = {"tiny": {"width": 32, "layers": 2, "heads": 2, "kv_heads": 1, "head_dim": 16,
                  "text_encoder": "hashed"},
         "expert": {"width": 32, "heads": 2, "mlp_ratio": 2.0}}


def record(seed: int, T: int, success: bool, keyframes=()) -> EpisodeRecord:
    """A smooth synthetic episode with the simulator's lace (state observations work)."""
    rng = np.random.default_rng(seed)
    step = np.arange(T, dtype=float)
    phase = rng.uniform(0, np.pi, 16)
    q = 0.5 * np.sin(step[:, None] / 6.0 + phase)
    target = 0.5 * np.sin((step[:, None] + 1) / 6.0 + phase)
    quat = np.tile([1.0, 0, 0, 0], (T, 2, 1))
    tcp = np.concatenate([np.repeat(q[:, None, :3], 2, axis=1), quat], axis=-1)
    lace = np.linspace([0.3, -0.2, 0.05], [0.3, 0.2, 0.05], 41)[None] + \
        0.01 * np.sin(step)[:, None, None]
    scene = {"shoe_x": "0.5", "shoe_y": "0.0", "shoe_yaw": "0.1", "end_side": "left",
             "eyelet_side": "right", "eyelet_index": "1"}
    return EpisodeRecord(
        episode_id=f"ep_{seed:06d}", seed=seed, instruction="thread the left lace end",
        success=success, fps=10.0, timestamp=step / 10, joints=q, tcp=tcp, gripper=q[:, [7, 15]],
        action_joints=target, action_tcp=tcp, action_gripper=target[:, [7, 15]],
        stage=np.minimum(step // 8, 4).astype(np.uint8), retry_keyframes=list(keyframes),
        scene=scene, lace=lace)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bc_data")
    for seed, (T, ok) in enumerate(zip(LENGTHS, (True, False, True))):
        write_episode(episode_path(root, seed), record(seed, T, ok, keyframes=[5] if seed else []))
    return root


def cfg(**kw) -> BCConfig:
    base = dict(model=SMALL, horizon=4, steps=100, batch_size=16, lr=2e-3, warmup_steps=5,
                checkpoint_every=25, log_every=5, workers=0, seed=3)
    return BCConfig(**{**base, **kw})


def write_filter(path: Path, keep: dict[int, np.ndarray], shuffle: bool = True) -> Path:
    ep = np.concatenate([np.full(len(k), e) for e, k in keep.items()])
    t = np.concatenate([np.arange(len(k)) for k in keep.values()])
    kp = np.concatenate(list(keep.values()))
    order = np.random.default_rng(0).permutation(len(kp)) if shuffle else np.arange(len(kp))
    np.savez(path, episode=ep[order], timestep=t[order], keep=kp[order])
    return path


def steps_logged(run: Path) -> list[int]:
    return [int(s) for s in bc.read_loss_csv(run)["step"]]


def test_bc_drives_the_loss_down(data: Path, tmp_path: Path):
    run = tmp_path / "run"
    path = train_bc(data, run, cfg(steps=200, log_every=1, checkpoint_every=100), progress=False)
    loss = bc.read_loss_csv(run)["loss"]
    assert len(loss) == 200
    assert loss[-20:].mean() < 0.6 * loss[:20].mean(), (loss[:20].mean(), loss[-20:].mean())
    model, meta = load_checkpoint(path)
    assert path == run / "policy" and meta.version == 1
    assert meta.extra["step"] == 200 and meta.extra["variant"] == "all" and meta.extra["final"]
    assert meta.extra["config"]["steps"] == 200 and meta.extra["data"] == str(data.resolve())
    assert meta.extra["samples"] == sum(LENGTHS)          # recorded steps, no hindsight ones
    # the normaliser holds the dataset statistics
    assert not torch.allclose(model.normalizer.action_std, torch.ones(16))
    assert sorted(p.name for p in (run / "checkpoints").glob("*.json")) == \
        ["step_0000100.json", "step_0000200.json"]
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert plot_loss(run).stat().st_size > 0


def test_interrupted_run_resumes_to_the_same_weights(data: Path, tmp_path: Path):
    c = cfg(ema=0.9)
    a, b = tmp_path / "interrupted", tmp_path / "straight"
    mid = train_bc(data, a, c, progress=False, stop_after=50)
    assert mid == bc.checkpoint_path(a, 50) and not (a / "policy.json").exists()
    assert bc.load_trainer_state(a / bc.STATE_FILE)["step"] == 50
    assert steps_logged(a) == list(range(5, 55, 5))
    # rows logged after the last saved state (a kill between two states) are dropped on resume
    with open(a / "loss.csv", "a") as f:
        f.write("55,9.9,0.001,1.0,10\n")
    final = train_bc(data, a, c, progress=False)
    assert steps_logged(a) == list(range(5, 105, 5))
    assert bc.load_trainer_state(a / bc.STATE_FILE)["step"] == 100
    assert train_bc(data, b, c, progress=False) == b / "policy"
    wa, wb = load_file(str(final) + ".safetensors"), load_file(str(b / "policy.safetensors"))
    assert set(wa) == set(wb)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    # the checkpoint holds the EMA weights, the trainer state the raw ones
    raw = bc.load_trainer_state(a / bc.STATE_FILE)["model"]
    name = "action_expert.head.weight"
    assert not torch.equal(raw[name], wa[name])
    # a finished run returns at once; a changed configuration is refused, nothing is touched
    stamp = (a / "policy.safetensors").stat().st_mtime_ns, (a / bc.STATE_FILE).stat().st_mtime_ns
    assert train_bc(data, a, c, progress=False) == final
    for changed, field in ((dataclasses.replace(c, lr=1e-3), "lr"),
                           (dataclasses.replace(c, steps=200), "steps")):
        with pytest.raises(ValueError, match=f"another configuration.*{field}"):
            train_bc(data, a, changed, progress=False)
    assert ((a / "policy.safetensors").stat().st_mtime_ns,
            (a / bc.STATE_FILE).stat().st_mtime_ns) == stamp
    # a finished run whose final checkpoint got corrupted writes it again from its state
    (a / "policy.safetensors").write_bytes(b"garbage")
    assert train_bc(data, a, c, progress=False) == final
    torch.testing.assert_close(load_file(str(final) + ".safetensors"), wb, rtol=0, atol=0)
    # runtime settings may change on resume
    assert train_bc(data, a, dataclasses.replace(c, log_every=7, workers=1, threads=1),
                    progress=False) == final


def test_bad_filters_stop_before_anything_is_written(data: Path, tmp_path: Path):
    run = tmp_path / "run"
    none = write_filter(tmp_path / "none.npz", {e: np.zeros(T, bool) for e, T in enumerate(LENGTHS)})
    with pytest.raises(ValueError, match=f"the filter kept 0 of {sum(LENGTHS)} samples: lower delta"):
        train_bc(data, run, cfg(variant="filtered", filter=str(none)), progress=False)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip file")
    with pytest.raises(ValueError, match="not a readable .npz"):
        train_bc(data, run, cfg(variant="filtered", filter=str(corrupt)), progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        train_bc(data, run, cfg(variant="filtered", filter=str(tmp_path / "nope.npz")), progress=False)
    other = write_filter(tmp_path / "other.npz", {0: np.ones(LENGTHS[0], bool)})
    with pytest.raises(ValueError, match="does not match the dataset.*missing"):
        train_bc(data, run, cfg(variant="filtered_mirror", filter=str(other)), progress=False)
    np.savez(tmp_path / "partial.npz", episode=np.zeros(3, int), timestep=np.array([0, 2, 3]),
             keep=np.ones(3, bool))
    with pytest.raises(ValueError, match="timesteps of episode 0"):
        load_keep(tmp_path / "partial.npz")
    with pytest.raises(ValueError, match="needs a filter"):
        BCConfig(variant="filtered")
    assert not run.exists()


def test_keep_mask_restricts_the_samples_exactly(data: Path, tmp_path: Path):
    ds = EpisodeDataset(data)
    rng = np.random.default_rng(1)
    keep = {e: rng.random(T) < 0.4 for e, T in enumerate(LENGTHS)}
    keep[1][:] = False
    loaded = load_keep(write_filter(tmp_path / "f.npz", keep))
    assert set(loaded) == set(keep) and all(np.array_equal(loaded[e], keep[e]) for e in keep)
    win = TransitionWindows(ds, WindowConfig(horizon=4, images=False, hindsight=True), keep=loaded)
    want = [(e, t) for e in range(3) for t in np.flatnonzero(keep[e])]
    assert len(win) == len(want)
    got = [(win[i]["episode"], win[i]["timestep"]) for i in range(len(win))]
    assert got == want and not any(win[i]["hindsight"] for i in range(len(win)))
    full = TransitionWindows(ds, WindowConfig(horizon=4, images=False, hindsight=True))
    assert len(full) == sum(LENGTHS) + 6 + 6                # + two hindsight prefixes 0..5
    s = win[3]                                             # same sample as unfiltered
    np.testing.assert_array_equal(s["action.joint_positions"],
                                  full[win.unfiltered_index(3)]["action.joint_positions"])
    with pytest.raises(ValueError, match="bool array of shape"):
        TransitionWindows(ds, WindowConfig(images=False), keep={0: np.ones(3, bool)})
    with pytest.raises(IndexError):
        win[len(win)]
    # the batch sampler visits every kept sample once per epoch, the same on every call
    sampler = StepBatches(len(win), 5, seed=0, start=0, stop=100)
    first_epoch = [i for step in range(len(win)) for i, e in sampler.batch(step) if e == 0]
    assert sorted(first_epoch) == list(range(len(win)))
    assert StepBatches(len(win), 5, 0, 40, 41).batch(40) == sampler.batch(40)


def test_non_finite_loss_keeps_the_last_good_checkpoint(data: Path, tmp_path: Path, monkeypatch):
    real = GRRLModel.bc_loss
    calls = []

    def poisoned(self, *args, **kw):
        calls.append(1)
        loss = real(self, *args, **kw)
        return loss * float("nan") if len(calls) == 8 else loss

    monkeypatch.setattr(GRRLModel, "bc_loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(bc.TrainingDiverged, match="non-finite BC loss.*step 8.*step_0000005"):
        train_bc(data, run, cfg(checkpoint_every=5, steps=20), progress=False)
    assert sorted(p.name for p in (run / "checkpoints").glob("*.json")) == ["step_0000005.json"]
    assert not (run / "policy.json").exists()
    assert bc.load_trainer_state(run / bc.STATE_FILE)["step"] == 5
    assert read_meta(run / "checkpoints" / "step_0000005").extra["step"] == 5


@pytest.mark.parametrize("space", ["joint", "task"])
def test_batches_from_memory_are_the_loader_batches(data: Path, tmp_path: Path, space: str):
    """The 'arrays' data path draws exactly the samples the per-sample loader draws (same order,
    same filter), and mirrors a sample as mirroring its recorded data would."""
    from grrl_policy.sim_state_spec import mirror_state
    from grrl_policy.task_space import mirror_task
    from grrl_trainer.data.mirror import mirror_instruction, mirror_joints
    from grrl_trainer.offline.run_utils import step_loader

    ds = EpisodeDataset(data)
    keep = {e: np.arange(T) % 3 != 1 for e, T in enumerate(LENGTHS)}
    preset = "tiny-state-task" if space == "task" else "tiny-state"
    c = cfg(preset=preset, successful_only=True)
    model_cfg = c.model_config()
    windows = bc.bc_windows(ds, c, "state", keep, space == "task")
    loader = step_loader(windows, c.batch_size, c.seed, 0, 12, 0, model_cfg, torch.device("cpu"))
    arrays = bc.array_batches(ds, c, model_cfg, keep, 0, 12)
    n = 0
    for want, got in zip(loader, arrays):
        for key in ("proprio", "actions", "mask"):
            torch.testing.assert_close(got[key], want[key])
        torch.testing.assert_close(got["obs"]["state"], want["obs"]["state"])
        assert got["obs"]["instruction"] == want["obs"]["instruction"]
        n += 1
    assert n == 12
    flipped = bc.array_batches(ds, dataclasses.replace(c, mirror_prob=1.0), model_cfg, keep, 0, 1)
    plain, mirrored = arrays.batch(0), flipped.batch(0)
    mirror = mirror_task if space == "task" else mirror_joints
    np.testing.assert_allclose(mirrored["actions"].numpy(), mirror(plain["actions"].numpy()))
    np.testing.assert_allclose(mirrored["obs"]["state"].numpy(), mirror_state(plain["obs"]["state"].numpy()))
    assert mirrored["obs"]["instruction"] == [mirror_instruction(t) for t in plain["obs"]["instruction"]]
    half = bc.array_batches(ds, dataclasses.replace(c, mirror_prob=0.5), model_cfg, keep, 0, 12)
    # about half the samples mirrored
    rows = np.concatenate([(half.batch(s)["proprio"] != arrays.batch(s)["proprio"]).any(1).numpy()
                           for s in range(12)])
    assert 0.3 < rows.mean() < 0.7
    with pytest.raises(ValueError, match="data_path"):
        cfg(data_path="memory")


def test_cli_filtered_mirror_with_a_loader_worker(data: Path, tmp_path: Path, capsys):
    keep = {e: np.arange(T) % 3 != 0 for e, T in enumerate(LENGTHS)}
    f = write_filter(tmp_path / "f.npz", keep)
    with pytest.raises(SystemExit) as exc:
        bc.main(["--help"])
    assert exc.value.code == 0 and "--variant" in capsys.readouterr().out
    argv = ["--data", str(data), "--out", str(tmp_path / "run"), "--variant", "filtered_mirror",
            "--filter", str(f), "--steps", "6", "--batch-size", "8", "--horizon", "4",
            "--workers", "1", "--data-path", "windows", "--checkpoint-every", "3", "--log-every", "2", "--quiet",
            "--model", json.dumps(SMALL)]
    assert bc.main(argv) == 0
    out = capsys.readouterr().out
    assert "BC filtered_mirror: 6 steps, final loss" in out and "policy" in out
    meta = read_meta(tmp_path / "run" / "policy")
    assert meta.extra["samples"] == int(sum(k.sum() for k in keep.values()))
    assert meta.extra["config"]["variant"] == "filtered_mirror"
    assert BCConfig(**meta.extra["config"]).effective_mirror_prob == 0.5
    assert (tmp_path / "run" / "loss.png").exists()
    assert bc.main(argv[:-2]) == 2                 # another model: refused, not resumed


def test_bc_benchmark_measures_both_data_paths(data: Path, tmp_path: Path):
    from grrl_trainer.bench.bc import NARROW, bc_rate

    rates = [bc_rate(data, tmp_path / path, path, {**NARROW, "horizon": 4}, 10, 8, 1)
             for path in ("windows", "arrays")]
    assert all(r > 0 for r in rates), rates


def test_bc_benchmark_counts_the_cost_of_a_sample():
    from grrl_trainer.bench.bc import NARROW, POOLED, bc_flops_per_sample, matmul_flops_per_s

    wide, narrow, pooled = (bc_flops_per_sample(m, batch_size=4) for m in ({}, NARROW, POOLED))
    # half the width is about a quarter of the cost; pooling the instruction shortens the prefix
    assert 2.5 < wide / narrow < 5.0 and pooled < narrow, (wide, narrow, pooled)
    assert matmul_flops_per_s(1, n=64, seconds=0.05) > 1e8


def test_idle_steps_are_the_demonstrators_pauses():
    from grrl_trainer.data.idle import idle_steps

    T = 30
    proprio = np.zeros((T, 20))
    proprio[:, 0] = np.minimum(np.arange(T), 10) * 0.01        # moves 1 cm a step until t = 10,
    proprio[20:, 0] = 0.1 + (np.arange(20, T) - 19) * 0.01     # pauses 10 steps, moves on
    actions = np.roll(proprio, -1, axis=0)
    actions[-1] = proprio[-1]
    actions[10:20, 1] = 0.001 * np.sin(np.arange(10))          # jitter below the tolerance
    idle = idle_steps(proprio, actions, window=3, tolerance=0.002)
    # held still for the next 3 commands: t = 10..16 (at 17-19 the motion is in the window),
    # and the last step, whose command is where the robot is
    assert np.flatnonzero(idle).tolist() == list(range(10, 17)) + [T - 1]
    actions[13, 9] = 0.03                                      # the gripper moves: not idle
    assert not idle_steps(proprio, actions, 3, 0.002)[11:14].any()
    joints = idle_steps(proprio[:, :16], actions[:, :16], 3, 0.002, space="joint")
    assert joints[10] and not joints[5]
    assert not idle_steps(proprio, actions, 0, 0.002).any()
    with pytest.raises(ValueError, match="space"):
        idle_steps(proprio, actions, 3, 0.002, space="polar")


def test_drop_idle_steps_leaves_out_exactly_the_pauses(data: Path, monkeypatch):
    from grrl_trainer.data import idle

    ds = EpisodeDataset(data)
    calls = []

    def fake(proprio, actions, window, tolerance, space="task"):
        calls.append((window, tolerance, space))
        m = np.zeros(len(proprio), bool)
        m[2:5] = True
        return m
    monkeypatch.setattr(bc, "idle_steps", fake)
    keep = bc.bc_keep(ds, cfg(drop_idle_steps=4, idle_tolerance=0.003), None)
    assert set(keep) == {0, 1, 2} and all(keep[e].sum() == LENGTHS[e] - 3 for e in keep)
    assert not any(keep[e][2:5].any() for e in keep)
    assert calls[0][:2] == (4, 0.003)
    both = bc.bc_keep(ds, cfg(drop_idle_steps=4, successful_only=True), None)
    assert set(both) == {0, 2} and not both[0][2:5].any()
    assert bc.bc_keep(ds, cfg(), None) is None
    assert idle.TASK_POSITIONS.tolist() == [0, 1, 2, 10, 11, 12]


def test_learning_curve_trains_each_size_and_evaluates_each_point(data: Path, tmp_path: Path,
                                                                  monkeypatch):
    import json
    import shutil

    from grrl_trainer.evaluation import evaluate
    from grrl_trainer.offline import curve

    evaluated = []

    def fake_evaluate(checkpoint, ecfg, progress=True):
        evaluated.append((Path(checkpoint), Path(ecfg.out_dir).name, ecfg.episodes))
        n = len(evaluated)
        return {"success_rate": n / 10, "successes": n, "episodes": ecfg.episodes,
                "success_ci95": [0.0, 1.0], "funnel": {"picked": 1.0}}
    monkeypatch.setattr(evaluate, "evaluate_or_reuse", fake_evaluate)
    demos = tmp_path / "demos"                      # the fixture's episodes, as a collected dataset
    shutil.copytree(data, demos)
    (demos / "info.json").write_text(json.dumps({"schema_version": 1, "fps": 10.0}))
    data = demos
    ccfg = curve.CurveConfig(sizes=[3, 1, 2], step_points=[25], eval_episodes=4)
    bcfg = cfg(steps=50)
    result = curve.run_curve(data, tmp_path / "curve", ccfg, bcfg, progress=False)
    # the first N episodes in seed order, a BC run each, then the largest run's checkpoint
    assert [p["demonstrations"] for p in result["by_demonstrations"]] == [1, 2, 3]
    for n in (1, 2, 3):
        assert len(list((tmp_path / "curve" / f"data_{n}" / "episodes").iterdir())) == n
        assert steps_logged(tmp_path / "curve" / f"bc_{n}")[-1] == 50
    assert [name for _, name, _ in evaluated] == ["eval_1", "eval_2", "eval_3", "eval_3_25"]
    assert evaluated[-1][0] == bc.checkpoint_path(tmp_path / "curve" / "bc_3", 25)
    assert [p["steps"] for p in result["by_steps"]] == [25, 50]
    assert json.loads((tmp_path / "curve" / "curve.json").read_text()) == result
    assert (tmp_path / "curve" / "curve.png").exists()
    # run again: nothing is retrained (the runs are finished), the points are re-read
    evaluated.clear()
    curve.run_curve(data, tmp_path / "curve", ccfg, bcfg, progress=False)
    assert len(steps_logged(tmp_path / "curve" / "bc_3")) == len(set(steps_logged(
        tmp_path / "curve" / "bc_3")))
    with pytest.raises(ValueError, match="not intermediate checkpoints"):
        curve.run_curve(data, tmp_path / "c2", curve.CurveConfig(step_points=[30]), bcfg)
    with pytest.raises(curve.DatasetError, match="only 3 episodes"):
        curve.run_curve(data, tmp_path / "c3", curve.CurveConfig(sizes=[5]), bcfg)
