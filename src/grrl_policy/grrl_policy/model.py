"""The GR-RL model: a Mixture-of-Transformers of a vision-language backbone and four experts
(action DiT π_θ, twin distributional critics Q_φ, noise predictor π_θ', noise critic Q_φ').

One code path for both configurations: ``tiny`` (CPU-trainable, optionally on simulator state)
and ``qwen2.5-vl-3b`` (Qwen2.5-VL-3B-Instruct from a local directory, bf16 on a GPU). Actions and
proprioception are normalised inside the model (statistics are buffers saved with the weights),
so callers always pass and receive physical units.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import flow_matching
from .experts import Expert, ExpertConfig
from .keys import ACTION, IMAGES, PROPRIO, STATE
from .sim_state_spec import STATE_DIM
from .prefix import Backbone, Prefix
from .tiny_backbone import TinyBackbone, TinyBackboneConfig

log = logging.getLogger(__name__)

NOISE_STRUCTURES = ("full", "constant")
"""ModelConfig.noise_structure's choices"""


@dataclass
class QwenConfig:
    """Where and how to load the Qwen2.5-VL backbone."""

    path: str = ""
    """local directory of Qwen2.5-VL-3B-Instruct (weights are never downloaded)"""
    image_size: int = 224
    """cameras are resized to this square size; a multiple of 28"""
    dtype: str = "bfloat16"
    """backbone dtype"""
    random_config: dict[str, Any] | None = None
    """a Qwen2_5_VLConfig as a dict: build randomly initialised instead of loading (tests)"""


@dataclass
class ModelConfig:
    """Everything needed to rebuild a GR-RL model (saved as JSON beside the weights)."""

    name: str = "tiny"
    """preset the config came from"""
    backbone: str = "tiny"
    """'tiny' or 'qwen'"""
    tiny: TinyBackboneConfig = field(default_factory=TinyBackboneConfig)
    """tiny backbone dimensions (backbone='tiny')"""
    qwen: QwenConfig = field(default_factory=QwenConfig)
    """Qwen2.5-VL backbone (backbone='qwen')"""
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    """width of the four experts"""
    horizon: int = 16
    """k: actions per chunk"""
    action_dim: int = 16
    """per-step action size (16 joint targets, or task-space poses)"""
    proprio_dim: int = 16
    """proprioception size (16 joint positions by default)"""
    flow_steps: int = 10
    """Euler steps of the flow ODE at inference"""
    flow_time: str = "uniform"
    """training distribution of the flow time: 'uniform' or 'beta'"""
    value_bins: int = 51
    """atoms of the categorical value distribution over [0, 1]"""
    n_critics: int = 2
    """critic ensemble size (2 = TD3's twin critics)"""
    action_space: str = "joint"
    """'joint' (joint targets, 16) or 'task' (tcp poses + grippers, grrl_policy.task_space, 20:
    both proprioception and actions; chunks are turned into joint targets by IK)"""
    action_mode: str = "absolute"
    """'absolute' targets, or 'delta': the model works on a - q (targets relative to the current
    joint positions; needs action_dim == proprio_dim), normalised by the statistics of a - q"""
    action_norm: str = "pooled"
    """'pooled': one mean/std per action dimension; 'per_step': one per chunk step and dimension
    (a delta chunk's first steps move millimetres, its last centimetres: pooled statistics make
    the first steps' errors look 10x smaller than they are)"""
    state_norm: bool = False
    """normalise the simulator state by the dataset's mean/std before the backbone (off: raw
    metres into a linear layer, the checkpoints made before this option)"""
    noise_bound: float = 2.5
    """the noise predictor's output per dimension is b·tanh(u / b) (DSRL's bounded latent
    actions): steered ε stays where the flow was trained (|ε_i| < 2.5 holds for 98.8% of
    N(0, 1) draws); 0 = unbounded (a linear head, as checkpoints made before this option)"""
    noise_structure: str = "full"
    """what the noise predictor steers: 'full', an ε per chunk step and dimension (k·D values,
    the paper's), or 'constant', one D-vector repeated over the chunk (D values: a coherent
    shift of the whole chunk, which survives temporal ensembling; exploration and the
    distillation's N(0, I) draws follow the same structure). Sampling from N(0, I) without
    steering is unchanged"""

    @property
    def observes_state(self) -> bool:
        """The model observes the simulator state instead of camera images."""
        return self.backbone == "tiny" and self.tiny.observation == "state"

    @property
    def observation_key(self) -> str:
        """The model input besides proprioception and instruction: ``STATE`` or ``IMAGES``."""
        return STATE if self.observes_state else IMAGES

    @property
    def image_size(self) -> int:
        """Side of the square camera images the model takes (image models)."""
        return self.tiny.image_size if self.backbone == "tiny" else self.qwen.image_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        d.setdefault("noise_bound", 0.0)        # saved before the bound existed: unbounded
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields {sorted(unknown)}")
        for name, sub in (("tiny", TinyBackboneConfig), ("qwen", QwenConfig), ("expert", ExpertConfig)):
            if name in d and isinstance(d[name], dict):
                d[name] = sub(**d[name])
        return cls(**d)


