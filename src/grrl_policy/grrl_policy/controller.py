"""The command path, once: observation → policy → action codec → jerk-limited plan → joint
trajectory, with holds and their reasons. ROS-free.

The policy node, ``grrl-eval`` workers and online-RL rollouts all drive a robot through a
:class:`PolicyController`, so what the robot runs, what evaluation measures and what online RL
learns from cannot drift apart (the gap GR-RL's online stage exists to close must not be
widened by our own code).

One decision is two calls:

1. :meth:`PolicyController.infer` (pure, may run on an inference thread): checks the
   observation, turns the joints into the model's proprioception, draws or steers the initial
   noise ε, samples a chunk and decodes it into joint targets (IK for task-space models).
2. :meth:`PolicyController.plan` (stateful, cheap): splices the joint targets onto the robot's
   current motion with the jerk-limited optimizer and returns the :class:`Command` to send;
   the receding-horizon rule (re-plan after ``execute_steps`` chunk steps) is :meth:`due`.

Anything wrong raises :class:`HoldError` (observation, model output or optimizer); the caller
then commands :meth:`hold` (the node) or ends the episode (evaluation).

Noise: every episode seeds its own generator from ``(noise_seed, episode seed)``; each decision
draws one (k, D) standard normal from it — the initial noise itself, or, when steering, the
exploration around the predicted ε (scaled by ``explore_std``). The same checkpoint, episode seed
and observations therefore give the same chunks in the node and in evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .chunk_executor import ChunkExecutor, ChunkExecutorError, ExecutorConfig, Plan, joint_limits
from .policy_runtime import Chunk, ObservationError, Policy, PolicyOutputError, build_observation
from .robot import RobotDescription, resolve
from .task_space import action_codec, check_executable


class HoldError(RuntimeError):
    """The controller must not command what it was about to: the message says why. ``kind`` is
    'policy' (observation or model output) or 'optimizer' (the plan)."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


@dataclass
class ControllerConfig:
    """How chunks are turned into robot commands (shared by the node, evaluation and online RL)."""

    step_period: float = 0.1
    """seconds between chunk steps (the demonstrations' 10 Hz)"""
    execute_steps: int = 1
    """m: chunk steps executed before the next re-plan (receding horizon); with temporal
    ensembling 1: a chunk every step, each step the average of all chunks that cover it"""
    temporal_ensembling: bool = True
    """blend the overlapping predictions of recent chunks (ACT). On, with m = 1 and equal
    weights, BC on clean demonstrations completes 15/20 validation scenes; off, with m = 8,
    5/20 (docs/results/imitation)"""
    ensemble_decay: float = 0.0
    """ACT weights exp(-decay r) of temporal ensembling, r = 0 the oldest chunk (0: equal
    weights; 0.1 / 0.5 / -0.1 completed 12 / 8 / 13 of the 20 validation scenes)"""
    velocity_scale: float = 0.8
    """fraction of the URDF velocity limits chunks are planned with"""
    acceleration_limit: float = 4.0
    """planned acceleration bound, x the planned velocity limit, per second"""
    jerk_limit: float = 40.0
    """planned jerk bound, x the planned velocity limit, per second^2"""
    flow_steps: int = 0
    """Euler steps of the flow ODE; 0: the model's own setting"""
    steer: bool = False
    """initial noise from the noise predictor (online RL) for steerable checkpoints"""
    explore_std: float = 0.0
    """with steer: std of Gaussian exploration around the predicted ε"""
    explore_hold: int = 1
    """with steer: decisions each exploration draw is kept for (1: a new one every decision).
    Temporal ensembling averages the ~16 chunks that cover a step, so independent draws barely
    change the motion and the critics cannot learn what a shift of ε does; a held draw shifts it"""
    noise_seed: int = 0
    """mixed with each episode's seed to seed the sampling noise"""
    noise_scale: float = 1.0
    """temperature of the flow's initial noise (ε·scale; 0: every chunk from ε = 0, the
    deterministic map). Not applied to steered noise, which is the noise predictor's"""
    replan_slack: float = 0.005
    """seconds before the last executed chunk step at which an observation already counts as
    due for the next re-plan (stamp jitter): under half the joint-state period (50 Hz), so the
    policy re-plans every ``execute_steps`` steps on the first observation at or after it.
    (With half a step period the node, which checks every joint state, re-planned every
    0.06 s instead of 0.1 s, and its episodes were not evaluation's)"""

    def __post_init__(self) -> None:
        if self.step_period <= 0 or self.execute_steps < 1:
            raise ValueError(f"step_period > 0 and execute_steps >= 1 are needed, got "
                             f"{self.step_period}, {self.execute_steps}")
        if not 0.0 <= self.noise_scale < float("inf"):
            raise ValueError(f"noise_scale must be finite and >= 0, got {self.noise_scale}")
        if self.explore_std < 0:
            raise ValueError(f"explore_std must be >= 0, got {self.explore_std}")
        if self.explore_hold < 1:
            raise ValueError(f"explore_hold must be >= 1, got {self.explore_hold}")
        if not 0.0 <= self.replan_slack < 0.5 * self.step_period:
            raise ValueError(f"replan_slack must be in [0, step_period / 2), got {self.replan_slack}")


