"""Deployment runtime: observation validation, output checks, atomic verified hot swap."""
import dataclasses

import numpy as np
import pytest
import torch

from grrl_policy.checkpoint import CheckpointError, save_checkpoint
from grrl_policy.model import GRRLModel, preset
from grrl_policy.policy_runtime import (CAMERAS, ObservationError, Policy, PolicyOutputError,
                                        build_observation)
from grrl_policy.tiny_backbone import TinyBackboneConfig

from test_model import small_config

TINY = preset("tiny", tiny=TinyBackboneConfig(text_encoder="hashed"))


def images(size=128):
    rng = np.random.default_rng(0)
    return {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in CAMERAS}


@pytest.mark.parametrize("change, reason", [
    (lambda kw: kw.update(instruction=""), "no instruction"),
    (lambda kw: kw.update(proprio=np.full(16, np.nan)), "non-finite proprioception"),
    (lambda kw: kw.update(proprio=np.zeros(15)), "proprioception has shape"),
    (lambda kw: kw["images"].pop("left_wrist"), "missing camera image.*left_wrist"),
    (lambda kw: kw.update(images=images(224)), "needs uint8 \\(128, 128, 3\\)"),
    (lambda kw: kw["images"].update(head=np.zeros((128, 128, 3), np.float32)), "camera head"),
])
def test_bad_observations_are_refused_with_a_reason(change, reason):
    kw = {"instruction": "lace it", "proprio": np.zeros(16), "images": images()}
    change(kw)
    with pytest.raises(ObservationError, match=reason):
        build_observation(TINY, **kw)


@pytest.mark.parametrize("state, reason", [
    (np.zeros(41), r"state has shape \(41,\), expected \(42,\)"),
    (np.where(np.arange(42) == 7, np.nan, 0.0), r"non-finite state at indices \[7\]"),
])
def test_bad_state_is_refused_with_the_reason_it_is_bad(state, reason):
    cfg = preset("tiny-state")
    cfg = dataclasses.replace(cfg, tiny=dataclasses.replace(cfg.tiny, text_encoder="hashed"))
    with pytest.raises(ObservationError, match=reason):
        build_observation(cfg, "lace it", np.zeros(cfg.proprio_dim), None, state=state)


def test_inference_returns_a_finite_chunk_with_version_and_timings():
    torch.manual_seed(0)
    policy = Policy(GRRLModel(TINY))
    obs, proprio = build_observation(TINY, "lace it", np.zeros(16), images())
    chunk = policy.infer(obs, proprio)
    assert chunk.actions.shape == (16, 16) and chunk.noise.shape == (16, 16)
    assert np.isfinite(chunk.actions).all() and not chunk.steered and chunk.version == 0
    assert set(chunk.timings) == {"encode", "sample", "total"}
    steered = policy.infer(obs, proprio, steer=True)
    assert steered.steered
    again = policy.infer(obs, proprio, noise=chunk.noise)
    np.testing.assert_allclose(again.actions, chunk.actions, atol=1e-5)


def test_exploration_around_the_steered_noise_stays_inside_the_bound():
    torch.manual_seed(0)
    policy = Policy(GRRLModel(TINY))
    assert TINY.noise_bound == 2.5
    obs, proprio = build_observation(TINY, "lace it", np.zeros(16), images())
    explore = np.full((16, 16), 4.0, np.float32)
    explore[::2] = -4.0
    chunk = policy.infer(obs, proprio, steer=True, explore=explore)
    assert np.abs(chunk.noise).max() == pytest.approx(2.5)
    assert (np.sign(chunk.noise) == np.sign(explore)).all()


def test_nan_model_output_is_caught():
    policy = Policy(GRRLModel(TINY))
    with torch.no_grad():
        policy._model.action_expert.head.bias.fill_(float("nan"))
    obs, proprio = build_observation(TINY, "lace it", np.zeros(16), images())
    with pytest.raises(PolicyOutputError, match="non-finite actions"):
        policy.infer(obs, proprio)


def test_hot_swap_installs_verified_checkpoints_and_keeps_the_old_on_failure(tmp_path):
    torch.manual_seed(0)
    cfg = small_config()
    policy = Policy(GRRLModel(cfg))
    new = GRRLModel(cfg)
    meta = save_checkpoint(new, tmp_path / "v5", version=5)
    obs = {"instruction": ["lace"], "state": torch.zeros(1, 3)}
    proprio = torch.zeros(1, 2)
    # a bad digest, a corrupt file and another architecture are refused; nothing changes
    with pytest.raises(CheckpointError):
        policy.swap(str(tmp_path / "v5"), expected_sha256="f" * 64)
    other = GRRLModel(dataclasses.replace(cfg, value_bins=21))
    save_checkpoint(other, tmp_path / "other", version=6)
    with pytest.raises(CheckpointError, match="differs"):
        policy.swap(str(tmp_path / "other"))
    # an announcement cannot relabel a file: the version is the file's own
    with pytest.raises(CheckpointError, match="announced as version 10 but the file is version 5"):
        policy.swap(str(tmp_path / "v5"), expected_version=10)
    assert policy.version == 0
    policy.swap(str(tmp_path / "v5"), expected_sha256=meta.sha256, expected_version=5, newer=True)
    assert policy.version == 5 and policy.sha256 == meta.sha256
    with pytest.raises(CheckpointError, match="not newer"):
        policy.swap(str(tmp_path / "v5"), newer=True)
    noise = np.zeros((4, 2), np.float32)
    expect, _ = new.eval().act(obs, proprio, noise=torch.from_numpy(noise)[None])
    np.testing.assert_allclose(policy.infer(obs, proprio, noise=noise).actions, expect[0].numpy(), atol=1e-6)


def test_exploration_follows_the_noise_structure():
    """With ``noise_structure='constant'`` the exploration draw's first step is repeated over
    the chunk, like the predictor's ε: the shift survives temporal ensembling."""
    import dataclasses

    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, noise_structure="constant")
    policy = Policy(GRRLModel(cfg))
    obs, proprio = build_observation(cfg, "lace it", np.zeros(16), images())
    explore = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)
    chunk = policy.infer(obs, proprio, steer=True, explore=explore)
    assert np.allclose(chunk.noise, chunk.noise[:1])
    base = policy.infer(obs, proprio, steer=True)
    assert np.allclose(base.noise, base.noise[:1])
    np.testing.assert_allclose(chunk.noise, np.clip(base.noise + explore[:1], -2.5, 2.5), atol=1e-5)
