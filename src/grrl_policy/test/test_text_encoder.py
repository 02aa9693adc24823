"""Precomputed instruction features: the same numbers as the frozen MiniLM, MiniLM loaded only
for an instruction the file lacks, a bad file refused, and the export command."""
import pytest
import torch

from grrl_policy.text_encoder import (FEATURES_ENV, TextEncoder, export_features,
                                      instructions_from, load_features, main)

#: instructions of some task (the policy package knows none; a task's package lists its own)
KNOWN = [f"thread the {e} lace end through the {o} eyelet on the {s}" for e in ("left", "right")
         for s in ("left", "right") for o in ("first", "second")]


def test_exported_features_replace_the_encoder_for_known_instructions(tmp_path, monkeypatch):
    path = tmp_path / "text.safetensors"
    known = KNOWN
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


def test_the_export_command_takes_instructions_and_task_lists(tmp_path):
    path = tmp_path / "text.safetensors"
    assert main([str(path), "pick up the cup", "--from", f"{__name__}:KNOWN"]) == 0
    feats = load_features(str(path))
    assert list(feats) == ["pick up the cup"] + KNOWN
    assert instructions_from(f"{__name__}:KNOWN") == KNOWN
    with pytest.raises(ValueError, match="MODULE:NAME"):
        instructions_from("no_colon")
    with pytest.raises(ValueError, match="not a list"):
        instructions_from("grrl_policy.text_encoder:FEATURES_ENV")
    with pytest.raises(SystemExit):
        main([str(path)])