@dataclass
class Observation:
    """What the robot saw at robot time ``t``."""

    q: np.ndarray
    """(16,) measured joint positions"""
    t: float
    """robot time of the joint state"""
    instruction: str
    images: dict[str, np.ndarray] | None = None
    """camera → (S, S, 3) uint8 (image models)"""
    state: np.ndarray | None = None
    """(state_dim,) simulator state (state models)"""
    errors: list[str] = field(default_factory=list)
    """what the caller already found wrong (stale, out of sync, ...): the decision holds"""


@dataclass
class Inference:
    """One chunk and everything it was made from (online RL stores these)."""

    observation: Observation
    model_obs: dict
    """the model's input (B = 1 tensors)"""
    proprio: np.ndarray
    """(proprio_dim,) the model's proprioception"""
    chunk: Chunk
    joints: np.ndarray
    """(k, 16) joint targets"""


@dataclass
class Command:
    """A joint trajectory: ``times`` are seconds from ``t0`` (robot time); positions and
    velocities are clipped to the limits."""

    t0: float
    times: np.ndarray
    """(n,)"""
    positions: np.ndarray
    """(n, 16)"""
    velocities: np.ndarray
    """(n, 16)"""
    accelerations: np.ndarray | None = None
    """(n, 16); None for a stop"""