def preset(name: str, **overrides: Any) -> ModelConfig:
    """Named configurations: 'tiny' (images), 'tiny-state' (simulator state instead of images),
    'tiny-state-task' / 'tiny-task' (the same acting in task space, see task_space.py) and
    'qwen2.5-vl-3b'. Keyword overrides replace top-level fields."""
    if name == "tiny":
        cfg = ModelConfig(name=name)
    elif name == "tiny-state":
        # a quarter of tiny's compute: the state needs no image tokens, and the whole offline +
        # online pipeline must train on a 2-core CPU
        cfg = ModelConfig(name=name, tiny=TinyBackboneConfig(
            width=64, layers=2, heads=4, kv_heads=2, head_dim=16, observation="state",
            state_dim=STATE_DIM, state_tokens=4), expert=ExpertConfig(width=64, heads=4, mlp_ratio=2.0))
    elif name == "tiny-state-task":
        # the reproduction's policy: simulator state in, wrist poses out (task_space.py); 4
        # backbone layers so that the experts get 2 (one layer could not fit the demonstrations)
        from .task_space import TASK_DIM
        cfg = ModelConfig(name=name, tiny=TinyBackboneConfig(
            width=128, layers=4, heads=4, kv_heads=2, head_dim=32, observation="state",
            state_dim=STATE_DIM, state_tokens=4), expert=ExpertConfig(width=128, heads=4, mlp_ratio=4.0),
            action_space="task", action_dim=TASK_DIM, proprio_dim=TASK_DIM)
    elif name == "tiny-task":
        from .task_space import TASK_DIM
        cfg = ModelConfig(name=name, action_space="task", action_dim=TASK_DIM, proprio_dim=TASK_DIM)
    elif name == "qwen2.5-vl-3b":
        # 36 decoder layers → the experts have 18, attending to layers 18..35 (GQA: 2 kv heads)
        cfg = ModelConfig(name=name, backbone="qwen",
                          expert=ExpertConfig(width=1024, heads=16, mlp_ratio=4.0))
    else:
        raise ValueError(f"unknown model preset {name!r} (tiny, tiny-state, tiny-state-task, "
                         "tiny-task, qwen2.5-vl-3b)")
    return dataclasses.replace(cfg, **overrides)


