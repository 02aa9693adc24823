"""The offline critic: TD3+BC loss by hand, distributional TD on a chain MDP with known values,
and the progress filter's precision/recall on synthetic demonstrations with injected retries."""

import numpy as np
import pytest
import torch

from grrl_critic.categorical import mean_value, project, support
from grrl_critic.filtering import FilterConfig, keep_mask, precision_recall, window_drop
from grrl_critic.td3bc import (CriticTrainer, TD3BCConfig, at_offset, clipped_double_probs,
                               distributional_td_loss, td3bc_actor_loss)
from grrl_policy.experts import ExpertConfig
from grrl_policy.model import ModelConfig
from grrl_policy.tiny_backbone import TinyBackboneConfig


def test_td3bc_actor_loss_matches_a_hand_computed_case():
    q = torch.tensor([0.5, 1.5])                      # mean|Q| = 1 -> lambda = alpha = 2.5
    pi = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 2.0], [9.0, 9.0]]])
    a = torch.zeros(2, 2, 2)
    mask = torch.tensor([[True, True], [True, False]])  # the (9, 9) step is padding
    # BC: squared errors over valid steps (1 + 0 + 4) / (3 steps * 2 dims) = 5/6
    expected = -2.5 * 1.0 + 5.0 / 6.0
    assert td3bc_actor_loss(q, pi, a, mask, alpha=2.5).item() == pytest.approx(expected)


def test_distributional_pieces_by_hand():
    atoms = support(3)                                # 0, 0.5, 1
    logits = torch.log(torch.tensor([[[0.2, 0.3, 0.5]], [[0.6, 0.3, 0.1]]]))   # 2 critics, B=1
    # the second critic's mean (0.25) is lower than the first's (0.65): it is the target
    torch.testing.assert_close(clipped_double_probs(logits, atoms), torch.tensor([[0.6, 0.3, 0.1]]))
    target = torch.tensor([[0.0, 1.0, 0.0]])
    # CE = -log p(0.5) for each critic: -log 0.3 twice
    assert distributional_td_loss(logits, target).item() == pytest.approx(-2 * np.log(0.3), rel=1e-5)
    x = torch.arange(2 * 3 * 4 * 1.0).view(2, 3, 4, 1)   # (n_critics, B, k, n)
    torch.testing.assert_close(at_offset(x, torch.tensor([1, 4, 2])),
                               torch.stack([x[:, 0, 0], x[:, 1, 3], x[:, 2, 1]], dim=1))