class PolicyController:
    """A policy and the per-episode state of its command path (executor, IK posture, noise)."""

    def __init__(self, policy: Policy, cfg: ControllerConfig | None = None, who: str = "controller",
                 robot: RobotDescription | None = None):
        """``robot``: joint names, limits and kinematics (default: ByteMini-v2's URDF)."""
        self.policy = policy
        self.cfg = cfg = cfg or ControllerConfig()
        self.robot = resolve(robot)
        mcfg = policy.config
        check_executable(mcfg.action_space, mcfg.action_dim, mcfg.proprio_dim, who, self.robot)
        self.codec = action_codec(mcfg.action_space, cfg.step_period, self.robot)
        self.limits = joint_limits(cfg.velocity_scale, cfg.acceleration_limit, cfg.jerk_limit,
                                   self.robot)
        self.executor = self._executor()
        self.rng = np.random.default_rng([int(cfg.noise_seed), 0])
        self._explore: tuple[np.ndarray, int] | None = None    # (held draw, decisions left)
        self.next_plan = float("-inf")
        self.hold_target: np.ndarray | None = None

    @property
    def joint_names(self) -> list[str]:
        """The commanded joints, in the order of every joint vector here."""
        return list(self.robot.actuated_joint_names)

    def _executor(self) -> ChunkExecutor:
        c = self.cfg
        return ChunkExecutor(self.limits, ExecutorConfig(
            dt=c.step_period, execute_steps=c.execute_steps,
            temporal_ensembling=c.temporal_ensembling, ensemble_decay=c.ensemble_decay))

    @property
    def steering(self) -> bool:
        """Steer now: asked to, and the running checkpoint's predictor was trained online (an
        offline checkpoint is acted with ε ~ N(0, I): the paper's warm-up rollouts)."""
        return self.cfg.steer and self.policy.steerable

    def start_episode(self, seed: int, q: np.ndarray | None = None) -> None:
        """A new episode on scene ``seed``; ``q``: its first joints (IK posture), or the first
        decision's."""
        # a fresh executor, not a reset one: its solver warm-starts from the last solution, and
        # an episode must not depend on the episodes before it
        self.executor = self._executor()
        self.codec.reset(None if q is None else np.asarray(q, float))
        self.rng = np.random.default_rng([int(self.cfg.noise_seed), int(seed)])
        self._explore = None
        self.next_plan = float("-inf")
        self.hold_target = None

    def due(self, t: float) -> bool:
        """A re-plan is due at robot time ``t`` (receding horizon)."""
        return t >= self.next_plan - 1e-9

    def _model_input(self, obs: Observation) -> tuple[dict, torch.Tensor, np.ndarray]:
        """The model's batched input (B = 1), its proprioception tensor and the proprioception
        (proprio_dim,) of ``obs``; raises ObservationError."""
        proprio = np.asarray(self.codec.proprio(obs.q), np.float32)
        model_obs, proprio_t = build_observation(self.policy.config, obs.instruction, proprio,
                                                 obs.images, state=obs.state)
        return model_obs, proprio_t, proprio

    def observation_input(self, obs: Observation) -> tuple[np.ndarray, np.ndarray]:
        """The model's observation (state (state_dim,) or images (cameras, S, S, 3)) and
        proprioception (proprio_dim,) of ``obs``, as online RL stores them; raises HoldError."""
        try:
            model_obs, _, proprio = self._model_input(obs)
        except ObservationError as e:
            raise HoldError("policy", str(e)) from e
        return model_obs[self.policy.config.observation_key][0].numpy(), proprio

    def _exploration(self, draw: np.ndarray) -> np.ndarray:
        """explore_std times this decision's draw, or the held one (explore_hold)."""
        if self._explore is None or self._explore[1] <= 0:
            self._explore = (draw, self.cfg.explore_hold)
        held, left = self._explore
        self._explore = (held, left - 1)
        return self.cfg.explore_std * held

    def infer(self, obs: Observation) -> Inference:
        """Check ``obs``, sample a chunk, decode it to joint targets; raises HoldError."""
        if obs.errors:
            raise HoldError("policy", "; ".join(obs.errors))
        mcfg = self.policy.config
        try:
            model_obs, proprio_t, proprio = self._model_input(obs)
            draw = self.rng.standard_normal((mcfg.horizon, mcfg.action_dim)).astype(np.float32)
            steer = self.steering
            chunk = self.policy.infer(
                model_obs, proprio_t, steer=steer, noise=None if steer else self.cfg.noise_scale * draw,
                explore=self._exploration(draw) if steer and self.cfg.explore_std else None,
                steps=self.cfg.flow_steps or None)
        except (ObservationError, PolicyOutputError) as e:
            raise HoldError("policy", str(e)) from e
        except (RuntimeError, ValueError) as e:          # a model that cannot run this input
            raise HoldError("policy", repr(e)) from e
        try:
            joints = self.codec.joints(chunk.actions, obs.q)
        except ValueError as e:
            raise HoldError("optimizer", str(e)) from e
        return Inference(obs, model_obs, proprio, chunk, joints)

    def plan(self, inference: Inference, t_now: float | None = None) -> Command:
        """Splice ``inference``'s joint targets at robot time ``t_now`` (default: the
        observation's, i.e. zero latency) and return the trajectory to send; raises HoldError.

        After a stop the robot tracks the stop target, not the measured joints (which lag it):
        the splice starts there, or a driver would refuse the first point as a jump."""
        obs = inference.observation
        t_now = obs.t if t_now is None else max(float(t_now), obs.t)
        try:
            measured = obs.q if self.hold_target is None else self.hold_target
            state = self.executor.state_at(t_now, measured=measured)
            plan: Plan = self.executor.plan(inference.joints, obs.t, state)
        except (ChunkExecutorError, ValueError) as e:
            raise HoldError("optimizer", str(e)) from e
        self.next_plan = plan.execute_until - self.cfg.replan_slack
        self.hold_target = None
        lim = self.limits
        return Command(t_now, np.asarray(plan.times, float) - t_now,
                       np.clip(plan.positions, lim.lower, lim.upper),
                       np.clip(plan.velocities, -lim.velocity, lim.velocity),
                       np.asarray(plan.accelerations, float))

    def act(self, obs: Observation, t_now: float | None = None) -> tuple[Inference, Command]:
        """:meth:`infer` then :meth:`plan` (in one thread: evaluation, online rollouts)."""
        inference = self.infer(obs)
        return inference, self.plan(inference, t_now)

    def hold(self, t: float) -> Command | None:
        """Stop smoothly where the current plan is at robot time ``t``: a single point reached
        within the acceleration limit, at rest where the current velocity carries to; None if
        nothing was commanded (the driver holds by itself). Re-planning is due again."""
        state = None
        if self.executor.current_plan is not None and np.isfinite(t):
            try:
                state = self.executor.state_at(t)
            except (ChunkExecutorError, ValueError):
                state = None
        self.executor.reset()
        self.next_plan = float("-inf")
        if state is None:
            return None
        lim = self.limits
        t_stop = max(self.cfg.step_period,
                     1.5 * float(np.max(np.abs(state.velocity) / lim.acceleration)))
        target = np.clip(state.position + 0.5 * t_stop * state.velocity, lim.lower, lim.upper)
        self.hold_target = target
        return Command(float(t), np.array([t_stop]), target[None], np.zeros((1, target.size)))
