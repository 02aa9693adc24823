"""The backbone's key/value prefix that the experts (action DiT, critics, noise predictor) attend
to: the Mixture-of-Transformers link between the vision-language backbone and the experts.

Following GR-3 (and the paper's section 2) only the **latter half** of the backbone's layers is
exported: expert layer ``i`` attends to the keys/values of backbone layer ``L - n + i`` where
``n = len(prefix.keys)``. The prefix is computed once per observation and reused by every
denoising step and by the critic.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Prefix:
    """Cached keys/values of the backbone's latter-half layers for a batch of observations."""

    keys: list[torch.Tensor]
    """per exported layer: (B, n_kv_heads, L, head_dim)"""
    values: list[torch.Tensor]
    """per exported layer: (B, n_kv_heads, L, head_dim)"""
    mask: torch.Tensor
    """(B, L) bool, True where the prefix token is real (not padding)"""

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    def expand(self, repeats: int) -> "Prefix":
        """Each observation repeated ``repeats`` times (B*repeats, ...), for sampling several
        noises per observation without recomputing the backbone."""
        rep = (lambda t: t.repeat_interleave(repeats, dim=0))
        return Prefix([rep(k) for k in self.keys], [rep(v) for v in self.values], rep(self.mask))

    def detach(self) -> "Prefix":
        return Prefix([k.detach() for k in self.keys], [v.detach() for v in self.values], self.mask)


class Backbone(nn.Module, ABC):
    """A vision-language encoder whose latter-half keys/values form the experts' prefix.

    Observations are batched dicts: ``images`` (B, n_cameras, H, W, 3) uint8 (absent in the
    state-observation mode), ``instruction`` list[str] of length B, and for backbones that take
    it, ``state`` (B, state_dim) float simulator state.
    """

    n_kv_heads: int
    head_dim: int
    n_prefix_layers: int
    """how many (latter-half) layers are exported; the experts have this many layers"""

    @abstractmethod
    def encode(self, obs: dict) -> Prefix:
        """Run the backbone once and return its latter-half key/value cache."""
