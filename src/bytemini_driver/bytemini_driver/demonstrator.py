"""A teleoperator-like demonstrator: the clean scripted expert with human flaws.

GR-RL's premise is that human demonstrations of precise tasks are noisy and suboptimal. Per
episode, from its own seed, this demonstrator draws:

* hesitations: pauses at random points and a slow, creeping approach;
* jittery hands: a smooth random offset (Ornstein-Uhlenbeck) on the tracked tcp targets;
* eyelet misses: the first insertion aims a few millimetres off; the operator sees the miss,
  backs off and retries;
* lace drops: the aglet slips out of the gripper after lifting; the operator regrasps;
* outright failures: the operator gives up part-way.

Like the paper's annotators it marks a **retry keyframe** at the control step where a retry
begins (backing off after a miss, reaching again after a drop), and the episode's
success/failure is the simulator's verdict. Every flaw has its rate in :class:`DemoConfig`.

Unlike a human operator it also knows, for every control step, which flaw it is acting out
(:meth:`FlawedDemonstrator.step_flaws`, codes in :data:`FLAW_TYPES`): the ground truth that a
progress critic's filter is measured against, never a training signal.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from bytemini_driver.expert import CLOSED, OPEN, ScriptedExpert, ScriptedExpertConfig
from bytemini_driver.ik import DualArmIK
from bytemini_driver.task import threaded_from_end


FLAW_TYPES = ("none", "miss", "drop", "pause", "creep", "give_up")
"""Per-step flaw codes (their index): ``miss`` = the off-target approach and insertion of an
attempt that missed the eyelet, and the back-off after it; ``drop`` = the lace slipping out and
the whole regrasp (reach, descend, grasp, lift again); ``pause`` = a hesitation; ``creep`` = a
slow, creeping approach to the lace; ``give_up`` = the operator letting go and withdrawing."""
MISS, DROP, PAUSE, CREEP, GIVE_UP = (FLAW_TYPES.index(n) for n in FLAW_TYPES[1:])
#: phases that redo the grasp after a drop (named apart from the first grasp's phases)
REGRASP = "regrasp/"


@dataclass
class DemoConfig:
    """Rates and sizes of the demonstrator's flaws (all per episode unless noted)."""

    pauses_per_episode: float = 1.0
    """mean number of hesitation pauses (Poisson)"""
    pause_seconds: tuple[float, float] = (0.5, 2.0)
    creep_prob: float = 0.3
    """probability of a slow, creeping approach to the lace"""
    creep_speed: float = 0.35
    """speed factor of a creeping approach"""
    miss_prob: float = 0.35
    """probability that the first insertion misses the eyelet (then a retry)"""
    second_miss_prob: float = 0.2
    """probability that a retry misses again"""
    miss_offset: tuple[float, float] = (0.007, 0.011)
    """how far off the eyelet centre a miss aims (m)"""
    drop_prob: float = 0.15
    """probability of dropping the lace after lifting it (then a regrasp)"""
    jitter_std: float = 0.0012
    """stationary std of the hand jitter (m)"""
    jitter_tau: float = 0.25
    """correlation time of the hand jitter (s)"""
    fail_prob: float = 0.07
    """probability of giving up part-way (an outright failure)"""


@dataclass
class EpisodeFlaws:
    """What the demonstrator did in one episode (stored with the episode)."""

    pauses: int = 0
    creep: bool = False
    misses: int = 0
    drops: int = 0
    gave_up: bool = False
    retry_keyframes: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


