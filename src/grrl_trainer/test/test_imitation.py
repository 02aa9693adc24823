"""The offline imitation metric: chunks gathered within episodes, per-step errors of the active
arm, the idle arm's drift and the re-plan disagreement on hand-made chunks whose errors are
known, and the whole report for a model on in-memory episodes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from grrl_policy.model import GRRLModel, configure
from grrl_policy.task_space import TASK_DIM
from grrl_trainer.data.arrays import EpisodeArrays
from grrl_trainer.evaluation.imitation import (ImitationConfig, arm_view, chunk_errors,
                                               evaluate_imitation, predict, replan_disagreement,
                                               summary_table)

POSE = np.r_[0.4, 0.2, 0.9, 1, 0, 0, 0, 1, 0, 0.02, 0.4, -0.2, 0.9, 1, 0, 0, 0, 1, 0, 0.02]


def arrays(lengths=(20, 12), step_mm: float = 1.0) -> EpisodeArrays:
    """Episodes whose left tcp moves +x by ``step_mm`` per step from POSE; the right arm stays."""
    props, acts = [], []
    for n in lengths:
        p = np.tile(POSE, (n, 1)).astype(np.float32)
        p[:, 0] += 1e-3 * step_mm * np.arange(n)
        a = p.copy()
        a[:, 0] += 1e-3 * step_mm                 # each action is the next pose
        props.append(p)
        acts.append(a)
    length = np.array(lengths)
    start = np.r_[0, np.cumsum(length)[:-1]]
    return EpisodeArrays(np.zeros((length.sum(), 42), np.float32), np.concatenate(props),
                         np.concatenate(acts), np.repeat(np.arange(len(lengths)), length),
                         np.concatenate([np.arange(n) for n in lengths]), start, length,
                         list(range(len(lengths))), ["thread the left lace end"] * len(lengths),
                         np.ones(len(lengths), bool), list(range(len(lengths))))


def test_chunks_stay_within_their_episode():
    a = arrays((5, 3))
    chunks, mask = a.chunks(np.array([3, 5, 7]), 4)
    assert mask.tolist() == [[True, True, False, False], [True, True, True, False],
                             [True, False, False, False]]
    np.testing.assert_array_equal(chunks[0], a.actions[[3, 4, 4, 4]])     # padded with row 4
    np.testing.assert_array_equal(chunks[2], a.actions[[7, 7, 7, 7]])     # episode 1 ends at 7
    assert a.local(np.array([0, 4, 5, 7])).tolist() == [0, 0, 1, 1]


def test_errors_of_known_chunks():
    a = arrays((40,))
    rows = np.array([0, 8, 16])
    demo, mask = a.chunks(rows, 16)
    proprio = a.proprio[rows]
    pred = demo.copy()
    pred[..., 1] += 0.002                    # the active (left) arm 2 mm off in y
    pred[..., 10] += 0.003                   # the idle right arm drifts 3 mm in x
    err = chunk_errors(pred, demo, mask, proprio, idle_mm=5.0)
    for i in (1, 8, 16):
        assert err["steps"][i]["position_mm"]["median"] == pytest.approx(2.0, abs=1e-3)
        assert err["steps"][i]["rotation_deg"]["median"] == pytest.approx(0.0, abs=1e-3)
    assert err["idle_arm_mm"]["median"] == pytest.approx(3.0, abs=1e-3)
    assert err["active"].tolist() == [0, 0, 0]
    # holding still is i mm behind at step i (the demonstration moves 1 mm per step)
    hold = chunk_errors(np.repeat(proprio[:, None], 16, 1), demo, mask, proprio, 5.0)
    assert hold["steps"][1]["position_mm"]["median"] == pytest.approx(1.0, abs=1e-3)
    assert hold["steps"][8]["position_mm"]["median"] == pytest.approx(8.0, abs=1e-3)
    # consecutive plans that agree on their overlap: no disagreement; 4 mm apart: 4 mm
    assert replan_disagreement(demo, rows, a, 8, err["active"])["p90"] == pytest.approx(0, abs=1e-3)
    shifted = demo.copy()
    shifted[1, :, 2] += 0.004                # the middle plan: 4 mm from both neighbours
    assert replan_disagreement(shifted, rows, a, 8, err["active"])["median"] == \
        pytest.approx(4.0, abs=1e-3)


def test_report_of_a_model_beside_hold_still():
    torch.manual_seed(0)
    model = GRRLModel(configure("tiny-state-task", {
        "tiny": {"width": 32, "layers": 2, "heads": 2, "kv_heads": 1, "head_dim": 16,
                 "text_encoder": "hashed"}, "expert": {"width": 32, "heads": 2, "mlp_ratio": 2.0}}))
    model.normalizer.set("action", torch.from_numpy(POSE).float(), torch.full((TASK_DIM,), 1e-3))
    a = arrays((24, 17))
    report = evaluate_imitation(model, a, ImitationConfig(stride=8))
    assert report["decisions"] == 3 + 3 and report["episodes"] == 2
    assert report["hold_still"]["steps"][4]["position_mm"]["median"] == pytest.approx(4.0, abs=1e-3)
    assert set(report["policy"]["steps"]) == set(range(1, 17))
    assert isinstance(report["below_hold_still_every_step"], bool)
    assert "re-plan disagreement" in summary_table(report)
    # the reach of noise steering: the chunk moves further the further ε is from 0, and the
    # constant shift is exactly the chunk of ε = c everywhere against the chunk of ε = 0
    reach = report["noise_authority_mm"]
    assert list(reach) == ["0.1", "0.3", "1"] and set(reach["1"]) == {"random", "constant"}
    for kind in ("random", "constant"):
        med = [reach[s][kind][8]["median"] for s in reach]
        assert 0 < med[0] < med[1] < med[2], med
    rows = np.concatenate([s + np.arange(0, n, 8) for s, n in zip(a.start, a.length)])
    base = predict(model, a, rows, "zero", 0)
    ones = predict(model, a, rows, np.ones((len(rows), 16, TASK_DIM), np.float32), 0)
    by_hand = 1000 * np.linalg.norm(arm_view(ones - base)[..., :3], axis=-1).max(-1)
    assert reach["1"]["constant"][8]["median"] == pytest.approx(float(np.median(by_hand[:, 7])))
    assert "chunk moved by eps of rms 0.3" in summary_table(report)
    with pytest.raises(ValueError, match="authority_scales"):
        ImitationConfig(authority_scales=(0.0,))
    assert "noise_authority_mm" not in evaluate_imitation(model, a, ImitationConfig(authority_scales=()))


def test_state_and_per_step_normalisers_are_part_of_the_model(tmp_path):
    """state_norm: the backbone sees (state - mean) / std; per_step: (k, D) action statistics;
    both are saved with the weights and refused by a model built without them."""
    from grrl_policy.checkpoint import load_checkpoint, save_checkpoint
    from grrl_policy.keys import INSTRUCTION, STATE

    small = {"tiny": {"width": 32, "layers": 2, "heads": 2, "kv_heads": 1, "head_dim": 16,
                      "text_encoder": "hashed"}, "expert": {"width": 32, "heads": 2}, "horizon": 4}
    torch.manual_seed(0)
    model = GRRLModel(configure("tiny-state-task", {**small, "state_norm": True,
                                                    "action_norm": "per_step",
                                                    "action_mode": "delta"}))
    assert model.normalizer.action_mean.shape == (4, TASK_DIM)
    mean, std = torch.randn(42), torch.rand(42) + 0.5
    model.normalizer.set("state", mean, std)
    model.normalizer.set("action", torch.zeros(4, TASK_DIM), torch.linspace(0.01, 0.04, 4)[:, None]
                         .expand(4, TASK_DIM))
    state = torch.randn(2, 42)
    seen = {}
    encode = model.backbone.encode
    model.backbone.encode = lambda o: (seen.update(state=o[STATE]), encode(o))[1]
    obs = {INSTRUCTION: ["thread the left lace end"] * 2, STATE: state}
    model.encode(obs)
    torch.testing.assert_close(seen["state"], (state - mean) / std)
    proprio = torch.randn(2, TASK_DIM)
    a_n = torch.ones(2, 4, TASK_DIM)
    # step i of the chunk is scaled by its own std
    delta = model.decode_actions(a_n, proprio) - proprio[:, None]
    torch.testing.assert_close(delta[0, :, 0], torch.linspace(0.01, 0.04, 4))
    save_checkpoint(model, tmp_path / "m", version=1)
    again, _ = load_checkpoint(tmp_path / "m")
    torch.testing.assert_close(again.normalizer.state_std, model.normalizer.state_std)
    with pytest.raises(ValueError, match="state_norm"):
        GRRLModel(configure("tiny", {"state_norm": True}))
