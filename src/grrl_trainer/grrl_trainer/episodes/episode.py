"""Episode bookkeeping without ROS: stages reached, time limit, outcome and the sparse reward.

Reward (paper eq. 1): r = gamma^(T-t) I(tau) for the chunk a_t... that reaches the end T of a
successful episode, 0 everywhere else; :func:`sparse_reward` is its one implementation (the
critic's windows, online episodes and the episode node's result all use it).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

STAGE_NAMES = ("none", "picked", "threaded", "handed_over", "placed")

SUCCESS, FAILURE, TIMEOUT, CANCELLED, INVALID = ("success", "failure", "timeout",
                                                  "cancelled", "invalid")


def sparse_reward(success: bool, steps_to_end: int = 0, reaches_end: bool = True,
                  gamma: float = 1.0) -> float:
    """Eq. (1): gamma^(T-t) I(tau) if the chunk starting at t reaches the episode's end T,
    else 0; ``steps_to_end`` is T - t in chunk steps. The episode node reports it at the end
    itself (T - t = 0): 1 for a successful episode."""
    return float(gamma ** steps_to_end) if success and reaches_end else 0.0


def new_episode_id(seed: int) -> str:
    return f"ep-{seed:06d}-{uuid.uuid4().hex[:8]}"


@dataclass
class EpisodeMonitor:
    """Follows one episode from task-state updates; ``status`` is set once it ends."""

    episode_id: str
    time_limit: float
    start_time: float | None = None
    stage: int = 0
    reached: list[int] = field(default_factory=list)
    status: str | None = None
    message: str = ""
    elapsed: float = 0.0
    end_time: float | None = None
    """when it ended, on the clock of ``update`` (a timeout: the instant the limit passed, not
    the later state it was noticed in, so that a busy machine stamps the same end)"""

    @property
    def done(self) -> bool:
        return self.status is not None

    @property
    def success(self) -> bool:
        return self.status == SUCCESS

    @property
    def reward(self) -> float:
        return sparse_reward(self.success)

    def update(self, now: float, stage: int, success: bool, failed: bool,
               reason: str = "") -> list[int]:
        """Feed one task state at time ``now`` (s); returns the stages newly reached."""
        if self.done:
            return []
        if self.start_time is None:
            self.start_time = now
        self.elapsed = now - self.start_time
        new = []
        if stage > self.stage:
            new = list(range(self.stage + 1, stage + 1))
            self.reached += new
            self.stage = stage
        if failed:
            invalid = reason.startswith("physics fault")
            self.finish(INVALID if invalid else FAILURE, reason, now)
        elif self.elapsed > self.time_limit:   # a success after the limit is not one
            self.finish(TIMEOUT, f"time limit of {self.time_limit:.0f} s reached at stage "
                                 f"'{STAGE_NAMES[self.stage]}'", self.start_time + self.time_limit)
        elif success:
            self.finish(SUCCESS, "task complete", now)
        return new

    def finish(self, status: str, message: str, at: float | None = None) -> None:
        """End it (``at``: when, if known on the clock of :meth:`update`)."""
        if not self.done:
            self.status, self.message, self.end_time = status, message, at