class FlawedDemonstrator(ScriptedExpert):
    """Drop-in replacement of :class:`ScriptedExpert` with :class:`DemoConfig` flaws."""

    def __init__(self, demo: DemoConfig | None = None, config: ScriptedExpertConfig | None = None,
                 ik: DualArmIK | None = None):
        super().__init__(config, ik)
        self.demo = demo or DemoConfig()

    def reset(self, end_side, eyelet_center, eyelet_axis, q, n_vertices, dt,
              seed: int = 0, inner_radius: float = 0.0045) -> None:
        super().reset(end_side, eyelet_center, eyelet_axis, q, n_vertices, dt)
        d, rng = self.demo, np.random.default_rng(seed)
        self.rng = rng
        self.inner_radius = inner_radius
        self.flaws = EpisodeFlaws()
        self.acted: list[tuple[str, int]] = []
        """per act() call: the phase it acted in and the insertion attempt then"""
        self.missed: set[int] = set()
        """insertion attempts that missed the eyelet"""
        self.jitter = {s: np.zeros(4) for s in ("left", "right")}
        self.miss_plan = [rng.random() < d.miss_prob]
        self.miss_plan.append(self.miss_plan[0] and rng.random() < d.second_miss_prob)
        self.attempt = 0
        phases = dict(self.phases)
        creep = rng.random() < d.creep_prob
        self.flaws.creep = creep
        plan = []
        for name, fn in self.phases:
            if name == "approach" and creep:
                plan.append((name, self._scaled(fn, d.creep_speed)))
            elif name in ("align", "insert"):
                plan.append((name, getattr(self, f"_{name}_maybe_off")))
            else:
                plan.append((name, self._scaled(fn, 1.0)))
            if name == "insert":
                plan.append(("check_threaded", self._check_threaded))
            if name == "lift" and rng.random() < d.drop_prob:
                plan.append(("drop", self._drop))
        for _ in range(rng.poisson(d.pauses_per_episode)):
            at = int(rng.integers(1, len(plan)))
            plan.insert(at, ("pause", self._pause))
        if rng.random() < d.fail_prob:
            at = int(rng.integers(2, len(plan) - 1))
            plan = plan[:at] + [("give_up", self._give_up)]
        self.phases = plan
        self._originals = phases

    def act(self, lace: np.ndarray, q_measured: np.ndarray, dt: float | None = None
            ) -> np.ndarray:
        out = super().act(lace, q_measured, dt)
        self.acted.append((self.phase, self.attempt))
        return out

    def step_flaws(self) -> np.ndarray:
        """(n_act,) uint8: the :data:`FLAW_TYPES` code of every act() call so far. A miss is
        known only once the insertion is checked, so the labels are computed afterwards."""
        out = np.zeros(len(self.acted), np.uint8)
        gave_up = False
        for i, (name, attempt) in enumerate(self.acted):
            gave_up = gave_up or name == "give_up"
            if gave_up:
                out[i] = GIVE_UP                  # and everything after it
            elif name == "pause":
                out[i] = PAUSE
            elif name in ("drop", "regrasp") or name.startswith(REGRASP):
                out[i] = DROP
            elif name == "back_off" or (name in ("align", "insert", "check_threaded")
                                        and attempt in self.missed):
                out[i] = MISS
            elif name == "approach" and self.flaws.creep:
                out[i] = CREEP
        return out

    # --------------------------------------------------------------------- flaws
    def _scaled(self, fn, scale: float):
        def run(lace: np.ndarray) -> float:
            self.speed_scale = scale
            return fn(lace)
        return run

    def _pause(self, lace: np.ndarray) -> float:
        self.flaws.pauses += 1
        return float(self.rng.uniform(*self.demo.pause_seconds))

    def _miss_offset(self) -> np.ndarray:
        """A point on a circle around the eyelet axis, off by miss_offset."""
        if self.attempt >= len(self.miss_plan) or not self.miss_plan[self.attempt]:
            return np.zeros(3)
        u = np.cross(self.axis, [0.0, 0.0, 1.0])
        u /= np.linalg.norm(u)
        a = self.rng.uniform(0, 2 * math.pi)
        r = self.rng.uniform(*self.demo.miss_offset)
        return r * (math.cos(a) * u + math.sin(a) * np.array([0.0, 0.0, 1.0]))

    def _align_maybe_off(self, lace: np.ndarray) -> float:
        self.speed_scale = 1.0
        self.off = self._miss_offset()
        tip = self.center - self.config.pre_insert * self.axis + self.off
        return self._move(self.picker, self._tcp_for_tip(tip, lace))

    def _insert_maybe_off(self, lace: np.ndarray) -> float:
        tip = self.center + self.config.insert_depth * self.axis + self.off
        return self._move(self.picker, self._tcp_for_tip(tip, lace), self.config.insert_speed)

    def _check_threaded(self, lace: np.ndarray) -> float:
        ok, _ = threaded_from_end(lace, self.end, self.center, self.axis, self.inner_radius)
        tip_past = (lace[self.end] - self.center) @ self.axis > 0.005
        if ok and tip_past:
            return 0.0
        self.missed.add(self.attempt)
        self.attempt += 1
        if self.attempt > 3:                      # three misses: this operator gives up
            self.phases = self.phases[:self.phase_i + 1] + [("give_up", self._give_up)]
            return 0.0
        self.flaws.misses += 1
        self.flaws.retry_keyframes.append(self.steps)
        self.insert_phases(("back_off", self._back_off), ("align", self._align_maybe_off),
                           ("insert", self._insert_maybe_off),
                           ("check_threaded", self._check_threaded))
        return 0.0

    def _back_off(self, lace: np.ndarray) -> float:
        cur = self._pose4(self.picker)
        back = cur.copy()
        back[:3] -= (self.config.insert_depth + self.config.pre_insert + 0.01) * self.axis
        back[2] += 0.01
        return self._move(self.picker, back)

    def _drop(self, lace: np.ndarray) -> float:
        self.flaws.drops += 1
        self.grip[self.picker] = OPEN
        self.insert_phases(("regrasp", self._regrasp))
        return 0.6                                # the lace falls

    def _regrasp(self, lace: np.ndarray) -> float:
        self.flaws.retry_keyframes.append(self.steps)
        o = self._originals
        self.insert_phases((REGRASP + "approach", self._scaled(o["approach"], 1.0)),
                           (REGRASP + "descend", o["descend"]),
                           (REGRASP + "grasp", lambda lc: self._set_grip(self.picker, CLOSED)),
                           (REGRASP + "lift", o["lift"]))
        cur = self._pose4(self.picker)
        return self._move(self.picker, np.r_[cur[:2], cur[2] + 0.03, cur[3]])

    def _give_up(self, lace: np.ndarray) -> float:
        self.flaws.gave_up = True
        for side in ("left", "right"):
            self.grip[side] = OPEN
        return self._move(self.picker, self.home[self.picker]) + 0.5  # then the episode ends

    # -------------------------------------------------------------------- jitter
    def target_offset(self, side: str) -> np.ndarray:
        d = self.demo
        if d.jitter_std <= 0:
            return np.zeros(4)
        x = self.jitter[side]
        a = self.dt / d.jitter_tau
        x[:3] += -a * x[:3] + d.jitter_std * math.sqrt(2 * a) * self.rng.normal(size=3)
        return x
