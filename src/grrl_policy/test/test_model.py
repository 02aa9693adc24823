"""The GR-RL model: flow matching, prefix reuse, experts' shapes and masks, bad input."""
import dataclasses

import pytest
import torch

from grrl_policy.experts import ExpertConfig
from grrl_policy.model import GRRLModel, ModelConfig, preset
from grrl_policy.tiny_backbone import TinyBackboneConfig


def small_config(**kw) -> ModelConfig:
    """A few-thousand-parameter model on simulator state: fast enough to train in a test."""
    base = ModelConfig(name="test", tiny=TinyBackboneConfig(
        width=32, layers=2, heads=2, kv_heads=1, head_dim=16, text_encoder="hashed",
        observation="state", state_dim=3, state_tokens=2),
        expert=ExpertConfig(width=32, heads=2, mlp_ratio=2.0), horizon=4, action_dim=2,
        proprio_dim=2, flow_steps=10, value_bins=11)
    return dataclasses.replace(base, **kw)


def state_obs(B: int, state: torch.Tensor | None = None) -> dict:
    return {"instruction": ["lace the left end"] * B,
            "state": state if state is not None else torch.zeros(B, 3)}


def test_flow_matching_learns_two_modes():
    """Actions are +1 or -1 (whole chunk) with equal probability for the same observation:
    a regression policy would average to 0; the flow policy must produce both modes."""
    torch.manual_seed(0)
    model = GRRLModel(small_config())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    B = 128
    obs, proprio = state_obs(B), torch.zeros(B, 2)
    for _ in range(500):
        sign = torch.randint(0, 2, (B, 1, 1)).float() * 2 - 1
        loss = model.bc_loss(obs, proprio, sign.expand(B, 4, 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    actions, _ = model.act(state_obs(400), torch.zeros(400, 2), generator=torch.Generator().manual_seed(1))
    mean = actions.mean(dim=(1, 2))
    pos, neg = (mean > 0.5).float().mean().item(), (mean < -0.5).float().mean().item()
    assert pos > 0.25 and neg > 0.25, (pos, neg)
    assert pos + neg > 0.9, "samples between the modes"       # not averaged to 0
    near = torch.minimum((actions - 1).abs(), (actions + 1).abs()).median().item()
    assert near < 0.2


def test_cached_and_uncached_prefix_give_identical_actions():
    torch.manual_seed(0)
    model = GRRLModel(preset("tiny", horizon=16)).eval()
    for block in model.action_expert.blocks:       # adaLN-zero starts as the identity
        torch.nn.init.normal_(block.ada.weight, std=0.1)
    obs = {"instruction": ["lace the left end through the right eyelet", "pull the lace"],
           "images": torch.randint(0, 256, (2, 3, 128, 128, 3), dtype=torch.uint8)}
    proprio = torch.randn(2, 16)
    noise = torch.randn(2, 16, 16)
    cached, eps1 = model.act(obs, proprio, noise=noise, reuse_prefix=True)
    uncached, eps2 = model.act(obs, proprio, noise=noise, reuse_prefix=False)
    assert torch.equal(eps1, noise) and torch.equal(eps2, noise)
    assert torch.equal(cached, uncached)
    # and the actions do depend on the images through the prefix
    other = dict(obs, images=torch.randint(0, 256, (2, 3, 128, 128, 3), dtype=torch.uint8))
    changed, _ = model.act(other, proprio, noise=noise)
    assert not torch.allclose(changed, cached)


def test_sampling_is_deterministic_given_noise_and_batched():
    torch.manual_seed(0)
    model = GRRLModel(small_config()).eval()
    state = torch.randn(3, 3)
    noise = torch.randn(3, 4, 2)
    batched, _ = model.act(state_obs(3, state), torch.zeros(3, 2), noise=noise)
    for i in range(3):
        single, _ = model.act(state_obs(1, state[i:i + 1]), torch.zeros(1, 2), noise=noise[i:i + 1])
        torch.testing.assert_close(single[0], batched[i], atol=1e-5, rtol=1e-5)


def test_experts_attend_only_to_latter_half_of_backbone():
    torch.manual_seed(0)
    model = GRRLModel(small_config(tiny=dataclasses.replace(small_config().tiny, layers=4))).eval()
    prefix = model.encode(state_obs(1))
    assert len(prefix.keys) == 2 == len(model.action_expert.blocks)
    # perturbing only the last backbone layer changes the second exported layer's keys only
    with torch.no_grad():
        before = model.encode(state_obs(1))
        model.backbone.blocks[3].kv.bias.add_(1.0)
        after = model.encode(state_obs(1))
    assert torch.equal(before.keys[0], after.keys[0])
    assert not torch.equal(before.keys[1], after.keys[1])


def test_critic_is_causal_over_the_chunk_and_outputs_distributions():
    torch.manual_seed(0)
    model = GRRLModel(small_config()).eval()
    prefix = model.encode(state_obs(2))
    proprio, actions = torch.zeros(2, 2), torch.randn(2, 4, 2)
    logits = model.critic_logits(prefix, proprio, actions)
    assert logits.shape == (2, 2, 4, 11)                 # (n_critics, B, k, bins)
    changed = actions.clone()
    changed[:, 2] += 1.0
    logits2 = model.critic_logits(prefix, proprio, changed)
    # Q-chunking: step j sees a_{t:t+j+1} only
    assert torch.allclose(logits[:, :, :2], logits2[:, :, :2], atol=1e-6)
    assert not torch.allclose(logits[:, :, 2:], logits2[:, :, 2:])
    eps = model.predict_noise(prefix, proprio)
    assert eps.shape == (2, 4, 2)
    assert model.noise_critic_logits(prefix, proprio, eps).shape == (2, 4, 11)


def test_parameter_groups_are_disjoint_and_cover_the_trainable_model():
    model = GRRLModel(small_config())
    groups = [model.policy_parameters(), model.critic_parameters(), model.noise_parameters(),
              model.noise_critic_parameters()]
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}


def test_normalisation_round_trip_in_physical_units():
    torch.manual_seed(0)
    model = GRRLModel(small_config()).eval()
    model.normalizer.set("action", torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0]))
    a = torch.randn(2, 4, 2)
    back = model.normalizer.denorm("action", model.normalizer.norm("action", a))
    torch.testing.assert_close(back, a)


