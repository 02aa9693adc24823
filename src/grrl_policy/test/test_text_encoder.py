"""Precomputed instruction features: the same numbers as the frozen MiniLM, MiniLM loaded only
for an instruction the file lacks, and a bad file refused."""
import pytest
import torch

from grrl_policy.text_encoder import (FEATURES_ENV, TextEncoder, export_features, load_features,
                                      task_instructions)


def test_exported_features_replace_the_encoder_for_known_instructions(tmp_path, monkeypatch):
    path = tmp_path / "text.safetensors"
    known = task_instructions()
    assert len(known) == len(set(known)) == 24
    export_features(str(path), known[:3])
    reference = TextEncoder("minilm")
    monkeypatch.setenv(FEATURES_ENV, str(path))
    enc = TextEncoder("minilm")
    assert not enc._frozen                                   # nothing loaded yet
    feats, mask = enc(known[:2], torch.device("cpu"))
    ref, ref_mask = reference(known[:2], torch.device("cpu"))
    assert torch.equal(mask, ref_mask) and torch.equal(feats, ref)
    assert not enc._frozen
    enc([known[5]], torch.device("cpu"))                     # not in the file: MiniLM after all
    assert enc._frozen


def test_a_bad_features_file_is_refused(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "bad.safetensors"
    save_file({"i0": torch.full((3, 384), float("nan"))}, str(path),
              metadata={"instructions": '["thread"]'})
    with pytest.raises(ValueError, match="finite"):
        load_features(str(path))
