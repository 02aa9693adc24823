"""Episode dataset: writing, validation of bad files, TD windows with hindsight failures,
on-the-fly mirroring, and resumable collection with the flawed demonstrator."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from grrl_trainer import keys
from grrl_trainer.data.collect import GRIPPERS as GRIPPER_COLUMNS, CollectConfig, collect
from bytemini_driver.demonstrator import FLAW_TYPES, MISS
from grrl_trainer.data.dataset import (FLAW, DatasetError, EpisodeDataset, EpisodeRecord,
                                       episode_path, read_meta, write_episode)
from grrl_trainer.data.mirror import mirror_sample
from grrl_trainer.data.windows import TransitionWindows, WindowConfig, episode_task_arrays


def record(seed: int, T: int, success: bool, keyframes=(), images: bool = True) -> EpisodeRecord:
    rng = np.random.default_rng(seed)
    quat = np.tile([1.0, 0, 0, 0], (T, 2, 1))
    tcp = np.concatenate([rng.normal(size=(T, 2, 3)), quat], axis=-1)
    q = rng.normal(size=(T, 16)) * 0.1
    step = np.arange(T, dtype=float)
    return EpisodeRecord(
        episode_id=f"ep_{seed:06d}", seed=seed, instruction="thread the left lace end",
        success=success, fps=10.0, timestamp=step / 10, joints=q, tcp=tcp, gripper=q[:, [7, 15]],
        action_joints=q + step[:, None], action_tcp=tcp, action_gripper=q[:, [7, 15]],
        stage=np.minimum(step // 3, 4).astype(np.uint8), retry_keyframes=list(keyframes),
        images={c: rng.integers(0, 255, (T, 6, 8, 3), dtype=np.uint8) for c in keys.CAMERAS}
        if images else {})


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    write_episode(episode_path(tmp_path, 1), record(1, 10, True, keyframes=[4]))
    write_episode(episode_path(tmp_path, 2), record(2, 6, False))
    return tmp_path


def test_windows_reward_done_and_hindsight_failures(tiny: Path):
    ds = EpisodeDataset(tiny)
    win = TransitionWindows(ds, WindowConfig(horizon=3, images=True))
    # episode 1 (10 steps, success) + its hindsight failure tau_{0:4} (5 steps) + episode 2 (6)
    assert [(s.length, s.success, s.hindsight) for s in win.segments] == \
        [(10, True, False), (5, False, True), (6, False, False)]
    assert len(win) == 21
    s = win[7]                                       # t=7 of the success: the last chunk
    assert s["done"] and s["reward"] == np.float32(0.99 ** 3) and s["timestep"] == 7   # gamma^(T-t)
    assert list(s["action_mask"]) == [True, True, True]
    np.testing.assert_array_equal(s[keys.ACTION_JOINTS][:, 0],
                                  ds.load(0, keys.ACTION_JOINTS, slice(7, 10))[:, 0])
    s = win[8]                                       # t=8: padded past the end
    assert list(s["action_mask"]) == [True, True, False] and s["reward"] == np.float32(0.99 ** 2)
    np.testing.assert_array_equal(s[keys.ACTION_JOINTS][2], s[keys.ACTION_JOINTS][1])
    np.testing.assert_array_equal(s["next." + keys.STATE_JOINTS],
                                  ds.load(0, keys.STATE_JOINTS, 9))
    s = win[6]
    assert not s["done"] and s["reward"] == 0.0
    h = win[10 + 3]                                  # hindsight trajectory, t=3 of 5
    assert h["hindsight"] and h["done"] and h["reward"] == 0.0 and h["length"] == 5
    f = win[15 + 5]                                  # failed episode, last step
    assert f["done"] and f["reward"] == 0.0
    assert f[keys.IMAGE.format(camera="head")].shape == (6, 8, 3)


def test_random_offsets_state_and_next_actions(tiny: Path):
    ds = EpisodeDataset(tiny)
    cfg = WindowConfig(horizon=4, images=False, next_offset="random", next_actions=True, gamma=0.9)
    win = TransitionWindows(ds, cfg)
    offsets = set()
    for i in range(10):                                  # the successful episode, T = 10
        s = win[i]
        j = s["offset"]
        offsets.add(j)
        assert 1 <= j <= 4 and s["done"] == (i + j >= 10)
        assert s["reward"] == (np.float32(0.9 ** (10 - i)) if s["done"] else 0.0)
        np.testing.assert_array_equal(s["next." + keys.STATE_JOINTS],
                                      ds.load(0, keys.STATE_JOINTS, min(i + j, 9)))
        assert s["next." + keys.ACTION_JOINTS].shape == (4, 16)
        assert win[i]["offset"] == j                     # the draw is a function of the index
    assert len(offsets) > 1
    with pytest.raises(ValueError, match="next_offset"):
        WindowConfig(next_offset="sometimes")


def test_on_the_fly_mirroring(tiny: Path):
    ds = EpisodeDataset(tiny)
    plain = TransitionWindows(ds, WindowConfig(horizon=3))[2]
    mirrored = TransitionWindows(ds, WindowConfig(horizon=3, mirror_prob=1.0))[2]
    assert mirrored["mirrored"] and mirrored[keys.INSTRUCTION] == "thread the right lace end"
    back = mirror_sample({k: v for k, v in mirrored.items() if not k.startswith("next.")})
    for k in (keys.STATE_JOINTS, keys.ACTION_TCP, keys.IMAGE.format(camera="left_wrist")):
        np.testing.assert_array_equal(back[k], plain[k])
    np.testing.assert_array_equal(mirrored["next." + keys.STATE_JOINTS],
                                  plain["next." + keys.STATE_JOINTS][..., np.r_[8:16, 0:8]])


def test_mirror_draws_depend_on_seed_epoch_and_index_only(tiny: Path):
    win = TransitionWindows(EpisodeDataset(tiny), WindowConfig(horizon=3, mirror_prob=0.5))
    first = [bool(win[i].get("mirrored")) for i in range(len(win))]
    again = [bool(win[i].get("mirrored")) for i in reversed(range(len(win)))][::-1]
    assert first == again and 0 < sum(first) < len(first)
    win.set_epoch(1)
    assert [bool(win[i].get("mirrored")) for i in range(len(win))] != first


def test_bad_files_are_named_and_the_rest_loads(tiny: Path, caplog):
    good = episode_path(tiny, 1)
    truncated = episode_path(tiny, 3)
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    future = episode_path(tiny, 4)
    write_episode(future, record(4, 5, True))
    with h5py.File(future, "a") as f:
        f.attrs["schema_version"] = 99
    ds = EpisodeDataset(tiny)
    assert [m["seed"] for m in ds.episodes] == [1, 2]
    assert any("ep_000003.h5: unreadable or corrupt" in e for e in ds.errors)
    assert any("ep_000004.h5: schema version 99 is not supported" in e for e in ds.errors)
    with pytest.raises(DatasetError, match="ep_000003.h5"):
        EpisodeDataset(tiny, strict=True)
    with pytest.raises(DatasetError, match="no episodes"):
        EpisodeDataset(tiny / "nothing")
    with pytest.raises(ValueError, match="non-finite"):
        bad = record(5, 5, True)
        bad.joints[2, 3] = np.nan
        write_episode(episode_path(tiny, 5), bad)
    assert not episode_path(tiny, 5).exists()


def test_flaw_labels_round_trip_and_version_1_files_are_still_read(tmp_path: Path):
    rec = record(1, 8, True, images=False)
    rec.flaw = np.array([0, 0, 1, 1, 0, 3, 3, 0], np.uint8)
    write_episode(episode_path(tmp_path, 1), rec)
    old = record(2, 6, False, images=False)            # no labels: what version 1 held
    write_episode(episode_path(tmp_path, 2), old)
    with h5py.File(episode_path(tmp_path, 2), "a") as f:
        f.attrs["schema_version"] = 1
    ds = EpisodeDataset(tmp_path, strict=True)
    assert [m["flaw_labels"] for m in ds.episodes] == [True, False]
    np.testing.assert_array_equal(ds.load(0, FLAW), rec.flaw)
    bad = record(3, 4, True, images=False)
    bad.flaw = np.array([0, len(FLAW_TYPES), 0, 0])
    with pytest.raises(ValueError, match="flaw codes"):
        write_episode(episode_path(tmp_path, 3), bad)
    bad.flaw = np.zeros(3, np.uint8)
    with pytest.raises(ValueError, match="task/flaw has 3 steps"):
        write_episode(episode_path(tmp_path, 3), bad)
    assert not episode_path(tmp_path, 3).exists()
    ds.close()
    # codes written under another list of flaw names are refused, not misread
    with h5py.File(episode_path(tmp_path, 1), "a") as f:
        f.attrs["flaw_types"] = '["none", "drop"]'
    with pytest.raises(DatasetError, match="flaw codes"):
        EpisodeDataset(tmp_path, strict=True)


@pytest.mark.slow
def test_collection_is_resumable_and_annotates_retries(tmp_path: Path):
    cfg = CollectConfig(image_size=32, left_bias=1.0, time_limit=40.0)
    cfg.demo.miss_prob, cfg.demo.fail_prob, cfg.demo.drop_prob = 1.0, 0.0, 0.0
    first = collect(tmp_path, cfg, [0, 1], workers=1, progress=False)
    assert len(first) == 2
    for seed in (0, 1):
        meta = read_meta(episode_path(tmp_path, seed))
        assert "left lace end" in meta["instruction"] and meta["cameras"] == list(keys.CAMERAS)
        assert 1 <= len(meta["retry_keyframes"]) and meta["flaws"]["misses"] >= 1
        assert 0 < meta["retry_keyframes"][0] < meta["n_steps"]
        # per-step ground truth: the retry begins inside the miss segment (the back-off), and
        # the off-target approach before it is labelled too
        flaw = EpisodeDataset(tmp_path).load(seed, FLAW)
        k = meta["retry_keyframes"][0]
        assert meta["flaw_labels"] and flaw[k] == MISS and (flaw[:k] == MISS).sum() >= 10
        assert flaw[0] != MISS and flaw[-1] != MISS
    # a killed run leaves a temp file and a corrupt episode: both are handled on resume
    (tmp_path / "episodes" / "ep_000002.tmp123").write_bytes(b"partial")
    episode_path(tmp_path, 1).write_bytes(b"garbage")
    again = collect(tmp_path, cfg, [0, 1], workers=1, progress=False)
    assert [r[0] for r in again] == [1]               # only the corrupt one, no duplicates
    assert not list((tmp_path / "episodes").glob("*.tmp*"))
    assert len(EpisodeDataset(tmp_path, strict=True)) == 2
    other = CollectConfig(image_size=64)
    with pytest.raises(DatasetError, match="other settings"):
        collect(tmp_path, other, [5], workers=1, progress=False)


@pytest.mark.slow
def test_kill_9_during_collection_then_resume(tmp_path: Path):
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "grrl_trainer.data.cli", "collect", "--out", str(tmp_path),
           "--episodes", "3", "--workers", "1", "--no-images", "--time-limit", "30"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = episode_path(tmp_path, 0)
    deadline = time.monotonic() + 120
    while not first.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert first.exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "episodes").iterdir())
    assert files == ["ep_000000.h5", "ep_000001.h5", "ep_000002.h5"]
    assert "collected" in done.stdout
    assert len(EpisodeDataset(tmp_path, strict=True)) == 3


def test_task_space_windows_collate_and_statistics(tiny: Path):
    """'task' models train on FK of the recorded joints (what they see at run time) and on the
    commanded tcp poses; mirroring a task-space sample is mirroring its robot."""
    from grrl_policy.task_space import TASK_DIM, TaskSpaceDecoder, mirror_task, task_vector
    from grrl_trainer.data.batches import collate, normalization_stats
    ds = EpisodeDataset(tiny)
    win = TransitionWindows(ds, WindowConfig(horizon=3, images=False, task_space=True))
    s = win[2]
    dec = TaskSpaceDecoder()
    np.testing.assert_allclose(s[keys.STATE_TASK], dec.proprio(ds.load(0, keys.STATE_JOINTS, 2)),
                               atol=1e-6)
    np.testing.assert_allclose(s[keys.ACTION_TASK], task_vector(
        ds.load(0, keys.ACTION_TCP, slice(2, 5)), ds.load(0, keys.ACTION_GRIPPER, slice(2, 5))))
    m = TransitionWindows(ds, WindowConfig(horizon=3, images=False, task_space=True,
                                           mirror_prob=1.0))[2]
    np.testing.assert_allclose(m[keys.STATE_TASK], mirror_task(s[keys.STATE_TASK]))
    np.testing.assert_allclose(m[keys.ACTION_TASK], mirror_task(s[keys.ACTION_TASK]))
    samples = [win[i] for i in range(4)]
    for smp in samples:
        smp[keys.STATE_SIM] = np.zeros(42, np.float32)
        smp["next." + keys.STATE_SIM] = np.zeros(42, np.float32)
    b = collate(samples, "state", "task")
    assert b["proprio"].shape == (4, TASK_DIM) and b["actions"].shape == (4, 3, TASK_DIM)
    stats = normalization_stats(ds, space="task")
    mean, std = stats["action"]
    assert mean.shape == (TASK_DIM,) and np.isfinite(std).all()
    # pooled with the mirror image: the mean of a mirror-odd component (y) is zero
    assert abs(mean[1] + mean[11]) < 1e-5
    with pytest.raises(ValueError, match="action space"):
        collate(samples, "state", "cartesian")
    # per chunk step i: the statistics of a_{t+i} - q_t (with the mirror image)
    mean, std = normalization_stats(ds, space="task", action_mode="delta", horizon=3,
                                    per_step=True)["action"]
    assert mean.shape == std.shape == (3, TASK_DIM)
    arrays = [episode_task_arrays(ds, e) for e in range(len(ds.episodes))]
    for i in range(3):
        d = np.concatenate([a[i:] - q[:len(q) - i] for q, a in arrays])
        d = np.concatenate([d, mirror_task(d)])
        np.testing.assert_allclose(mean[i], d.mean(0), atol=1e-5)
        np.testing.assert_allclose(std[i], d.std(0), rtol=1e-4, atol=1e-6)


def test_execution_noise_perturbs_the_states_not_the_labels(tmp_path: Path):
    """DART collection: the robot executes the demonstrator's targets plus a smooth offset, the
    dataset records the demonstrator's targets; a dataset collected before the option existed
    can still be resumed."""
    import json

    from grrl_trainer.data.collect import Collector

    base = CollectConfig(images=False, clean=True, time_limit=2.0)
    plain = Collector(base).episode(3)
    noisy_cfg = CollectConfig(images=False, clean=True, time_limit=2.0, execution_noise_std=0.01)
    noisy = Collector(noisy_cfg).episode(3)
    moved = np.abs(noisy.joints - plain.joints).max(axis=0)
    assert moved.max() > 2e-3                                   # the states are perturbed
    assert moved[GRIPPER_COLUMNS].max() < 1e-3                  # the grippers are not (~0)
    # the labels are the demonstrator's commands for the states it saw: recorded targets are
    # smooth (no white noise), and they pull back towards the noise-free path
    assert np.abs(np.diff(noisy.action_joints, 2, axis=0)).max() < 0.05
    with pytest.raises(ValueError, match="execution_noise_std"):
        CollectConfig(execution_noise_std=-1.0)
    collect(tmp_path, base, [0], workers=1, progress=False)
    info = json.loads((tmp_path / "info.json").read_text())
    for key in ("execution_noise_std", "execution_noise_tau"):
        del info["collection"][key]                             # as written before the option
    (tmp_path / "info.json").write_text(json.dumps(info))
    assert collect(tmp_path, base, [0], workers=1, progress=False) == []


def test_merge_links_the_sources_and_refuses_what_does_not_fit(tmp_path: Path):
    import json

    from grrl_trainer.data.cli import main as grrl_data
    from grrl_trainer.data.merge import merge_datasets

    def dataset(name: str, seeds, **collection) -> Path:
        root = tmp_path / name
        for s in seeds:
            write_episode(episode_path(root, s), record(s, 6, True, images=False))
        info = {"schema_version": 1, "fps": 10.0, "images": False, "image_size": 128,
                "cameras": list(keys.CAMERAS), "joint_names": [], "collection": collection}
        (root / "info.json").write_text(json.dumps(info))
        return root
    clean, dart = dataset("clean", [0, 1]), dataset("dart", [2, 3, 4], execution_noise_std=0.005)
    assert grrl_data(["merge", str(clean), str(dart), "--out", str(tmp_path / "both")]) == 0
    both = EpisodeDataset(tmp_path / "both")
    assert sorted(m["seed"] for m in both.episodes) == [0, 1, 2, 3, 4]
    assert (tmp_path / "both" / "episodes" / "ep_000002.h5").is_symlink()
    info = json.loads((tmp_path / "both" / "info.json").read_text())
    assert [(m["path"], m["episodes"]) for m in info["merged_from"]] == [("../clean", 2),
                                                                         ("../dart", 3)]
    assert info["merged_from"][1]["collection"] == {"execution_noise_std": 0.005}
    # the same seed twice, other contents, an existing target: refused, with the reason
    with pytest.raises(DatasetError, match="ep_000001.h5 is in both"):
        merge_datasets(tmp_path / "m1", [clean, dataset("again", [1])])
    other = dataset("images", [7])
    info = json.loads((other / "info.json").read_text())
    (other / "info.json").write_text(json.dumps({**info, "fps": 5.0}))
    with pytest.raises(DatasetError, match=r"differs .* in \['fps'\]"):
        merge_datasets(tmp_path / "m2", [clean, other])
    with pytest.raises(DatasetError, match="exists already"):
        merge_datasets(tmp_path / "both", [clean, dart])
    # copies stand alone
    merge_datasets(tmp_path / "copied", [clean, dart], copy=True)
    assert not (tmp_path / "copied" / "episodes" / "ep_000002.h5").is_symlink()
    assert len(EpisodeDataset(tmp_path / "copied")) == 5
    # a subset (a learning curve's point): the first N in seed order, from one source too
    assert grrl_data(["merge", str(dart), "--first", "2", "--out", str(tmp_path / "two")]) == 0
    assert sorted(m["seed"] for m in EpisodeDataset(tmp_path / "two").episodes) == [2, 3]
    assert json.loads((tmp_path / "two" / "info.json").read_text())["first"] == 2
    assert merge_datasets(tmp_path / "three", [dart, clean], first=3) == 3
    assert sorted(m["seed"] for m in EpisodeDataset(tmp_path / "three").episodes) == [0, 1, 2]
    with pytest.raises(DatasetError, match="only 5 episodes"):
        merge_datasets(tmp_path / "m3", [clean, dart], first=6)
    with pytest.raises(DatasetError, match="at least two source datasets"):
        merge_datasets(tmp_path / "m4", [clean])
