"""Lock-step simulation, the simulator's side: when may it advance past its latest observation?

A simulated robot that runs on the wall clock gives a different episode whenever a controller
or the machine falls behind (a command lands ticks later than it would have). In lock-step the
driver publishes the observation of simulated time t and advances one control period only
when every controller has answered t (``grrl_interfaces/StepAck``) and the commands each
announced have reached the driver. So simulated time slows down when a controller cannot keep
up and never runs ahead of it: the same seed gives the same episode on an idle and a busy
machine. The real-time factor is then the fastest the simulation may go.

Two waits are bounded, so that a dead or missing controller cannot stop the simulator: an
observation unanswered for ``step_timeout`` wall seconds, and a scene held at t = 0 (a reset
that starts an episode) that no controller acts on within ``start_timeout``. Without any
lock-step controller the simulator runs free, except at a held start (requested only for a
controller known to answer). A controller counts from its first answer even before the graph
shows its publisher: under load the driver discovered the expert seconds after the expert had
started the scene, and the scene ran free meanwhile (a CI run: stages 0.04 s apart from the
idle run). ROS-free: the driver node feeds it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Answer:
    acting: bool
    commands: int


@dataclass
class StepGate:
    """Answers and commands for the latest observation; :meth:`ready` decides."""

    step_timeout: float = 5.0
    """wall seconds an observation may wait for its answers"""
    start_timeout: float = 30.0
    """wall seconds a scene held at its start may wait for a controller that acts on it"""
    clock: Callable[[], float] = time.monotonic
    awaited: int | None = None
    """the observation waited on (stamp, integer nanoseconds)"""
    start: bool = False
    """the observation is a scene's first and the episode waits for a controller to act"""
    answers: dict[str, Answer] = field(default_factory=dict)
    handled: int = 0
    """commands that reached the driver since the observation was published"""
    since: float = 0.0
    known: set[str] = field(default_factory=set)
    """controllers that have answered, waited on whatever the graph shows so far"""
    peak: int = 0
    """the most lock-step controllers the graph has shown since ``known`` last changed"""

    def observed(self, stamp_ns: int, start: bool = False) -> None:
        """A new observation is being published: wait on it from now."""
        self.awaited, self.start = int(stamp_ns), bool(start)
        self.answers.clear()
        self.handled = 0
        self.since = self.clock()

    def answered(self, stamp_ns: int, controller: str, acting: bool, commands: int) -> None:
        """A controller's answer; answers to other observations are late ones and ignored; a
        controller's later answer replaces its earlier one (idle, then acting once its
        episode starts)."""
        if controller not in self.known:
            self.known.add(controller)
            self.peak = 0
        if self.awaited is not None and int(stamp_ns) == self.awaited:
            self.answers[controller] = Answer(bool(acting), int(commands))

    def command_handled(self) -> None:
        """A command (accepted or refused) reached the driver."""
        self.handled += 1

    def ready(self, controllers: int) -> tuple[bool, str]:
        """(may the simulation advance, why it does so without its answers ('' when it has
        them)) for ``controllers`` lock-step controllers on the graph."""
        controllers = self._expected(controllers)
        if self.awaited is None or (controllers <= 0 and not self.start):
            return True, ""
        # a scene held at its start waits for a controller to act even before this driver has
        # discovered any: whoever asked for the hold knows its controller answers (the episode
        # node asks only then); under load, discovery lagged the reset by 2 s and the scene
        # ran free meanwhile (a CI run: every stage 2.0 s late)
        announced = sum(a.commands for a in self.answers.values())
        acting = any(a.acting for a in self.answers.values())
        if len(self.answers) >= controllers and self.handled >= announced and \
                (acting or not self.start):
            return True, ""
        waited = self.clock() - self.since
        limit = self.start_timeout if self.start else self.step_timeout
        if waited < limit:
            return False, ""
        t = self.awaited * 1e-9
        if self.start and not acting:
            why = f"no controller acted on the new scene within {limit:.0f} s; starting it"
        elif len(self.answers) < controllers:
            why = (f"{len(self.answers)} of {controllers} controllers answered the "
                   f"observation of t = {t:.2f} s within {limit:.1f} s; advancing without them")
            self.known &= set(self.answers)    # the silent ones wait on the graph again
        else:
            why = (f"{self.handled} of the {announced} commands announced for t = {t:.2f} s "
                   f"arrived within {limit:.1f} s; advancing without them")
        self.awaited = None           # one warning per observation
        return True, why

    def _expected(self, on_graph: int) -> int:
        """How many controllers to wait for: the graph's count, or the controllers that have
        answered while the graph has not shown them all yet (discovery lags); once it has, a
        lower count means one left, and the graph is trusted again."""
        self.peak = max(self.peak, on_graph)
        if on_graph < len(self.known) and self.peak >= len(self.known):
            self.known.clear()
            self.peak = on_graph
        return max(on_graph, len(self.known))
