"""Checkpoints: round trip, and every way a file can be wrong is refused with a clear error."""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from grrl_policy.checkpoint import CheckpointError, load_checkpoint, paths, read_meta, save_checkpoint
from grrl_policy.model import GRRLModel

from test_model import small_config, state_obs


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = GRRLModel(small_config()).eval()
    meta = save_checkpoint(model, tmp_path / "ckpt", version=3, extra={"step": 7})
    return model, meta, tmp_path / "ckpt"


def test_round_trip_gives_identical_actions(saved):
    model, meta, path = saved
    loaded, meta2 = load_checkpoint(path, expected_sha256=meta.sha256)
    assert meta2.version == 3 and meta2.extra == {"step": 7} and meta2.config == model.cfg
    noise = torch.randn(2, 4, 2)
    a, _ = model.act(state_obs(2), torch.zeros(2, 2), noise=noise)
    b, _ = loaded.eval().act(state_obs(2), torch.zeros(2, 2), noise=noise)
    assert torch.equal(a, b)
    # both spellings of the path work
    assert read_meta(str(path) + ".json").sha256 == meta.sha256


def test_corrupt_weights_are_refused_by_hash(saved):
    _, _, path = saved
    w, _ = paths(path)
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_checkpoint(path)


def test_announced_digest_must_match(saved):
    _, _, path = saved
    with pytest.raises(CheckpointError, match="not the announced"):
        load_checkpoint(path, expected_sha256="0" * 64)


def test_shape_mismatch_is_refused_even_with_a_consistent_hash(saved, tmp_path):
    _, _, path = saved
    w, j = paths(path)
    state = load_file(str(w))
    state["noise_predictor.head.weight"] = torch.zeros(3, 32)
    save_file(state, str(w))
    doc = json.loads(j.read_text())
    from grrl_policy.checkpoint import file_sha256
    doc["sha256"] = file_sha256(w)
    j.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"noise_predictor.head.weight has shape \(3, 32\)"):
        load_checkpoint(path)


def test_config_of_a_different_model_is_refused(saved):
    model, _, path = saved
    other = GRRLModel(dataclasses.replace(small_config(), value_bins=21))
    with pytest.raises(CheckpointError, match="config differs"):
        load_checkpoint(path, model=other)


def test_truncated_and_missing_files(saved, tmp_path):
    _, _, path = saved
    w, j = paths(path)
    j.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable checkpoint config"):
        load_checkpoint(path)
    j.unlink()
    with pytest.raises(CheckpointError, match="no such checkpoint config"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such checkpoint config"):
        load_checkpoint(tmp_path / "nothing")


def test_future_format_version_is_refused(saved):
    _, _, path = saved
    _, j = paths(path)
    doc = json.loads(j.read_text())
    doc["format_version"] = 99
    j.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)


def test_non_finite_weights_are_not_saved(tmp_path):
    model = GRRLModel(small_config())
    with torch.no_grad():
        model.action_expert.head.bias[0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(model, tmp_path / "bad", version=1)
    assert not list(tmp_path.iterdir())
