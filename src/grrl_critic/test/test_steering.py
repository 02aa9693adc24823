"""Online noise-space steering (section 3.3): eqs. (3) and (4) by hand, the 50/50 noise mix,
which parameters each loss reaches, frozen backbone and DiT, persistence, divergence, and a
toy check that eq. (3) steers ε toward higher Q_φ' while the penalty holds ½‖ε‖² near β."""
import copy
from dataclasses import replace as dataclasses_replace
import io
import math

import numpy as np
import pytest
import torch

from grrl_critic.categorical import support
from grrl_critic.steering import (DivergedError, SteeringConfig, SteeringLearner, default_beta,
                                  mixed_noise, noise_actor_loss, noise_critic_loss, noise_penalty,
                                  noise_statistics, trusted_value)
from grrl_policy.experts import ExpertConfig
from grrl_policy.model import GRRLModel, ModelConfig
from grrl_policy.tiny_backbone import TinyBackboneConfig

torch.set_num_threads(1)

K, D, S, P = 4, 2, 3, 2          # horizon, action dim, state dim, proprio dim


def small_model() -> GRRLModel:
    return GRRLModel(ModelConfig(name="test", tiny=TinyBackboneConfig(
        width=32, layers=2, heads=2, kv_heads=1, head_dim=16, text_encoder="hashed",
        observation="state", state_dim=S, state_tokens=2),
        expert=ExpertConfig(width=32, heads=2, mlp_ratio=2.0), horizon=K, action_dim=D,
        proprio_dim=P, flow_steps=10, value_bins=11))


