"""Categorical value distributions over a fixed support in [0, 1] (paper section 3.1).

The critic predicts, for each step of an action chunk, a distribution over ``n_bins`` atoms
z_0 = v_min .. z_{n-1} = v_max. Task progress is its mean (eq. 2): rho = sum_i p_i z_i. The
TD target r + gamma^k (1 - done) Z' is projected back onto the support (the C51 projection):
each shifted atom's mass is split between its two neighbouring atoms in proportion to
distance, and values outside [v_min, v_max] are clipped first.
"""
from __future__ import annotations

import torch


def support(n_bins: int, v_min: float = 0.0, v_max: float = 1.0,
            device: torch.device | str | None = None) -> torch.Tensor:
    """(n_bins,) atoms evenly spaced over [v_min, v_max]."""
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    return torch.linspace(v_min, v_max, n_bins, device=device)


def mean_value(probs: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """Expected value (task progress rho, eq. 2) of distributions (..., n_bins) -> (...)."""
    return (probs * atoms).sum(-1)


def project(next_probs: torch.Tensor, rewards: torch.Tensor, dones: torch.Tensor,
            discount: float | torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """C51 projection of r + discount * (1 - done) * Z' onto ``atoms``.

    next_probs: (B, n) target distributions; rewards, dones: (B,); discount: scalar or (B,)
    (gamma^k for a k-step chunk). Returns (B, n) distributions that sum to 1.
    """
    n = atoms.numel()
    v_min, v_max = float(atoms[0]), float(atoms[-1])
    dz = (v_max - v_min) / (n - 1)
    not_done = 1.0 - dones.to(next_probs.dtype)
    disc = torch.as_tensor(discount, dtype=next_probs.dtype, device=next_probs.device)
    tz = rewards[:, None] + (disc * not_done)[..., None] * atoms[None, :]    # (B, n)
    tz = tz.clamp(v_min, v_max)
    b = (tz - v_min) / dz                                                   # in [0, n-1]
    lower, upper = b.floor().long(), b.ceil().long()
    # where b is an integer, lower == upper: give it all the mass
    w_upper = b - lower.to(b.dtype)
    w_lower = 1.0 - w_upper
    out = torch.zeros_like(next_probs)
    out.scatter_add_(1, lower, next_probs * w_lower)
    out.scatter_add_(1, upper, next_probs * w_upper)
    return out