def test_distributional_td_converges_to_the_true_values_on_a_chain_mdp():
    """Chain s_0 .. s_{N-1}; from s_i a chunk of j steps reaches s_{i+j} (or the end). From
    the stochastic state s_3 the trajectory succeeds with probability 0.6 and otherwise ends
    in failure. True values: V(s_i) = p_i gamma^(N-i), with p_i = 0.6 before s_4, 1 after."""
    torch.manual_seed(0)
    N, k, gamma, bins = 10, 3, 0.9, 101
    atoms = support(bins)
    logits = torch.zeros(2, N, k, bins, requires_grad=True)   # tabular twin critics
    target_logits = logits.detach().clone()
    opt = torch.optim.Adam([logits], lr=0.05)
    p = np.where(np.arange(N) <= 3, 0.6, 1.0)
    for step in range(3000):
        i = torch.randint(0, N, (256,))
        j = torch.randint(1, k + 1, (256,))
        nxt = (i + j).clamp(max=N)
        crosses = (i <= 3) & (nxt > 3)
        fail = crosses & (torch.rand(256) > 0.6)          # the coin at s_3
        done = (nxt >= N) | fail
        success = (nxt >= N) & ~fail
        reward = torch.where(success, gamma ** (N - i).float(), torch.zeros(256))   # eq. (1)
        with torch.no_grad():
            nl = target_logits[:, nxt.clamp(max=N - 1), -1]                        # full chunk
            tgt = project(clipped_double_probs(nl, atoms), reward, done, gamma ** j.float(), atoms)
        pred = at_offset(logits[:, i], j)
        loss = distributional_td_loss(pred, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        target_logits.lerp_(logits.detach(), 0.05)
    v = mean_value(logits.detach()[:, :, -1].softmax(-1), atoms).mean(0).numpy()
    # value of the full chunk from s_i = value of s_{i+k}, reached after k steps
    true = np.array([(p[i] if i + k > 3 else 0.6) * gamma ** (N - i) for i in range(N)])
    np.testing.assert_allclose(v, true, atol=0.04)


# ------------------------------------------------------------------ synthetic demonstrations
def synthetic_demos(n: int, rng: np.random.Generator, step: float = 0.1):
    """2-D demonstrations: the hand moves x from 0 to 1 by +step per sample (y = 0). Injected
    mistakes, like a teleoperator's missed eyelet: half the demonstrations drift sideways to
    y = 0.2 over 2 samples (the mistake), then a retry keyframe marks where the operator
    starts correcting, and the hand comes back over 2 samples; 20% give up half-way (failure).
    Returns episodes as (positions (T+1, 2), success, retry keyframes, mistake (T,) per sample:
    True for the samples that move away from the path)."""
    eps = []
    for _ in range(n):
        p, ps, bad, frames = np.zeros(2), [np.zeros(2)], [], []
        miss_at = int(rng.integers(4, 7)) if rng.random() < 0.5 else -1
        give_up = rng.random() < 0.2
        t = 0
        while p[0] < 1.0 - 1e-9:
            if t == miss_at:
                for dy in (0.1, 0.1, -0.1, -0.1):
                    if dy < 0 and not frames:
                        frames.append(len(ps) - 1)        # the retry begins here
                    p = p + [0.0, dy]
                    ps.append(p.copy())
                    bad.append(dy > 0)
            if give_up and p[0] >= 0.5:
                break
            p = p + [step, 0.0]
            ps.append(p.copy())
            bad.append(False)
            t += 1
        eps.append((np.array(ps), not give_up, frames, np.array(bad)))
    return eps


def chunk_of(ps: np.ndarray, t: int, T: int, k: int) -> list:
    return [list(ps[min(t + 1 + i, T)]) for i in range(k)]


def make_batches(eps, k: int, gamma: float, rng: np.random.Generator, B: int):
    """Samples in grrl_trainer.data.batches' layout: state obs = (x, y, 0), proprio = (x, y),
    actions = the next k positions (padded), hindsight failures at the retry keyframes."""
    segments = []
    for e, (ps, success, frames, _) in enumerate(eps):
        segments.append((e, len(ps) - 1, success, False))
        segments += [(e, m + 1, False, True) for m in frames if m > 0]
    index = [(s, t) for s in segments for t in range(s[1])]

    def sample(seg, t, j):
        e, T, success, hindsight = seg
        ps = eps[e][0]
        done = t + j >= T
        tn = min(t + j, T - 1)
        return dict(p=list(ps[t]), acts=chunk_of(ps, t, T, k), np=list(ps[tn]), nacts=chunk_of(ps, tn, T, k),
                    reward=gamma ** (T - t) if done and success else 0.0, done=done, j=j,
                    mask=[t + i < T for i in range(k)], t=t, T=T, success=success, hindsight=hindsight)

    def batch():
        picks = rng.integers(0, len(index), B)
        ss = [sample(*index[p], int(rng.integers(1, k + 1))) for p in picks]
        f = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
        return {"obs": {"instruction": ["go"] * B, "state": f([s["p"] + [0.0] for s in ss])},
                "next_obs": {"instruction": ["go"] * B, "state": f([s["np"] + [0.0] for s in ss])},
                "proprio": f([s["p"] for s in ss]), "next_proprio": f([s["np"] for s in ss]),
                "actions": f([s["acts"] for s in ss]), "next_actions": f([s["nacts"] for s in ss]),
                "mask": torch.tensor([s["mask"] for s in ss]), "reward": f([s["reward"] for s in ss]),
                "done": torch.tensor([s["done"] for s in ss]), "offset": torch.tensor([s["j"] for s in ss]),
                "timestep": torch.tensor([s["t"] for s in ss]), "length": torch.tensor([s["T"] for s in ss]),
                "success": torch.tensor([s["success"] for s in ss]),
                "hindsight": torch.tensor([s["hindsight"] for s in ss])}
    return batch


def episode_progress(trainer: CriticTrainer, ps: np.ndarray, k: int) -> np.ndarray:
    T = len(ps) - 1
    state = torch.tensor([list(p) + [0.0] for p in ps[:T]], dtype=torch.float32)
    acts = torch.tensor([chunk_of(ps, t, T, k) for t in range(T)], dtype=torch.float32)
    return trainer.progress({"instruction": ["go"] * T, "state": state}, state[:, :2], acts).numpy()


def small_model(k: int) -> ModelConfig:
    return ModelConfig(name="test", tiny=TinyBackboneConfig(
        width=32, layers=2, heads=2, kv_heads=1, head_dim=16, text_encoder="hashed",
        observation="state", state_dim=3, state_tokens=1),
        expert=ExpertConfig(width=32, heads=2, mlp_ratio=2.0), horizon=k, action_dim=2,
        proprio_dim=2, value_bins=41)


@pytest.mark.slow
@pytest.mark.parametrize("target_actions", ["dataset", "actor"])
def test_filter_finds_injected_mistakes_with_a_trained_critic(target_actions):
    """Train the real critic (TD3+BC, distributional, Q-chunked) on synthetic demonstrations
    with injected mistakes and hindsight failures at their retry keyframes, filter with the
    delta rule, and measure precision/recall of the removed samples against the samples whose
    chunk contains a step of a mistake. Random removal of as many samples would have a
    precision equal to the base rate (about 0.17)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    k, gamma = 3, 0.95
    eps = synthetic_demos(40, rng)
    trainer = CriticTrainer(small_model(k), TD3BCConfig(gamma=gamma, target_actions=target_actions,
                                                        lr=1e-3, tau=0.02))
    batch = make_batches(eps, k, gamma, rng, B=128)
    for _ in range(800):
        trainer.update(batch())
    removed, truth = [], []
    for ps, success, frames, bad in eps:
        rho = episode_progress(trainer, ps, k)
        removed.append(~keep_mask(rho, FilterConfig(delta=0.02, horizon=k, drop="peak_to_trough")))
        # truly suboptimal: the chunk a_{t:t+k} contains a step of a mistake
        truth.append(np.array([bad[t:t + k].any() for t in range(len(ps) - 1)]))
    removed, truth = np.concatenate(removed), np.concatenate(truth)
    precision, recall = precision_recall(removed, truth)
    assert precision > 2.5 * truth.mean() and precision > 0.4, (precision, recall, truth.mean())
    assert recall > 0.5, (precision, recall)


def test_window_drop_rules():
    rho = np.array([0.1, 0.2, 0.15, 0.12, 0.3, 0.4])
    np.testing.assert_allclose(window_drop(rho, 3, "peak_to_trough"), [0.08, 0.08, 0.03, 0, 0, 0])
    np.testing.assert_allclose(window_drop(rho, 3, "consecutive"), [0.05, 0.05, 0.03, 0, 0, 0])
    assert list(keep_mask(rho, FilterConfig(delta=0.04, horizon=3, drop="peak_to_trough"))) == [False, False, True, True, True, True]
    # shortfall: a clean trajectory's rho = gamma^(T-t) has none; a flat stretch (a pause) has
    # (1/gamma^n - 1) rho after n steps, which the plain drop does not see
    g, T = 0.9, 8
    clean = g ** (T - np.arange(T + 1))
    np.testing.assert_allclose(window_drop(clean, 3, "shortfall", g), 0, atol=1e-12)
    paused = np.r_[clean[:4], [clean[3]] * 3, clean[4:]]
    assert window_drop(paused, 3, "peak_to_trough").max() == 0
    sf = window_drop(paused, 3, "shortfall", g)
    assert sf[3] == pytest.approx(clean[3] * (g ** -3 - 1)) and sf[0] > 0 and sf[-3:].max() < 1e-12
    # relative drops: the same 10% fall scores the same early (rho 0.2) and late (rho 0.9)
    early = window_drop(np.array([0.2, 0.18, 0.2]), 2, "log_drop")[0]
    late = window_drop(np.array([0.9, 0.81, 0.9]), 2, "log_drop")[0]
    assert early == pytest.approx(late) == pytest.approx(-np.log(0.9))
    np.testing.assert_allclose(window_drop(clean, 3, "log_shortfall", g), 0, atol=1e-12)
    lsf = window_drop(paused, 3, "log_shortfall", g)
    assert lsf[3] == pytest.approx(-3 * np.log(g)) and lsf[-3:].max() < 1e-12
    assert window_drop(np.array([0.5, 0.0]), 1, "log_drop", rho_floor=0.05)[0] == \
        pytest.approx(np.log(10))
    with pytest.raises(ValueError, match="drop must be one of"):
        FilterConfig(drop="sideways")
    with pytest.raises(ValueError, match="non-finite"):
        window_drop(np.array([0.1, np.nan]), 2)


def test_regression_and_time_baselines_train_through_the_same_interface():
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    eps = synthetic_demos(10, rng)
    batch = make_batches(eps, 3, 0.9, rng, B=64)
    for kind in ("regression", "time"):
        trainer = CriticTrainer(small_model(3), TD3BCConfig(kind=kind, gamma=0.9))
        assert trainer.model.cfg.value_bins == 1
        losses = [trainer.update(batch())["critic_loss"] for _ in range(60)]
        assert np.mean(losses[-10:]) < np.mean(losses[:10])