def synthetic_batch(B: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def obs() -> dict:
        return {"instruction": ["lace the left end"] * B, "state": torch.randn(B, S, generator=g)}

    return {"obs": obs(), "next_obs": obs(),
            "proprio": torch.randn(B, P, generator=g), "next_proprio": torch.randn(B, P, generator=g),
            "actions": torch.randn(B, K, D, generator=g), "noise": torch.randn(B, K, D, generator=g),
            "reward": (torch.rand(B, generator=g) < 0.3).float() * 0.9,
            "done": torch.rand(B, generator=g) < 0.3,
            "offset": torch.randint(1, K + 1, (B,), generator=g),
            "mc_return": torch.rand(B, generator=g)}


def learner(seed: int = 0, **cfg) -> SteeringLearner:
    torch.manual_seed(seed)
    return SteeringLearner(small_model(), SteeringConfig(flow_steps=3, **cfg))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- eq. (3) and (4) by hand
def test_eq3_penalty_and_actor_loss_by_hand():
    eps = torch.tensor([[[1.0], [1.0]],        # ½‖ε‖² = 1 < β: penalty inactive
                        [[2.0], [2.0]]])       # ½‖ε‖² = 4 > β: 0.5 · (4 − 2) = 1
    torch.testing.assert_close(noise_penalty(eps, c=0.5, beta=2.0), torch.tensor([0.0, 1.0]))
    # Q_φ' as categorical distributions over atoms (0, 0.5, 1): means 0.65 and 0.25
    atoms = support(3)
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    q = (torch.log(probs).softmax(-1) * atoms).sum(-1)
    torch.testing.assert_close(q, torch.tensor([0.65, 0.25]))
    expected = ((-0.65 + 0.0) + (-0.25 + 1.0)) / 2
    assert noise_actor_loss(q, eps, c=0.5, beta=2.0).item() == pytest.approx(expected)
    # the penalty's gradient is c·ε where active, 0 where not
    e = eps.clone().requires_grad_(True)
    noise_actor_loss(torch.zeros(2), e, c=0.5, beta=2.0).backward()
    torch.testing.assert_close(e.grad, torch.stack([torch.zeros(2, 1), 0.5 * eps[1] / 2]))
    # β = None is the expected ½‖ε‖² of N(0, I) over a chunk; the default is a trust region
    assert default_beta(16, 16) == 128.0
    assert learner(beta=None).beta == 0.5 * K * D
    assert learner().beta == SteeringConfig.beta == 1.0
    assert learner(beta=1.5).beta == 1.5
    big = torch.randn(20000, K, D)
    assert (0.5 * big.pow(2).flatten(1).sum(-1)).mean().item() == pytest.approx(0.5 * K * D, rel=0.03)


def test_eq4_cross_entropy_by_hand():
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])).requires_grad_(True)
    target = torch.tensor([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    expected = (-(0.5 * math.log(0.3) + 0.5 * math.log(0.5)) - math.log(0.6)) / 2
    loss = noise_critic_loss(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()            # d CE / d logits = (softmax − target) / B
    torch.testing.assert_close(logits.grad, (logits.detach().softmax(-1) - target) / 2)


def test_mixed_noise_is_half_normal_half_predicted():
    n = 20000
    predicted = torch.randn(n, K, D) * 0.1 + 3.0          # far from N(0, I): easy to tell apart
    eps, from_normal = mixed_noise(predicted, 0.5, torch.Generator().manual_seed(0))
    assert from_normal.dtype == torch.bool and from_normal.shape == (n,)
    assert abs(from_normal.sum().item() - n / 2) < 4 * math.sqrt(n * 0.25)   # binomial, 4 sigma
    assert torch.equal(eps[~from_normal], predicted[~from_normal])
    normal = eps[from_normal]
    assert abs(normal.mean().item()) < 0.02 and abs(normal.std().item() - 1.0) < 0.02
    eps0, m0 = mixed_noise(predicted, 0.0)
    assert not m0.any() and torch.equal(eps0, predicted)
    _, m1 = mixed_noise(predicted, 1.0)
    assert m1.all()
    again, _ = mixed_noise(predicted, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(again, eps)                        # reproducible with a generator


def test_config_validation():
    for bad in ({"noise_mix": 1.5}, {"policy_delay": 0}, {"c": -1.0}, {"beta": -1.0},
                {"distill_critics": "max"}, {"tau": 0.0}, {"flow_steps": -1}, {"actor_trust": -0.1},
                {"actor_trust": float("nan")}):
        with pytest.raises(ValueError):
            SteeringConfig(**bad)
    cfg = SteeringConfig(beta=2.0, noise_mix=0.3)
    assert SteeringConfig.from_dict(cfg.to_dict()) == cfg


# ---------------------------------------------------------------- which parameters move
def grads_by_group(model: GRRLModel) -> dict[str, bool]:
    """Per module: does any parameter hold a non-zero gradient?"""
    out = {}
    for name in ("backbone", "action_expert", "critics", "noise_predictor", "noise_critic"):
        out[name] = any(p.grad is not None and p.grad.abs().sum() > 0
                        for p in getattr(model, name).parameters())
    return out


def test_eq3_gradient_reaches_only_the_noise_predictor():
    lr = learner()
    b = synthetic_batch()
    with torch.no_grad():
        prefix = lr.model.encode(b["obs"])
    loss, eps, q = lr.actor_objective(prefix, b["proprio"])
    assert eps.shape == (8, K, D) and q.shape == (8,)
    loss.backward()
    assert grads_by_group(lr.model) == {"backbone": False, "action_expert": False, "critics": False,
                                        "noise_predictor": True, "noise_critic": False}
    assert all(p.grad is None for p in lr.model.noise_critic.parameters())
    assert all(p.requires_grad for p in lr.model.noise_critic.parameters())   # restored


def test_eq4_gradient_reaches_only_the_noise_critic():
    lr = learner()
    b = synthetic_batch()
    with torch.no_grad():
        prefix = lr.model.encode(b["obs"])
    eps = lr.model.predict_noise(prefix, b["proprio"])        # with grad: must be cut
    loss, stats = lr.distill_objective(prefix, b["proprio"], eps)
    loss.backward()
    assert grads_by_group(lr.model) == {"backbone": False, "action_expert": False, "critics": False,
                                        "noise_predictor": False, "noise_critic": True}
    assert 0.0 <= stats["distill_target_mean"] <= 1.0


def test_td_gradient_reaches_only_the_critics():
    lr = learner()
    b = synthetic_batch()
    with torch.no_grad():
        prefix, next_prefix = lr.model.encode(b["obs"]), lr.model.encode(b["next_obs"])
    loss, logits = lr.td_objective(b, prefix, next_prefix)
    assert logits.shape == (2, 8, 11)
    loss.backward()
    assert grads_by_group(lr.model) == {"backbone": False, "action_expert": False, "critics": True,
                                        "noise_predictor": False, "noise_critic": False}


def test_updates_move_the_heads_and_leave_backbone_and_dit_frozen():
    lr = learner(policy_delay=2)
    m = lr.model
    before = {name: snapshot(getattr(m, name)) for name in
              ("backbone", "action_expert", "critics", "noise_predictor", "noise_critic")}
    targets = snapshot(lr.critics_target), snapshot(lr.noise_target)
    flags = []
    for i in range(4):
        metrics = lr.update(synthetic_batch(seed=i))
        flags.append(metrics["actor_updated"])
    assert flags == [0.0, 1.0, 0.0, 1.0]                        # TD3's delayed actor
    assert same(before["backbone"], snapshot(m.backbone))
    assert same(before["action_expert"], snapshot(m.action_expert))
    for name in ("critics", "noise_predictor", "noise_critic"):
        assert not same(before[name], snapshot(getattr(m, name))), name
    assert not same(targets[0], snapshot(lr.critics_target))
    assert not same(targets[1], snapshot(lr.noise_target))
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert not m.backbone.training and not m.action_expert.training
    assert lr.policy_model() is m and lr.updates == 4


@pytest.mark.parametrize("target", ["mc", "td"])
def test_warm_up_trains_the_critics_only(target):
    lr = learner(policy_delay=1, warmup_target=target)
    m = lr.model
    pred, crit, ncrit = snapshot(m.noise_predictor), snapshot(m.critics), snapshot(m.noise_critic)
    for i in range(3):
        metrics = lr.warm_up_critic(synthetic_batch(seed=i))
        assert metrics["actor_updated"] == 0.0
    assert same(pred, snapshot(m.noise_predictor))
    assert not same(crit, snapshot(m.critics)) and not same(ncrit, snapshot(m.noise_critic))


def test_the_mc_warm_up_learns_the_returns_it_is_given():
    """Transitions that differ only in their state: half returned 0.9, half 0.1. The MC
    warm-up separates them in a few dozen updates; it refuses batches without returns."""
    lr = learner(seed=4, critic_lr=3e-3)
    b = synthetic_batch(B=16, seed=5)
    good = torch.arange(16) < 8
    b["obs"]["state"] = torch.where(good[:, None], 1.0, -1.0).expand(16, S).clone()
    b["mc_return"] = torch.where(good, 0.9, 0.1)
    for _ in range(60):
        lr.warm_up_critic(b)
    q, _ = lr.transition_values(b)
    assert q[good].min() > 0.7 and q[~good].max() < 0.3, q
    del b["mc_return"]
    with pytest.raises(ValueError, match="Monte-Carlo returns"):
        lr.warm_up_critic(b)
    with pytest.raises(ValueError, match="warmup_target"):
        SteeringConfig(warmup_target="nstep")


# ---------------------------------------------------------------- running, resuming, diverging
def test_learner_runs_and_resumes_exactly():
    lr = learner(seed=1)
    for i in range(3):
        metrics = lr.update(synthetic_batch(seed=i))
    for key in ("critic_loss", "noise_critic_loss", "noise_actor_loss", "eps_norm_mean",
                "eps_norm_std", "q_mean", "noise_q_mean", "penalty_frac"):
        assert np.isfinite(metrics[key]), key
    assert 0.0 <= metrics["q_mean"] <= 1.0 and 0.0 <= metrics["noise_q_mean"] <= 1.0
    buf = io.BytesIO()
    torch.save(lr.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    # a fresh learner on a model whose heads differ (a different seed) takes the saved heads
    torch.manual_seed(7)
    fresh_model = small_model()
    fresh_model.backbone.load_state_dict(lr.model.backbone.state_dict())
    fresh_model.action_expert.load_state_dict(lr.model.action_expert.state_dict())
    other = SteeringLearner(fresh_model, SteeringConfig(flow_steps=3))
    other.load_state_dict(state)
    assert other.updates == 3
    batch = synthetic_batch(seed=10)
    torch.manual_seed(3)
    a = lr.update(batch)
    torch.manual_seed(3)
    b = other.update(batch)
    assert a == b
    assert same(snapshot(lr.model), snapshot(other.model))


def test_non_finite_loss_raises_without_stepping():
    lr = learner()
    lr.update(synthetic_batch())
    before = snapshot(lr.model), snapshot(lr.critics_target)
    opt_steps = copy.deepcopy(lr.opt_critic.state_dict()["state"])
    bad = synthetic_batch(seed=1)
    bad["actions"][0, 1, 0] = float("inf")             # a blown-up chunk: the TD loss is NaN
    with pytest.raises(DivergedError, match="critic_loss"):
        lr.update(bad)
    bad = synthetic_batch(seed=1)
    bad["reward"][0] = float("nan")
    with pytest.raises(ValueError, match="non-finite rewards"):
        lr.update(bad)
    assert same(before[0], snapshot(lr.model)) and same(before[1], snapshot(lr.critics_target))
    assert lr.updates == 1
    assert all(torch.equal(opt_steps[i]["step"], s["step"])
               for i, s in lr.opt_critic.state_dict()["state"].items())


# ---------------------------------------------------------------- eq. (3) steers ε
def steer_with_handmade_noise_critic(c: float, steps: int = 400, **cfg) -> tuple:
    """Train only the noise predictor by eq. (3) against a hand-made Q_φ' whose categorical
    mean is 0.5 + 0.2·mean(ε) (mass on the end atoms 0 and 1). Returns (ε before, Q before,
    ε after, Q after, β)."""
    lr = learner(seed=2, noise_lr=3e-3, c=c, **cfg)
    m = lr.model
    n_bins = m.cfg.value_bins

    def handmade_noise_critic(prefix, proprio, eps):          # (B, k, bins); last position used
        p1 = (0.5 + 0.2 * eps.flatten(1).mean(-1)).clamp(0.01, 0.99)
        probs = torch.stack([1 - p1] + [torch.zeros_like(p1)] * (n_bins - 2) + [p1], -1)
        return probs.clamp_min(1e-12).log()[:, None].expand(-1, eps.shape[1], -1)

    m.noise_critic_logits = handmade_noise_critic              # instance override of the method
    b = synthetic_batch(B=16)
    with torch.no_grad():
        prefix = m.encode(b["obs"])
    _, eps0, q0 = lr.actor_objective(prefix, b["proprio"], grad=False)
    torch.testing.assert_close(q0, 0.5 + 0.2 * eps0.flatten(1).mean(-1))
    for _ in range(steps):
        loss, _, _ = lr.actor_objective(prefix, b["proprio"])
        lr.opt_noise.zero_grad(set_to_none=True)
        loss.backward()
        lr.opt_noise.step()
    _, eps, q = lr.actor_objective(prefix, b["proprio"], grad=False)
    return eps0, q0, eps, q, lr.beta


def test_eq3_moves_eps_toward_higher_noise_q_within_the_penalty_ball():
    """eq. (3) must raise the predictor's mean(ε) (higher Q_φ'), and the hinge must hold
    ½‖ε‖² near β = ½·k·D, where the best ε on that sphere is 1 everywhere; without the
    penalty (c = 0) ε runs far past β. The default β = 1 holds it on a small sphere around
    ε = 0, where the best ε is about sqrt(2β / (k·D)) everywhere."""
    eps0, q0, eps, q, beta = steer_with_handmade_noise_critic(c=0.05, beta=None)
    half_sq = 0.5 * eps.flatten(1).pow(2).sum(-1)
    assert eps.mean() > 0.9 and eps.mean() > eps0.mean() + 0.5, (eps0.mean(), eps.mean())
    assert q.mean() > q0.mean() + 0.1
    assert (half_sq - beta).abs().max() < 0.1 * beta, half_sq
    _, _, free, _, _ = steer_with_handmade_noise_critic(c=0.0, beta=None)
    assert (0.5 * free.flatten(1).pow(2).sum(-1)).min() > 1.5 * beta
    eps0, q0, eps, q, beta = steer_with_handmade_noise_critic(c=0.05)
    assert beta == 1.0
    half_sq = 0.5 * eps.flatten(1).pow(2).sum(-1)
    assert ((half_sq > 0.9 * beta) & (half_sq < 1.5 * beta)).all(), half_sq   # (a soft hinge, c = 0.05)
    assert eps.mean() == pytest.approx((2 * beta / (K * D)) ** 0.5, rel=0.2) and q.mean() > q0.mean()


def test_the_bound_keeps_every_dimension_of_eps_where_the_flow_was_trained():
    """Without the penalty (c = 0) a Q_φ' that grows with mean(ε) drives ε past any norm; the
    tanh bound (the model's default 2.5, DSRL's bounded latent) holds every value inside it,
    and ``noise_bound=0`` (the ablation) does not."""
    _, _, eps, _, _ = steer_with_handmade_noise_critic(c=0.0, steps=300)
    assert eps.abs().max() < 2.5 and eps.min() > 2.0, (eps.min(), eps.max())
    stats = noise_statistics(eps, 2.5)
    assert stats["eps_saturated_frac"] > 0.5 and stats["eps_out_frac"] == 0.0
    _, _, free, _, _ = steer_with_handmade_noise_critic(c=0.0, steps=300, noise_bound=0.0)
    assert free.abs().max() > 3.0
    assert "eps_saturated_frac" not in noise_statistics(free, 0.0)


def test_actor_trust_stops_the_climb_where_the_noise_critic_runs_ahead_of_the_action_critic():
    """Q_φ' = 0.5 + 0.2·mean(ε) (hand-made, as above) keeps rising with ε, while Q_φ of every
    decoded chunk says 0.5: with ``actor_trust`` 0.05 the actor settles where Q_φ' ≈ 0.55
    (mean ε ≈ 0.25); without it (and without penalty or bound) ε runs to the far end."""
    n_bins = small_model().cfg.value_bins

    def flat_action_critic(self, prefix, proprio, eps):       # categorical mean 0.5 everywhere
        probs = torch.zeros(eps.shape[0], n_bins)
        probs[:, 0] = probs[:, -1] = 0.5
        return probs

    original = SteeringLearner.action_critic_probs
    SteeringLearner.action_critic_probs = flat_action_critic
    try:
        _, _, eps, q, _ = steer_with_handmade_noise_critic(c=0.0, beta=None, noise_bound=0.0,
                                                           actor_trust=0.05)
        _, _, free, _, _ = steer_with_handmade_noise_critic(c=0.0, beta=None, noise_bound=0.0)
    finally:
        SteeringLearner.action_critic_probs = original
    assert 0.1 < eps.mean() < 0.45 and (q - 0.55).abs().max() < 0.06, (eps.mean(), q)
    assert free.flatten(1).mean(-1).min() > 2.0, free.mean()


def test_trusted_value_by_hand():
    noise_q = torch.tensor([0.3, 0.59, 0.7, 0.9], requires_grad=True)
    action_q = torch.full((4,), 0.5)
    v = trusted_value(noise_q, action_q, 0.1)
    torch.testing.assert_close(v.detach(), torch.tensor([0.3, 0.59, 0.5, 0.3]))
    v.sum().backward()
    assert noise_q.grad.tolist() == [1.0, 1.0, -1.0, -1.0]     # beyond the margin: back down


def test_noise_statistics_of_the_flows_own_noise():
    eps = torch.randn(4096, K, D, generator=torch.Generator().manual_seed(0))
    s = noise_statistics(eps, 2.5)
    assert s["eps_dim_mean_abs"] < 0.05 and abs(s["eps_dim_std"] - 1) < 0.03
    assert abs(s["eps_abs_mean"] - math.sqrt(2 / math.pi)) < 0.02
    assert abs(s["eps_out_frac"] - 0.0124) < 0.005
    shifted = noise_statistics(eps + 1.0, 2.5)
    assert abs(shifted["eps_dim_mean_abs"] - 1.0) < 0.05


def test_the_bound_is_saved_with_the_policy_and_old_checkpoints_stay_unbounded():
    lr = learner(noise_bound=1.5)
    assert lr.model.cfg.noise_bound == 1.5
    b = synthetic_batch()
    with torch.no_grad():
        prefix = lr.model.encode(b["obs"])
        lr.model.noise_predictor.head.bias.fill_(100.0)      # a raw output far outside
        raw = lr.model.noise_predictor(prefix, lr.model.normalizer.norm("proprio", b["proprio"]))
        eps = lr.model.predict_noise(prefix, b["proprio"])
    torch.testing.assert_close(eps, 1.5 * torch.tanh(raw / 1.5))
    assert eps.abs().max() <= 1.5        # tanh rounds to 1 in float32 this far out
    torch.testing.assert_close(lr.model.clip_noise(torch.full((1, K, D), -9.0)),
                               torch.full((1, K, D), -1.5))
    old = small_model().cfg.to_dict()
    del old["noise_bound"]
    assert ModelConfig.from_dict(old).noise_bound == 0.0
    assert ModelConfig().noise_bound == 2.5
    with pytest.raises(ValueError, match="noise_bound"):
        SteeringConfig(noise_bound=-1.0)


def test_constant_noise_structure_steers_one_shift_for_the_whole_chunk():
    """``noise_structure='constant'``: the predictor's ε, eq. (4)'s N(0, I) draws and the
    target smoothing repeat one D-vector over the chunk (still N(0, 1) per value); eq. (3)
    still climbs Q_φ'; the choice is saved with the policy and old configs stay 'full'."""
    lr = learner(noise_structure="constant")
    m = lr.model
    assert m.cfg.noise_structure == "constant"
    b = synthetic_batch()
    with torch.no_grad():
        prefix = m.encode(b["obs"])
        m.noise_predictor.head.bias.copy_(torch.randn(D))
        raw = m.noise_predictor(prefix, m.normalizer.norm("proprio", b["proprio"]))
        eps = m.predict_noise(prefix, b["proprio"])
    assert not torch.allclose(raw[:, :1].expand_as(raw), raw)        # the raw output varies
    torch.testing.assert_close(eps, m.bound_noise(raw.mean(1, keepdim=True)).expand_as(eps))
    n = 20000
    mixed, from_normal = mixed_noise(torch.zeros(n, K, D), 1.0, torch.Generator().manual_seed(0),
                                     structure=m.structured_draw)
    assert from_normal.all() and torch.equal(mixed, mixed[:, :1].expand_as(mixed))
    assert abs(mixed.std().item() - 1.0) < 0.02                          # N(0, 1) per value
    metrics = lr.update(b)                     # the whole step runs with the structure
    assert math.isfinite(metrics["critic_loss"])
    _, q0, eps1, q1, _ = steer_with_handmade_noise_critic(c=0.05, beta=None,
                                                          noise_structure="constant")
    assert torch.equal(eps1, eps1[:, :1].expand_as(eps1)) and q1.mean() > q0.mean() + 0.1
    old = small_model().cfg.to_dict()
    del old["noise_structure"]
    assert ModelConfig.from_dict(old).noise_structure == "full"
    full = small_model()
    draw = torch.randn(3, K, D)
    assert torch.equal(full.structured_draw(draw), draw)
    with pytest.raises(ValueError, match="noise_structure"):
        SteeringConfig(noise_structure="diagonal")
    with pytest.raises(ValueError, match="noise_structure"):
        GRRLModel(dataclasses_replace(small_model().cfg, noise_structure="diagonal"))
