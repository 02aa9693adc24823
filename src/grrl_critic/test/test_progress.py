"""The live progress estimator: the filter's rho for one (observation, chunk), refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from grrl_critic.progress import ProgressEstimator, load_critic
from grrl_critic.td3bc import critic_progress
from grrl_policy.checkpoint import save_checkpoint
from grrl_policy.model import GRRLModel, preset
from grrl_policy.policy_runtime import build_observation


def test_estimator_scores_like_the_filter_and_refuses_what_it_cannot_score(tmp_path):
    torch.manual_seed(0)
    model = GRRLModel(preset("tiny-state"))          # joint space: proprio = the joints
    save_checkpoint(model, tmp_path / "critic", 1, {"role": "critic", "kind": "distributional",
                                                    "progress_position": "last"})
    est = ProgressEstimator(tmp_path / "critic")
    cfg = est.model.cfg
    rng = np.random.default_rng(0)
    q = rng.normal(size=16) * 0.1
    state = rng.normal(size=cfg.tiny.state_dim).astype(np.float32)
    chunk = rng.normal(size=(cfg.horizon, cfg.action_dim)).astype(np.float32) * 0.1
    rho = est.progress(q, "thread the left lace end", chunk, state=state)
    obs, proprio = build_observation(cfg, "thread the left lace end", q, state=state)
    want = critic_progress(est.model, obs, proprio, torch.from_numpy(chunk)[None],
                           "distributional", "mean", "last")
    assert 0.0 <= rho <= 1.0 and rho == pytest.approx(float(want[0]), abs=1e-6)
    assert est.position == "last" and len(est.sha256) == 64
    with pytest.raises(ValueError, match=r"chunk of shape \(16, 20\)"):
        est.progress(q, "x", np.zeros((16, 20)), state=state)
    with pytest.raises(ValueError, match="non-finite actions"):
        est.progress(q, "x", np.full_like(chunk, np.nan), state=state)
    with pytest.raises(ValueError, match="simulator state"):
        est.progress(q, "x", chunk)
    save_checkpoint(model, tmp_path / "policy", 1)
    with pytest.raises(ValueError, match="not a critic checkpoint"):
        load_critic(tmp_path / "policy")