def configure(name: str, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """A preset with overrides given as plain data (e.g. from JSON on a command line): top-level
    fields replace, nested configs ('tiny', 'qwen', 'expert') are merged field by field."""
    overrides = dict(overrides or {})
    if overrides.get("action_space") == "task":
        from .task_space import TASK_DIM
        overrides.setdefault("action_dim", TASK_DIM)
        overrides.setdefault("proprio_dim", TASK_DIM)
    d = preset(name).to_dict()
    for key, value in overrides.items():
        if key not in d:
            raise ValueError(f"unknown model config field {key!r} in the model overrides")
        if isinstance(d[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"model override {key!r} must be a dict of its fields")
            unknown = sorted(set(value) - set(d[key]))
            if unknown:
                raise ValueError(f"unknown fields {unknown} in model override {key!r}")
            d[key] = {**d[key], **value}
        else:
            d[key] = value
    return ModelConfig.from_dict(d)


def build_backbone(cfg: ModelConfig) -> Backbone:
    if cfg.backbone == "tiny":
        return TinyBackbone(cfg.tiny)
    if cfg.backbone == "qwen":
        from .qwen_backbone import build_qwen_backbone
        return build_qwen_backbone(cfg.qwen)
    raise ValueError(f"unknown backbone {cfg.backbone!r}")


class Normalizer(nn.Module):
    """Mean/std of actions (per dimension, or per chunk step and dimension: ``horizon`` > 0),
    proprioception and, with ``state_dim`` > 0, the simulator state (identity until set)."""

    def __init__(self, action_dim: int, proprio_dim: int, horizon: int = 0, state_dim: int = 0):
        super().__init__()
        shapes = {ACTION: (horizon, action_dim) if horizon else (action_dim,),
                  PROPRIO: (proprio_dim,)}
        if state_dim:
            shapes[STATE] = (state_dim,)
        for name, shape in shapes.items():
            self.register_buffer(f"{name}_mean", torch.zeros(shape))
            self.register_buffer(f"{name}_std", torch.ones(shape))

    def set(self, name: str, mean: torch.Tensor, std: torch.Tensor, min_std: float = 1e-3) -> None:
        getattr(self, f"{name}_mean").copy_(torch.as_tensor(mean, dtype=torch.float32))
        getattr(self, f"{name}_std").copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(min_std))

    def norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return (x - getattr(self, f"{name}_mean")) / getattr(self, f"{name}_std")

    def denorm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x * getattr(self, f"{name}_std") + getattr(self, f"{name}_mean")


class GRRLModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.action_mode not in ("absolute", "delta"):
            raise ValueError(f"action_mode must be 'absolute' or 'delta', got {cfg.action_mode!r}")
        if cfg.action_space not in ("joint", "task"):
            raise ValueError(f"action_space must be 'joint' or 'task', got {cfg.action_space!r}")
        if cfg.action_space == "task":
            from .task_space import TASK_DIM
            if cfg.action_dim != TASK_DIM or cfg.proprio_dim != TASK_DIM:
                raise ValueError(f"action_space 'task' needs action_dim == proprio_dim == {TASK_DIM}")
        if cfg.action_mode == "delta" and cfg.action_dim != cfg.proprio_dim:
            raise ValueError("action_mode 'delta' needs action_dim == proprio_dim (joint targets)")
        if cfg.action_norm not in ("pooled", "per_step"):
            raise ValueError(f"action_norm must be 'pooled' or 'per_step', got {cfg.action_norm!r}")
        if cfg.state_norm and not cfg.observes_state:
            raise ValueError("state_norm needs a model that observes the simulator state")
        if not 0.0 <= cfg.noise_bound < float("inf"):
            raise ValueError(f"noise_bound must be finite and >= 0, got {cfg.noise_bound}")
        if cfg.noise_structure not in NOISE_STRUCTURES:
            raise ValueError(f"noise_structure must be one of {NOISE_STRUCTURES}, "
                             f"got {cfg.noise_structure!r}")
        self.cfg = cfg
        self.backbone = build_backbone(cfg)
        bb = self.backbone
        expert = lambda in_dim, out_dim, causal, timed=False: Expert(   # noqa: E731
            cfg.expert, bb.n_prefix_layers, bb.n_kv_heads, bb.head_dim, cfg.horizon,
            cfg.proprio_dim, in_dim, out_dim, causal, timed)
        self.action_expert = expert(cfg.action_dim, cfg.action_dim, causal=False, timed=True)
        self.critics = nn.ModuleList(expert(cfg.action_dim, cfg.value_bins, causal=True)
                                     for _ in range(cfg.n_critics))
        self.noise_predictor = expert(None, cfg.action_dim, causal=False)
        self.noise_critic = expert(cfg.action_dim, cfg.value_bins, causal=True)
        self.normalizer = Normalizer(
            cfg.action_dim, cfg.proprio_dim, cfg.horizon if cfg.action_norm == "per_step" else 0,
            cfg.tiny.state_dim if cfg.state_norm else 0)

    # -- backbone -------------------------------------------------------------------------
    def encode(self, obs: dict) -> Prefix:
        """obs: ``instruction`` list[str] (B) and ``images`` (B, n_cam, H, W, 3) uint8 or
        ``state`` (B, state_dim). Returns the latter-half key/value prefix."""
        if self.cfg.state_norm:
            state = torch.as_tensor(obs[STATE]).float()
            if state.ndim == 2 and state.shape[1] == self.cfg.tiny.state_dim:  # else: the backbone's error
                obs = {**obs, STATE: self.normalizer.norm(STATE, state)}
        return self.backbone.encode(obs)

    # -- policy π_θ ----------------------------------------------------------------------
    def velocity(self, prefix: Prefix, proprio_n: torch.Tensor, x: torch.Tensor,
                 time: torch.Tensor) -> torch.Tensor:
        """Flow velocity (B, k, action_dim) at noisy normalised actions x and time (B,)."""
        return self.action_expert(prefix, proprio_n, x, time)

    def sample_normalized(self, prefix: Prefix, proprio: torch.Tensor, noise: torch.Tensor,
                          steps: int | None = None) -> torch.Tensor:
        """π_θ(s | ε): the deterministic flow from ε (B, k, D) to normalised actions (B, k, D),
        reusing one prefix for every step."""
        p = self.normalizer.norm(PROPRIO, proprio)
        return flow_matching.integrate(lambda x, t: self.velocity(prefix, p, x, t), noise,
                                       steps or self.cfg.flow_steps)

    @torch.no_grad()
    def act(self, obs: dict, proprio: torch.Tensor, noise: torch.Tensor | None = None,
            steps: int | None = None, steer: bool = False, reuse_prefix: bool = True,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Action chunks (B, k, action_dim) in physical units and the initial noise ε used.

        ε is, in order of precedence: the given ``noise``, the noise predictor's output if
        ``steer``, else N(0, I). ``reuse_prefix=False`` recomputes the backbone at every flow
        step (the uncached reference the cache is checked and benchmarked against)."""
        prefix = self.encode(obs) if (reuse_prefix or steer) else None
        B, k, D = proprio.shape[0], self.cfg.horizon, self.cfg.action_dim
        if noise is None:
            if steer:
                noise = self.predict_noise(prefix, proprio)
            else:
                noise = torch.randn(B, k, D, generator=generator, device=proprio.device)
        if reuse_prefix:
            a = self.sample_normalized(prefix, proprio, noise, steps)
        else:
            p = self.normalizer.norm(PROPRIO, proprio)
            a = flow_matching.integrate(lambda x, t: self.velocity(self.encode(obs), p, x, t),
                                        noise, steps or self.cfg.flow_steps)
        return self.decode_actions(a, proprio), noise

    def encode_actions(self, actions: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """Physical chunks (B, k, D) → the normalised space the experts work in."""
        if self.cfg.action_mode == "delta":
            actions = actions - proprio[:, None, :]
        return self.normalizer.norm("action", actions)

    def decode_actions(self, a_n: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode_actions`."""
        a = self.normalizer.denorm("action", a_n)
        return a + proprio[:, None, :] if self.cfg.action_mode == "delta" else a

    def bc_loss(self, obs: dict, proprio: torch.Tensor, actions: torch.Tensor,
                mask: torch.Tensor | None = None, prefix: Prefix | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow-matching behaviour-cloning loss on physical-unit chunks (B, k, D)."""
        prefix = prefix if prefix is not None else self.encode(obs)
        a = self.encode_actions(actions, proprio)
        p = self.normalizer.norm(PROPRIO, proprio)
        noise = torch.randn(a.shape, generator=generator, device=a.device)
        t = flow_matching.sample_time(a.shape[0], a.device, generator, self.cfg.flow_time)
        return flow_matching.flow_matching_loss(lambda x, tt: self.velocity(prefix, p, x, tt),
                                                a, noise, t, mask)

    # -- critics --------------------------------------------------------------------------
    def critic_logits(self, prefix: Prefix, proprio: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q_φ: (n_critics, B, k, bins) logits for physical-unit chunks (B, k, D); step j is the
        value distribution of the chunk prefix a_{t:t+j+1} (Q-chunking, causal)."""
        p = self.normalizer.norm(PROPRIO, proprio)
        a = self.encode_actions(actions, proprio)
        return torch.stack([c(prefix, p, a) for c in self.critics])

    def predict_noise(self, prefix: Prefix, proprio: torch.Tensor) -> torch.Tensor:
        """π_θ'(s): the initial noise ε (B, k, D) that steers the flow policy, each value inside
        (−noise_bound, noise_bound) when bounded."""
        u = self.noise_predictor(prefix, self.normalizer.norm(PROPRIO, proprio))
        if self.cfg.noise_structure == "constant":      # one shift for the whole chunk
            u = u.mean(-2, keepdim=True).expand_as(u)
        return self.bound_noise(u)

    def structured_draw(self, draw: torch.Tensor) -> torch.Tensor:
        """A standard normal draw (…, k, D) restricted to what the predictor steers
        (``noise_structure``): 'constant' repeats its first step over the chunk (still N(0, 1)
        per value), 'full' keeps it. For exploration, target smoothing and eq. (4)'s N(0, I)."""
        if self.cfg.noise_structure == "constant":
            return draw[..., :1, :].expand_as(draw)
        return draw

    def bound_noise(self, u: torch.Tensor) -> torch.Tensor:
        """The predictor's raw output u (B, k, D) → b·tanh(u / b) (identity when unbounded):
        smooth, the identity near 0, and never outside the region the flow was trained on."""
        b = self.cfg.noise_bound
        return b * torch.tanh(u / b) if b > 0 else u

    def clip_noise(self, eps: torch.Tensor) -> torch.Tensor:
        """Exploration or smoothing noise added to a bounded ε, clipped back inside the bound."""
        b = self.cfg.noise_bound
        return eps.clamp(-b, b) if b > 0 else eps

    def noise_critic_logits(self, prefix: Prefix, proprio: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Q_φ'(s, ε): (B, k, bins) logits over the value of the chunk generated from ε."""
        return self.noise_critic(prefix, self.normalizer.norm(PROPRIO, proprio), noise)

    # -- parameter groups -----------------------------------------------------------------
    def policy_parameters(self) -> list[nn.Parameter]:
        """Backbone + action DiT (trained by BC; frozen online)."""
        return [p for m in (self.backbone, self.action_expert) for p in m.parameters() if p.requires_grad]

    def critic_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.critics.parameters() if p.requires_grad]

    def noise_parameters(self) -> list[nn.Parameter]:
        """Noise predictor π_θ' (its critic Q_φ' is in noise_critic_parameters)."""
        return list(self.noise_predictor.parameters())

    def noise_critic_parameters(self) -> list[nn.Parameter]:
        return list(self.noise_critic.parameters())