@pytest.mark.parametrize("images, message", [
    (torch.zeros(1, 3, 64, 64, 3, dtype=torch.uint8), "images must be uint8"),
    (torch.zeros(1, 3, 128, 128, 3, dtype=torch.float32), "images must be uint8"),
    (torch.zeros(1, 2, 128, 128, 3, dtype=torch.uint8), "images must be uint8"),
])
def test_bad_images_are_refused(images, message):
    model = GRRLModel(preset("tiny", tiny=TinyBackboneConfig(text_encoder="hashed")))
    with pytest.raises(ValueError, match=message):
        model.encode({"instruction": ["x"], "images": images})


def test_config_round_trip_and_unknown_fields():
    cfg = preset("tiny-state")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config fields"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("huge")


def test_qwen_path_runs_the_same_code_with_a_tiny_random_qwen():
    """The large configuration's code path (Qwen2.5-VL backbone, 3 cameras) on a tiny random
    Qwen2.5-VL: prefix from the latter half of its layers, cached == uncached, all heads."""
    from grrl_policy.model import QwenConfig
    from test_qwen_backbone import TINY_CONFIG
    torch.manual_seed(0)
    cfg = preset("qwen2.5-vl-3b", qwen=QwenConfig(image_size=56, dtype="float32",
                                                  random_config=TINY_CONFIG),
                 expert=ExpertConfig(width=64, heads=4), horizon=8)
    model = GRRLModel(cfg).eval()
    assert model.backbone.n_prefix_layers == 2 == len(model.action_expert.blocks)
    for block in model.action_expert.blocks:
        torch.nn.init.normal_(block.ada.weight, std=0.1)
    obs = {"instruction": ["pick up the red cube", "fold towel"],
           "images": torch.randint(0, 256, (2, 3, 56, 56, 3), dtype=torch.uint8)}
    proprio, noise = torch.randn(2, 16), torch.randn(2, 8, 16)
    cached, _ = model.act(obs, proprio, noise=noise)
    uncached, _ = model.act(obs, proprio, noise=noise, reuse_prefix=False)
    assert cached.shape == (2, 8, 16) and torch.isfinite(cached).all()
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-5)
    prefix = model.encode(obs)
    assert model.critic_logits(prefix, proprio, cached).shape == (2, 2, 8, 51)
    assert model.predict_noise(prefix, proprio).shape == (2, 8, 16)
    loss = model.bc_loss(obs, proprio, cached)
    loss.backward()
    assert model.backbone.model.language_model.layers[-1].self_attn.k_proj.weight.grad is not None
    # the last layer contributes only its keys/values to the experts: its queries get no gradient
    assert model.backbone.model.language_model.layers[-1].self_attn.q_proj.weight.grad is None


def test_delta_action_mode_round_trips_and_learns_relative_targets():
    """action_mode='delta': the experts see a - q; callers still use physical targets."""
    torch.manual_seed(0)
    model = GRRLModel(small_config(action_mode="delta")).eval()
    proprio, actions = torch.randn(3, 2), torch.randn(3, 4, 2)
    torch.testing.assert_close(model.decode_actions(model.encode_actions(actions, proprio), proprio), actions)
    # with identity statistics the normalised delta is exactly a - q
    torch.testing.assert_close(model.encode_actions(actions, proprio), actions - proprio[:, None])
    with pytest.raises(ValueError, match="action_mode"):
        GRRLModel(small_config(action_mode="relative"))
    with pytest.raises(ValueError, match="action_dim == proprio_dim"):
        GRRLModel(small_config(action_mode="delta", proprio_dim=3))


def test_pooled_instruction_is_one_token_that_tells_instructions_apart():
    torch.manual_seed(0)
    cfg = small_config()
    model = GRRLModel(dataclasses.replace(cfg, tiny=dataclasses.replace(cfg.tiny, text_pool=True)))
    obs = {"instruction": ["lace the left end", "lace the right end into the second eyelet"],
           "state": torch.zeros(2, 3)}
    prefix = model.encode(obs)
    assert prefix.mask.shape == (2, 1 + cfg.tiny.state_tokens) and prefix.mask.all()
    assert not torch.allclose(prefix.keys[-1][0], prefix.keys[-1][1])
    full = GRRLModel(cfg).encode(obs)
    assert full.mask.shape[1] > prefix.mask.shape[1]


def test_dropout_acts_in_training_only():
    cfg = small_config()
    cfg = dataclasses.replace(cfg, tiny=dataclasses.replace(cfg.tiny, dropout=0.5),
                              expert=dataclasses.replace(cfg.expert, dropout=0.5))
    torch.manual_seed(0)
    model = GRRLModel(cfg)
    with torch.no_grad():                  # (adaLN-zero blocks start as the identity)
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    proprio, noise = torch.zeros(1, 2), torch.randn(1, 4, 2)
    model.train()
    a = [model.sample_normalized(model.encode(state_obs(1)), proprio, noise) for _ in range(2)]
    assert not torch.allclose(a[0], a[1])
    model.eval()
    b = [model.sample_normalized(model.encode(state_obs(1)), proprio, noise) for _ in range(2)]
    torch.testing.assert_close(b[0], b[1])
