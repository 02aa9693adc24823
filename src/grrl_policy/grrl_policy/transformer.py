"""The transformer block shared by the tiny backbone and every expert.

One block type serves both roles of the Mixture-of-Transformers: a backbone layer attends over
its own tokens and exports their keys/values; an expert layer has its own weights but its
queries attend over the concatenation [backbone prefix keys/values, own keys/values] of the
paired backbone layer (joint attention). Optional adaLN-zero conditioning (the flow time) is
what makes a block a DiT block.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """Pre-norm attention + MLP block with grouped-query attention and optional adaLN."""

    def __init__(self, width: int, n_heads: int, n_kv_heads: int, head_dim: int,
                 mlp_ratio: float = 4.0, cond_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        affine = cond_dim is None
        self.norm1 = nn.LayerNorm(width, elementwise_affine=affine)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=affine)
        self.q = nn.Linear(width, n_heads * head_dim)
        self.kv = nn.Linear(width, 2 * n_kv_heads * head_dim)
        self.out = nn.Linear(n_heads * head_dim, width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, width))
        # on the residual branches (attention output, MLP output); identity in eval()
        self.drop = nn.Dropout(dropout)
        self.ada = None
        if cond_dim is not None:
            # adaLN-zero: the block starts as the identity, as in DiT
            self.ada = nn.Linear(cond_dim, 6 * width)
            nn.init.zeros_(self.ada.weight)
            nn.init.zeros_(self.ada.bias)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's keys/values (B, n_kv_heads, L, head_dim) alone: all a backbone's last
        layer contributes to the experts (no attention or MLP needed)."""
        B, L, _ = x.shape
        k, v = self.kv(self.norm1(x)).view(B, L, 2, self.n_kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: torch.Tensor, allowed: torch.Tensor,
                ext_k: torch.Tensor | None = None, ext_v: torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, L, width); allowed: (B, L, L_ext + L) bool, True where a query may attend;
        ext_k/ext_v: (B, n_kv_heads, L_ext, head_dim) prefix of the paired backbone layer;
        cond: (B, cond_dim). Returns x and this layer's own keys/values (B, n_kv_heads, L, head_dim)."""
        B, L, _ = x.shape
        if self.ada is not None:
            shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond)[:, None].chunk(6, dim=-1)
        h = self.norm1(x)
        if self.ada is not None:
            h = h * (1 + scale1) + shift1
        q = self.q(h).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(h).view(B, L, 2, self.n_kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        keys, values = k, v
        if ext_k is not None:
            keys = torch.cat([ext_k.to(k.dtype), k], dim=2)
            values = torch.cat([ext_v.to(v.dtype), v], dim=2)
        a = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed[:, None],
                                           enable_gqa=self.n_heads != self.n_kv_heads)
        a = self.drop(self.out(a.transpose(1, 2).reshape(B, L, -1)))
        x = x + (gate1 * a if self.ada is not None else a)
        h = self.norm2(x)
        if self.ada is not None:
            h = h * (1 + scale2) + shift2
        m = self.drop(self.mlp(h))
        x = x + (gate2 * m if self.ada is not None else m)
        return x, k, v


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """(B,) scalars in [0, 1] → (B, dim) sinusoidal features (flow time embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([ang.cos(), ang.sin()], dim=-1)
