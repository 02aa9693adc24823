"""C51 projection: exact on hand-computed cases; progress is the distribution's mean."""
from __future__ import annotations

import torch

from grrl_critic.categorical import mean_value, project, support

ATOMS = support(5)                                  # 0, .25, .5, .75, 1


def test_support_and_mean():
    assert torch.allclose(ATOMS, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    p = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]])
    assert torch.allclose(mean_value(p, ATOMS), torch.tensor([0.5]))


def test_terminal_success_puts_all_mass_on_the_reward():
    p = torch.full((1, 5), 0.2)
    out = project(p, torch.tensor([1.0]), torch.tensor([1.0]), 0.9, ATOMS)
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]]))
    out = project(p, torch.tensor([0.0]), torch.tensor([1.0]), 0.9, ATOMS)
    assert torch.equal(out, torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]]))


def test_discounted_shift_splits_mass_between_neighbours():
    # all mass on z = 1.0, gamma = 0.9, r = 0: target 0.9 lies between 0.75 and 1.0:
    # b = 3.6 -> 0.4 of the mass to atom 3, 0.6 to atom 4
    p = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]])
    out = project(p, torch.tensor([0.0]), torch.tensor([0.0]), 0.9, ATOMS)
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, 0.0, 0.4, 0.6]]), atol=1e-6)
    # mass on 0.5 with gamma 0.5 -> 0.25 exactly: an integer position keeps all the mass
    p = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]])
    out = project(p, torch.tensor([0.0]), torch.tensor([0.0]), 0.5, ATOMS)
    assert torch.allclose(out, torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]]))


def test_clipping_batch_and_mean_preservation():
    p = torch.tensor([[0.5, 0.0, 0.0, 0.0, 0.5], [0.1, 0.2, 0.3, 0.2, 0.2]])
    r, d = torch.tensor([0.5, 0.1]), torch.tensor([0.0, 0.0])
    out = project(p, r, d, 1.0, ATOMS)
    # row 0: 0.5 + {0, 1} -> {0.5, 1.5 clipped to 1.0}
    assert torch.allclose(out[0], torch.tensor([0.0, 0.0, 0.5, 0.0, 0.5]))
    assert torch.allclose(out.sum(-1), torch.ones(2))
    # without clipping, the projection preserves the mean: E[r + g Z']
    q = torch.tensor([[0.4, 0.3, 0.2, 0.1, 0.0]])
    out = project(q, torch.tensor([0.1]), torch.tensor([0.0]), 0.8, ATOMS)
    assert torch.allclose(mean_value(out, ATOMS), 0.1 + 0.8 * mean_value(q, ATOMS), atol=1e-6)
