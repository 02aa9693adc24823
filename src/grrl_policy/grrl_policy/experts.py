"""The experts of the Mixture-of-Transformers: each has its own weights and one layer per
exported backbone layer, and attends jointly to the backbone prefix and its own tokens.

Token layout of every expert: [proprioception token, k chunk tokens]. Proprioception enters
here rather than in the VLM (as in GR-3 / π0): the VLM prefix then depends on the images and the
instruction only. The four uses:

- action DiT: chunk tokens = noisy actions x_τ, adaLN on the flow time τ, bidirectional,
  output = velocity (B, k, action_dim);
- critic Q_φ: chunk tokens = actions, causal, output = categorical logits per step
  (B, k, bins): step j's distribution is the value of the chunk prefix a_{t:t+j} (Q-chunking);
- noise critic Q_φ': the same over the initial noise ε instead of actions;
- noise predictor π_θ': chunk tokens = learned queries, bidirectional, output ε (B, k, action_dim).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .prefix import Prefix
from .transformer import Block, sinusoidal


@dataclass
class ExpertConfig:
    """Dimensions shared by the experts (their depth is the number of exported layers)."""

    width: int = 128
    """token width of the experts"""
    heads: int = 4
    """query heads (keys/values use the backbone's kv heads and head_dim)"""
    mlp_ratio: float = 4.0
    """MLP hidden size over width"""
    dropout: float = 0.0
    """dropout on the blocks' residual branches during training (a regulariser of BC)"""


class Expert(nn.Module):
    """[proprio, chunk] tokens → per-chunk-token outputs (B, k, out_dim)."""

    def __init__(self, cfg: ExpertConfig, n_layers: int, n_kv_heads: int, head_dim: int,
                 horizon: int, proprio_dim: int, in_dim: int | None, out_dim: int,
                 causal: bool, time_conditioned: bool = False):
        super().__init__()
        self.horizon, self.causal = horizon, causal
        w = cfg.width
        self.proprio_in = nn.Linear(proprio_dim, w)
        # in_dim None: the chunk tokens are learned queries (the noise predictor)
        self.chunk_in = nn.Linear(in_dim, w) if in_dim else None
        self.queries = None if in_dim else nn.Parameter(torch.randn(1, horizon, w) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, horizon + 1, w) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w)) \
            if time_conditioned else None
        self.blocks = nn.ModuleList(Block(w, cfg.heads, n_kv_heads, head_dim, cfg.mlp_ratio,
                                          cond_dim=w if time_conditioned else None,
                                          dropout=cfg.dropout)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(w)
        self.head = nn.Linear(w, out_dim)
        own = torch.ones(horizon + 1, horizon + 1, dtype=torch.bool)
        self.register_buffer("own_allowed", torch.tril(own) if causal else own, persistent=False)

    def forward(self, prefix: Prefix, proprio: torch.Tensor, chunk: torch.Tensor | None = None,
                time: torch.Tensor | None = None) -> torch.Tensor:
        """prefix: B observations; proprio: (B, proprio_dim); chunk: (B, k, in_dim);
        time: (B,) flow time in [0, 1] for the DiT. Returns (B, k, out_dim)."""
        B = proprio.shape[0]
        if prefix.batch_size != B:
            raise ValueError(f"prefix holds {prefix.batch_size} observations, proprio {B}")
        p = self.proprio_in(proprio)[:, None]
        c = self.chunk_in(chunk) if self.chunk_in is not None else self.queries.expand(B, -1, -1)
        if c.shape[1] != self.horizon:
            raise ValueError(f"chunk has {c.shape[1]} steps, the expert was built for {self.horizon}")
        x = torch.cat([p, c], dim=1) + self.pos
        cond = self.time_mlp(sinusoidal(time, x.shape[-1])) if self.time_mlp is not None else None
        L = x.shape[1]
        allowed = torch.cat([prefix.mask[:, None, :].expand(-1, L, -1),
                             self.own_allowed[None].expand(B, -1, -1)], dim=2)
        for block, k, v in zip(self.blocks, prefix.keys, prefix.values):
            x, _, _ = block(x, allowed, k, v, cond)
        return self.head(self.norm(x[:, 1:]))
