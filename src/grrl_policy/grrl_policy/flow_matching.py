"""Flow matching for action chunks (rectified-flow convention).

    x_τ = (1 − τ) ε + τ a,      ε ~ N(0, I),  τ ∈ [0, 1]
    target velocity u = a − ε,  loss = ‖v_θ(x_τ, τ) − u‖²   (masked over padded chunk steps)

Sampling integrates dx/dτ = v_θ(x, τ) from τ = 0 (x = ε) to τ = 1 with Euler steps. Given ε,
sampling is deterministic — which is what lets the noise predictor steer the policy: the action
is a fixed function π_θ(s | ε) of the initial noise.
"""
from __future__ import annotations

from typing import Callable

import torch

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x_τ (B, k, D), τ (B,)) → velocity (B, k, D)"""


def sample_time(batch: int, device: torch.device, generator: torch.Generator | None = None,
                distribution: str = "uniform") -> torch.Tensor:
    """Training flow times τ (B,). 'uniform', or 'beta' (Beta(1.5, 1) — more weight near the
    noisy end τ → 0, the π0 choice, mirrored to our convention)."""
    if distribution == "uniform":
        return torch.rand(batch, device=device, generator=generator)
    if distribution == "beta":
        u = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0)).sample((batch,)).to(device)
        return 1.0 - u
    raise ValueError(f"unknown flow time distribution {distribution!r}")


def flow_matching_loss(velocity: VelocityFn, actions: torch.Tensor, noise: torch.Tensor,
                       time: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """actions, noise: (B, k, D); time: (B,); mask: (B, k) bool, False for padded steps."""
    t = time[:, None, None]
    x_t = (1.0 - t) * noise + t * actions
    err = (velocity(x_t, time) - (actions - noise)).pow(2).mean(-1)      # (B, k)
    if mask is None:
        return err.mean()
    m = mask.float()
    return (err * m).sum() / m.sum().clamp_min(1.0)


def integrate(velocity: VelocityFn, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """Euler integration of the flow from ε (B, k, D) at τ = 0 to the action at τ = 1."""
    if steps < 1:
        raise ValueError("need at least one flow step")
    x, dt = noise, 1.0 / steps
    for i in range(steps):
        tau = torch.full((x.shape[0],), i * dt, device=x.device, dtype=x.dtype)
        x = x + dt * velocity(x, tau)
    return x
