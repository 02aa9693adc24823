"""Online steering of the frozen flow policy in its noise space (paper section 3.3, after DSRL).

Frozen: the VLM backbone and the action DiT π_θ, a flow policy that is a deterministic function
π_θ(s | ε) of its initial noise ε (B, k, D) (normalised action space). Trained:

* the noise predictor π_θ'(s) → ε, by eq. (3):
      L(π_θ') = E_s[ −Q_φ'(s, ε) + c · max(½‖ε‖² − β, 0) ],   ε = π_θ'(s)
  (‖ε‖² over the whole chunk, k·D numbers; −Q_φ' is minus the mean of Q_φ''s categorical
  distribution). β defaults to ½·k·D, the expected ½‖ε‖² under N(0, I): ε may move anywhere
  inside the ball a typical Gaussian sample lies on, and is pulled back (hinge) beyond it.
  The norm alone lets single dimensions run where the flow never saw noise, so the predictor
  is also bounded per dimension, ε = b·tanh(u / b) (``ModelConfig.noise_bound``, 2.5; DSRL
  bounds its latent actions the same way), and exploration and target smoothing are clipped
  to the same bound; ``noise_bound=0`` leaves the penalty alone (the ablation).
  :func:`noise_statistics` reports where ε sits against N(0, I) per dimension;
* the noise-space critic Q_φ'(s, ε), distilled from the action critic by eq. (4):
      L(Q_φ') = CE( Q_φ'(s, ε), Q_φ(s, π_θ(s | ε)) ),   ε ~ N(0, I) w.p. ``noise_mix`` (0.5),
                                                         ε = π_θ'(s) otherwise,
  the target being Q_φ's full-chunk distribution (softmax, no gradient; twin critics reduced by
  ``distill_critics``), the prediction Q_φ''s full-chunk logits;
* the action critic Q_φ(s, a), distributional TD3 on the online transitions
  (s_t, a_t = the executed raw chunk, r, done, s_{t+j}):
      T Z = Proj_C51[ r + γ^j (1 − done) Z_target(s', a') ],
      a'  = π_θ(s' | π_θ'_target(s') + clip(N(0, σ²), −c_n, c_n))     (smoothing in ε-space)
  with clipped double Q on the distributions (per sample, the target critic with the lower
  mean) and the prediction read at chunk position j − 1 (the executed prefix a_{t:t+j}; the
  full chunk when j = k), exactly as the offline critic (:mod:`grrl_critic.td3bc`).

Before the first steered episode a critic-only warm-up fits Q_φ to the warm-up rollouts'
Monte-Carlo returns (``warmup_target='mc'``: the offline policy's own value, which those
rollouts measure; TD over 200-400 decisions to a single end-of-episode reward barely moves in
a few hundred updates) and distils Q_φ' from it.

The backbone prefix of s (and of s') is computed once per batch without gradient and shared by
every head. The three losses are computed from the same parameters, checked for finiteness
(:class:`DivergedError` before any step), and each steps its own parameter group: the noise
critic is frozen while the actor loss is built, so eq. (3) moves π_θ' alone, and eq. (4)'s
inputs and target carry no gradient, so it moves Q_φ' alone. The noise predictor and the target
networks (twin critics, noise predictor; Polyak ``tau``) update every ``policy_delay`` steps.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

from grrl_policy.keys import PROPRIO
from grrl_policy.model import NOISE_STRUCTURES, GRRLModel
from grrl_policy.prefix import Prefix

from .categorical import mean_value, project, support
from .td3bc import DivergedError, at_offset, clipped_double_probs, distributional_td_loss

log = logging.getLogger(__name__)

DISTILL_CRITICS = ("min", "mean")
WARMUP_TARGETS = ("mc", "td")
NOISE_INITS = ("zero", "checkpoint")

__all__ = ["SteeringConfig", "SteeringLearner", "DivergedError", "default_beta", "noise_penalty",
           "noise_actor_loss", "trusted_value", "noise_statistics", "mixed_noise",
           "noise_critic_loss"]


@dataclass
class SteeringConfig:
    """Hyper-parameters of online noise-space steering (section 3.3, eqs. (3) and (4))."""

    c: float = 1.0
    """eq. (3): coefficient of the penalty max(½‖ε‖² − β, 0)"""
    beta: float | None = 1.0
    """eq. (3): threshold on ½‖ε‖², a trust region around the flow's central chunk ε = 0 (the
    paper gives no value); None = ½·k·D (160 for the task-space recipe: k = 16, D = 20), the
    expected ½‖ε‖² of ε ~ N(0, I), under which the steered noise drifted off and the policy
    collapsed (docs/results/ladder)"""
    gamma: float = 0.99
    """discount per chunk step (bootstrap γ^offset)"""
    tau: float = 0.005
    """Polyak rate of the target critics and the target noise predictor"""
    critic_lr: float = 3e-4
    """Adam learning rate of the twin action critics Q_φ"""
    noise_lr: float = 1e-4
    """Adam learning rate of the noise predictor π_θ'"""
    noise_critic_lr: float = 3e-4
    """Adam learning rate of the noise critic Q_φ'"""
    noise_mix: float = 0.5
    """eq. (4): probability that the distillation noise is drawn from N(0, I) (else π_θ'(s))"""
    distill_critics: str = "min"
    """eq. (4) target from the twin critics: 'min' (per sample the lower-mean one) or 'mean'"""
    target_noise_std: float = 0.2
    """TD3 target smoothing: std of the Gaussian added to π_θ'_target(s') in ε-space (0 = off)"""
    target_noise_clip: float = 0.5
    """... clipped to ±target_noise_clip"""
    policy_delay: int = 2
    """noise-predictor and target updates every this many critic updates"""
    flow_steps: int = 0
    """Euler steps of π_θ(s | ε); 0 = the model's flow_steps"""
    grad_clip: float = 10.0
    """gradient-norm clip of each parameter group"""
    warmup_target: str = "mc"
    """target of the critic-only warm-up: 'mc', each transition's Monte-Carlo return (batches
    carry "mc_return"; the offline policy's own value, which the warm-up rollouts measure
    exactly), or 'td', the TD3 target from the first update (with eq. (1)'s reward only at the
    end of 200-400 decisions, 600 TD updates left Q_φ at AUROC 0.53: docs/results/ladder)"""
    noise_init: str = "zero"
    """the noise predictor of an offline checkpoint (never steered) at the start of online RL:
    'zero' zeroes its output layer, so steering starts at ε = 0 (the flow's central chunk) and
    explores around it; 'checkpoint' keeps its untrained weights (a random function of the
    state whose bias temporal ensembling cannot average out: 1 success in 36 steered episodes
    after 36 in 96 warm-up rollouts, docs/results/ladder)"""
    noise_bound: float | None = None
    """per-dimension bound of the steered ε (ModelConfig.noise_bound: b·tanh(u / b)); None =
    the checkpoint's, a number replaces it (0 = unbounded: only eq. (3)'s norm penalty)"""
    noise_structure: str | None = None
    """what the predictor steers (ModelConfig.noise_structure: 'full' k·D values, 'constant'
    one D-vector over the chunk); None = the checkpoint's"""
    actor_trust: float | None = None
    """eq. (3) kept to where the critics agree: where Q_φ'(s, π_θ'(s)) exceeds Q_φ of the chunk
    that ε decodes to (the distillation target) by more than this margin, the excess counts
    against the actor twice, so π_θ' is pushed back down Q_φ' there instead of further up
    (a hard stop alone overshoots: the predictor is shared across states and Adam carries
    momentum). None = off (the paper's eq. (3)). Online, the actor climbed an overestimate of
    Q_φ' that Q_φ did not share (Q_φ at the steered chunks fell while Q_φ' stayed high:
    docs/results/ladder)"""

    def __post_init__(self) -> None:
        if self.c < 0:
            raise ValueError(f"c must be >= 0, got {self.c}")
        if self.beta is not None and self.beta < 0:
            raise ValueError(f"beta must be >= 0 or None, got {self.beta}")
        if not 0.0 <= self.noise_mix <= 1.0:
            raise ValueError(f"noise_mix must be in [0, 1], got {self.noise_mix}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.policy_delay < 1:
            raise ValueError(f"policy_delay must be >= 1, got {self.policy_delay}")
        if self.flow_steps < 0:
            raise ValueError(f"flow_steps must be >= 0, got {self.flow_steps}")
        if self.target_noise_std < 0 or self.target_noise_clip < 0:
            raise ValueError("target_noise_std and target_noise_clip must be >= 0")
        if self.noise_structure is not None and self.noise_structure not in NOISE_STRUCTURES:
            raise ValueError(f"noise_structure must be one of {NOISE_STRUCTURES} or None, "
                             f"got {self.noise_structure!r}")
        if self.noise_bound is not None and not 0.0 <= self.noise_bound < float("inf"):
            raise ValueError(f"noise_bound must be finite and >= 0 or None, got {self.noise_bound}")
        if self.noise_init not in NOISE_INITS:
            raise ValueError(f"noise_init must be one of {NOISE_INITS}, got {self.noise_init!r}")
        if self.warmup_target not in WARMUP_TARGETS:
            raise ValueError(f"warmup_target must be one of {WARMUP_TARGETS}, "
                             f"got {self.warmup_target!r}")
        if self.actor_trust is not None and not self.actor_trust >= 0.0:
            raise ValueError(f"actor_trust must be >= 0 or None, got {self.actor_trust}")
        if self.distill_critics not in DISTILL_CRITICS:
            raise ValueError(f"distill_critics must be one of {DISTILL_CRITICS}, "
                             f"got {self.distill_critics!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SteeringConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown steering config fields {sorted(unknown)}")
        return cls(**d)


def default_beta(horizon: int, action_dim: int) -> float:
    """β = ½·k·D: the expected ½‖ε‖² of a chunk of standard normal noise (B, k, D)."""
    return 0.5 * horizon * action_dim


# ---------------------------------------------------------------- losses (pure functions)
def noise_penalty(eps: torch.Tensor, c: float, beta: float) -> torch.Tensor:
    """c · max(½‖ε‖² − β, 0) per sample: eps (B, k, D) (any trailing shape) → (B,)."""
    half_sq = 0.5 * eps.pow(2).flatten(1).sum(-1)
    return c * (half_sq - beta).clamp_min(0.0)


def noise_actor_loss(noise_q_mean: torch.Tensor, eps: torch.Tensor, c: float,
                     beta: float) -> torch.Tensor:
    """Eq. (3): mean over the batch of −Q_φ'(s, ε) + c · max(½‖ε‖² − β, 0).

    noise_q_mean: (B,) means of Q_φ''s categorical distributions at ε = π_θ'(s); eps (B, k, D)."""
    return (-noise_q_mean + noise_penalty(eps, c, beta)).mean()


def trusted_value(noise_q: torch.Tensor, action_q: torch.Tensor, margin: float) -> torch.Tensor:
    """What the actor climbs with ``actor_trust``: Q_φ'(s, ε) less twice its excess over
    Q_φ(s, a(ε)) + margin, (B,) each; ``action_q`` carries no gradient (no backprop through
    the flow), so beyond the margin the gradient in ε is that of −Q_φ'."""
    return noise_q - 2.0 * (noise_q - action_q.detach() - margin).clamp_min(0.0)


def noise_statistics(eps: torch.Tensor, bound: float = 0.0) -> dict[str, float]:
    """Where the steered ε (B, k, D) sits against the flow's training noise N(0, I), per
    dimension (k·D of them): ``eps_dim_mean_abs`` the mean over dimensions of |batch mean|
    (0 under N(0, I)), ``eps_dim_std`` the mean batch std (1), ``eps_abs_mean`` mean |ε_i|
    (0.80), ``eps_abs_max``, ``eps_out_frac`` the share of values beyond ±2.5 (1.2%) and, when
    bounded, ``eps_saturated_frac`` the share within 5% of the bound (tanh saturating)."""
    flat = eps.flatten(1).float()
    a = flat.abs()
    out = {"eps_dim_mean_abs": float(flat.mean(0).abs().mean()),
           "eps_dim_std": float(flat.std(0, unbiased=False).mean()),
           "eps_abs_mean": float(a.mean()), "eps_abs_max": float(a.max()),
           "eps_out_frac": float((a > 2.5).float().mean())}
    if bound > 0:
        out["eps_saturated_frac"] = float((a > 0.95 * bound).float().mean())
    return out


def mixed_noise(predicted: torch.Tensor, p_normal: float,
                generator: torch.Generator | None = None,
                structure: Callable[[torch.Tensor], torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (4)'s input noise: per sample, N(0, I) with probability ``p_normal``, else the
    predictor's ε. predicted: (B, k, D) (pass it detached). Returns (ε (B, k, D), from_normal
    (B,) bool). ``generator`` must live on predicted's device (None = the global RNG);
    ``structure`` restricts the normal draws to what the predictor steers
    (GRRLModel.structured_draw)."""
    B = predicted.shape[0]
    from_normal = torch.rand(B, generator=generator, device=predicted.device) < p_normal
    normal = torch.randn(predicted.shape, generator=generator, device=predicted.device,
                         dtype=predicted.dtype)
    if structure is not None:
        normal = structure(normal)
    eps = torch.where(from_normal.view(B, *([1] * (predicted.dim() - 1))), normal, predicted)
    return eps, from_normal


def noise_critic_loss(noise_logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Eq. (4): cross-entropy of Q_φ' logits (B, bins) against Q_φ's distributions (B, bins),
    averaged over the batch."""
    return distributional_td_loss(noise_logits[None], target_probs)


# ---------------------------------------------------------------- the learner
class SteeringLearner:
    """Trains π_θ', Q_φ' and Q_φ of a :class:`GRRLModel` online with its backbone and action DiT
    frozen; ``update(batch)`` is one step of all three, ``warm_up_critic(batch)`` one step of
    the critics only. Batches follow :mod:`grrl_trainer.data.batches` (obs, next_obs, proprio,
    next_proprio, actions in physical units, reward, done, offset); other keys (e.g. the
    rollout's ``noise``) are ignored."""

    def __init__(self, model: GRRLModel, cfg: SteeringConfig | None = None,
                 device: str | torch.device = "cpu"):
        self.cfg = cfg or SteeringConfig()
        self.device = torch.device(device)
        self.model = model.to(self.device)
        if self.cfg.noise_bound is not None:       # saved with the checkpoints this run writes
            model.cfg.noise_bound = float(self.cfg.noise_bound)
        if self.cfg.noise_structure is not None:   # the same
            model.cfg.noise_structure = self.cfg.noise_structure
        mc = model.cfg
        self.beta = (float(self.cfg.beta) if self.cfg.beta is not None
                     else default_beta(mc.horizon, mc.action_dim))
        """eq. (3)'s threshold in effect (the config's, or ½·k·D)"""
        self.frozen = (model.backbone, model.action_expert)
        for m in self.frozen:
            m.requires_grad_(False)
        self.heads = {"critics": model.critics, "noise_predictor": model.noise_predictor,
                      "noise_critic": model.noise_critic}
        for m in self.heads.values():
            m.requires_grad_(True)
        self._set_modes()
        self.critics_target = copy.deepcopy(model.critics).requires_grad_(False)
        self.noise_target = copy.deepcopy(model.noise_predictor).requires_grad_(False)
        self.opt_critic = torch.optim.Adam(model.critic_parameters(), lr=self.cfg.critic_lr)
        self.opt_noise = torch.optim.Adam(model.noise_parameters(), lr=self.cfg.noise_lr)
        self.opt_noise_critic = torch.optim.Adam(model.noise_critic_parameters(), lr=self.cfg.noise_critic_lr)
        self.atoms = support(mc.value_bins, device=self.device)
        self.updates = 0

    @torch.no_grad()
    def start_noise_predictor(self) -> None:
        """Online RL of an offline checkpoint begins here: with ``noise_init='zero'`` the noise
        predictor's output layer (and its target's) becomes zero, so that π_θ'(s) = 0."""
        if self.cfg.noise_init != "zero":
            return
        for net in (self.model.noise_predictor, self.noise_target):
            net.head.weight.zero_()
            net.head.bias.zero_()

    def _set_modes(self) -> None:
        """Frozen modules in eval mode, trained heads in train mode (re-applied every step in
        case a caller toggled the model's mode)."""
        for m in self.frozen:
            m.eval()
        for m in self.heads.values():
            m.train()

    def policy_model(self) -> GRRLModel:
        """The model to checkpoint: the same GRRLModel, its heads updated in place."""
        return self.model

    # -- pieces --------------------------------------------------------------------------
    def values(self, logits: torch.Tensor) -> torch.Tensor:
        """(…, bins) logits → (…) means of the categorical distributions."""
        return mean_value(logits.softmax(-1), self.atoms)

    def _steps(self) -> int | None:
        return self.cfg.flow_steps or None

    def _target_critic_logits(self, prefix: Prefix, proprio: torch.Tensor,
                              actions: torch.Tensor) -> torch.Tensor:
        """The target twins' (n_critics, B, k, bins) logits for physical-unit chunks."""
        nz = self.model.normalizer
        p, a = nz.norm("proprio", proprio), self.model.encode_actions(actions, proprio)
        return torch.stack([c(prefix, p, a) for c in self.critics_target])

    @torch.no_grad()
    def steered_actions(self, prefix: Prefix, proprio: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """π_θ(s | ε) in physical units (B, k, D), without gradient (the DiT is frozen)."""
        m = self.model
        return m.decode_actions(m.sample_normalized(prefix, proprio, eps, self._steps()), proprio)

    def td_objective(self, b: dict, prefix: Prefix, next_prefix: Prefix) -> tuple[torch.Tensor, torch.Tensor]:
        """Distributional TD3 loss of the twin critics on the executed chunks, and their
        (n_critics, B, bins) predicted logits at position offset − 1."""
        cfg, model = self.cfg, self.model
        if not torch.isfinite(b["reward"]).all():
            raise ValueError("the batch holds non-finite rewards")
        with torch.no_grad():
            eps_next = self.noise_target(next_prefix, model.normalizer.norm(PROPRIO, b["next_proprio"]))
            if cfg.target_noise_std > 0:
                draw = model.structured_draw(torch.randn_like(eps_next))
                smooth = (draw * cfg.target_noise_std).clamp(-cfg.target_noise_clip,
                                                             cfg.target_noise_clip)
                eps_next = model.clip_noise(eps_next + smooth)
            a_next = self.steered_actions(next_prefix, b["next_proprio"], eps_next)
            next_out = self._target_critic_logits(next_prefix, b["next_proprio"], a_next)[:, :, -1]
            discount = cfg.gamma ** b["offset"].to(next_out.dtype)
            target_probs = project(clipped_double_probs(next_out, self.atoms), b["reward"].to(next_out.dtype),
                                   b["done"], discount, self.atoms)
        logits = at_offset(model.critic_logits(prefix, b["proprio"], b["actions"]), b["offset"])
        return distributional_td_loss(logits, target_probs), logits

    def mc_objective(self, b: dict, prefix: Prefix) -> tuple[torch.Tensor, torch.Tensor]:
        """The warm-up's loss of the twin critics: cross-entropy of their logits at position
        offset − 1 against each transition's Monte-Carlo return ("mc_return" (B,)) projected on
        the atoms; and the (n_critics, B, bins) logits."""
        if "mc_return" not in b:
            raise ValueError("warmup_target 'mc' needs batches with Monte-Carlo returns "
                             "(ReplayBuffers(gamma=...))")
        g = b["mc_return"].to(self.atoms.dtype)
        if not torch.isfinite(g).all():
            raise ValueError("the batch holds non-finite returns")
        point = torch.zeros(len(g), self.atoms.numel(), dtype=g.dtype, device=g.device)
        point[:, 0] = 1.0                       # r + 0·Z: the projection of the return itself
        target = project(point, g, torch.ones_like(g, dtype=torch.bool), 0.0, self.atoms)
        logits = at_offset(self.model.critic_logits(prefix, b["proprio"], b["actions"]), b["offset"])
        return distributional_td_loss(logits, target), logits

    @torch.no_grad()
    def action_critic_probs(self, prefix: Prefix, proprio: torch.Tensor,
                            eps: torch.Tensor) -> torch.Tensor:
        """What Q_φ says of the chunk ε decodes to: (B, bins) probabilities of the full chunk,
        the twins combined by ``distill_critics`` (eq. (4)'s target for Q_φ'(s, ε))."""
        actions = self.steered_actions(prefix, proprio, eps)
        q_logits = self.model.critic_logits(prefix, proprio, actions)[:, :, -1]     # (n_c, B, bins)
        if self.cfg.distill_critics == "min":
            return clipped_double_probs(q_logits, self.atoms)
        return q_logits.softmax(-1).mean(0)

    def distill_objective(self, prefix: Prefix, proprio: torch.Tensor,
                          eps_predicted: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. (4): Q_φ' distilled from Q_φ at mixed noise (gradient to Q_φ' only)."""
        model = self.model
        with torch.no_grad():
            eps, from_normal = mixed_noise(eps_predicted.detach(), self.cfg.noise_mix,
                                           structure=model.structured_draw)
            target_probs = self.action_critic_probs(prefix, proprio, eps)
        logits = model.noise_critic_logits(prefix, proprio, eps)[:, -1]
        loss = noise_critic_loss(logits, target_probs)
        with torch.no_grad():
            stats = {"distill_target_mean": float(mean_value(target_probs, self.atoms).mean()),
                     "distill_normal_frac": float(from_normal.float().mean())}
        return loss, stats

    def actor_objective(self, prefix: Prefix, proprio: torch.Tensor,
                        grad: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. (3) at ε = π_θ'(s): (loss, ε (B, k, D), Q_φ' means (B,)). The noise critic is
        frozen while the graph is built, so the loss differentiates into π_θ' alone. With
        ``actor_trust`` the actor climbs :func:`trusted_value` instead of Q_φ'."""
        model = self.model
        with torch.set_grad_enabled(grad):
            eps = model.predict_noise(prefix, proprio)
            nc = model.noise_critic_parameters()
            for p in nc:
                p.requires_grad_(False)
            try:
                q = self.values(model.noise_critic_logits(prefix, proprio, eps)[:, -1])
            finally:
                for p in nc:
                    p.requires_grad_(True)
            climb = q
            if self.cfg.actor_trust is not None:
                with torch.no_grad():
                    q_action = mean_value(self.action_critic_probs(prefix, proprio, eps.detach()),
                                          self.atoms)
                climb = trusted_value(q, q_action, self.cfg.actor_trust)
            loss = noise_actor_loss(climb, eps, self.cfg.c, self.beta)
        return loss, eps, q

    @torch.no_grad()
    def transition_values(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """What the critics think of recorded transitions: Q_φ of the executed chunk prefix
        (the lower-mean twin at position offset − 1) and Q_φ' of the recorded initial noise
        (full chunk), each (B,). Batches as for :meth:`update` plus "noise" (B, k, D)."""
        self.model.eval()
        try:
            b = {k: self._to(v) for k, v in batch.items()}
            prefix = self.model.encode(b["obs"])
            logits = at_offset(self.model.critic_logits(prefix, b["proprio"], b["actions"]),
                               b["offset"])
            q = mean_value(clipped_double_probs(logits, self.atoms), self.atoms)
            q_noise = self.values(self.model.noise_critic_logits(prefix, b["proprio"], b["noise"])[:, -1])
        finally:
            self._set_modes()
        return q, q_noise

    # -- steps ---------------------------------------------------------------------------
    def update(self, batch: dict) -> dict[str, float]:
        """One online step: Q_φ (TD3), Q_φ' (eq. 4), and every ``policy_delay`` steps π_θ'
        (eq. 3) and the targets. Returns metrics; raises DivergedError without stepping."""
        return self._step(batch, actor=True)

    def warm_up_critic(self, batch: dict) -> dict[str, float]:
        """Critic warm-up before online training: Q_φ (TD3) and the Q_φ' distillation only;
        π_θ' is untouched (targets still follow the critics every ``policy_delay`` steps)."""
        return self._step(batch, actor=False)

    def _step(self, batch: dict, actor: bool) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        self._set_modes()
        b = {k: self._to(v) for k, v in batch.items()}
        with torch.no_grad():
            prefix = model.encode(b["obs"])
            next_prefix = model.encode(b["next_obs"])
        step_actor = actor and (self.updates + 1) % cfg.policy_delay == 0
        if not actor and cfg.warmup_target == "mc":
            td_loss, q_logits = self.mc_objective(b, prefix)
        else:
            td_loss, q_logits = self.td_objective(b, prefix, next_prefix)
        actor_loss, eps, noise_q = self.actor_objective(prefix, b["proprio"], grad=step_actor)
        distill_loss, distill_stats = self.distill_objective(prefix, b["proprio"], eps.detach())
        losses = {"critic_loss": td_loss, "noise_critic_loss": distill_loss, "noise_actor_loss": actor_loss}
        for name, loss in losses.items():
            if not torch.isfinite(loss):
                raise DivergedError(f"{name} is {loss.item()} at update {self.updates}")
        groups = [(self.opt_critic, model.critic_parameters(), "critic"),
                  (self.opt_noise_critic, model.noise_critic_parameters(), "noise_critic")]
        total = td_loss + distill_loss
        if step_actor:
            groups.append((self.opt_noise, model.noise_parameters(), "noise"))
            total = total + actor_loss
        for opt, _, _ in groups:
            opt.zero_grad(set_to_none=True)
        total.backward()      # the groups' graphs are disjoint: each gets its own loss's gradient
        metrics: dict[str, float] = {}
        for opt, params, name in groups:
            metrics[f"{name}_grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            opt.step()
        self.updates += 1
        if self.updates % cfg.policy_delay == 0:
            self._soft_update()
        with torch.no_grad():
            norms = eps.detach().flatten(1).norm(dim=-1)
            half_sq = 0.5 * norms.pow(2)
            metrics.update({name: float(loss.detach()) for name, loss in losses.items()})
            metrics.update(distill_stats)
            metrics.update(noise_statistics(eps.detach(), model.cfg.noise_bound))
            metrics.update({
                "eps_norm_mean": float(norms.mean()),
                "eps_norm_std": float(norms.std(unbiased=False)),
                "penalty_frac": float((half_sq > self.beta).float().mean()),
                "q_mean": float(self.values(q_logits).mean()),
                "noise_q_mean": float(noise_q.detach().mean()),
                "actor_updated": float(step_actor),
            })
            if step_actor:
                # how far Q_φ' at the actor's ε runs ahead of Q_φ at the chunk it decodes to
                q_action = mean_value(self.action_critic_probs(prefix, b["proprio"], eps.detach()),
                                      self.atoms)
                gap = noise_q.detach() - q_action
                metrics["noise_q_gap"] = float(gap.mean())
                if cfg.actor_trust is not None:
                    metrics["actor_trusted_frac"] = float((gap <= cfg.actor_trust).float().mean())
        return metrics

    @torch.no_grad()
    def _soft_update(self) -> None:
        tau = self.cfg.tau
        for net, tgt in ((self.model.critics, self.critics_target),
                         (self.model.noise_predictor, self.noise_target)):
            for p, tp in zip(net.parameters(), tgt.parameters()):
                tp.lerp_(p, tau)
            for bf, tb in zip(net.buffers(), tgt.buffers()):
                tb.copy_(bf)

    def _to(self, v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.to(self.device)
        if isinstance(v, dict):
            return {k: self._to(x) for k, x in v.items()}
        return v

    # -- persistence ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What the learner trains (heads, targets, optimizers, step count, config): tensors and
        primitive containers, loadable with ``torch.load(weights_only=True)``. The frozen
        backbone and DiT are not included; they live in the policy checkpoint."""
        return {"heads": {name: m.state_dict() for name, m in self.heads.items()},
                "critics_target": self.critics_target.state_dict(),
                "noise_target": self.noise_target.state_dict(),
                "opt_critic": self.opt_critic.state_dict(),
                "opt_noise": self.opt_noise.state_dict(),
                "opt_noise_critic": self.opt_noise_critic.state_dict(),
                "updates": self.updates, "config": self.cfg.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        for name, m in self.heads.items():
            m.load_state_dict(state["heads"][name])
        self.critics_target.load_state_dict(state["critics_target"])
        self.noise_target.load_state_dict(state["noise_target"])
        self.opt_critic.load_state_dict(state["opt_critic"])
        self.opt_noise.load_state_dict(state["opt_noise"])
        self.opt_noise_critic.load_state_dict(state["opt_noise_critic"])
        self.updates = int(state["updates"])
        saved = state.get("config")
        if saved is not None and saved != self.cfg.to_dict():
            log.warning("steering state was saved with a different config: %s (now %s)",
                        saved, self.cfg.to_dict())
