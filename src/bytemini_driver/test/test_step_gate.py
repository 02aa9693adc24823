"""The lock-step gate: when a simulator may advance past its latest observation."""
from bytemini_driver.lockstep import StepGate


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_free_running_without_lockstep_controllers():
    gate = StepGate(clock=Clock())
    gate.observed(20_000_000)
    assert gate.ready(0) == (True, "")


def test_a_held_start_waits_even_before_any_controller_is_discovered():
    clock = Clock()
    gate = StepGate(start_timeout=30.0, clock=clock)
    gate.observed(0, start=True)
    clock.t = 2.0
    assert gate.ready(0) == (False, "")                # discovery may lag the reset
    gate.answered(0, "/expert", True, 0)
    assert gate.ready(0) == (True, "")
    # later observations wait for it too, though the graph does not show it yet (a CI run
    # under load: the scene ran free for two periods and every stage came 0.04 s late)
    gate.observed(20_000_000)
    assert gate.ready(0) == (False, "")
    gate.answered(20_000_000, "/expert", True, 1)
    gate.command_handled()
    assert gate.ready(0) == (True, "")


def test_a_controller_that_leaves_the_graph_is_not_waited_for():
    clock = Clock()
    gate = StepGate(step_timeout=5.0, clock=clock)
    gate.observed(20_000_000)
    gate.answered(20_000_000, "/policy", True, 0)
    gate.answered(20_000_000, "/expert", True, 0)
    assert gate.ready(2) == (True, "")
    gate.observed(40_000_000)
    gate.answered(40_000_000, "/expert", True, 0)
    assert gate.ready(1) == (True, "")                 # the graph had shown both: one left
    gate.observed(60_000_000)
    assert gate.ready(1) == (False, "")                # the one still there is waited for
    gate.answered(60_000_000, "/expert", True, 0)
    assert gate.ready(1) == (True, "")


def test_a_silent_controller_costs_one_timeout():
    clock = Clock()
    gate = StepGate(step_timeout=1.0, clock=clock)
    gate.observed(20_000_000)
    gate.answered(20_000_000, "/policy", True, 0)      # answered, never seen on the graph
    assert gate.ready(0) == (True, "")
    gate.observed(40_000_000)
    clock.t = 1.5
    go, why = gate.ready(0)
    assert go and "0 of 1 controllers answered" in why
    gate.observed(60_000_000)
    assert gate.ready(0) == (True, "")                 # forgotten: free again


def test_waits_for_every_controller_and_for_the_commands_they_announce():
    clock = Clock()
    gate = StepGate(step_timeout=5.0, clock=clock)
    gate.observed(20_000_000)
    assert gate.ready(2) == (False, "")
    gate.answered(20_000_000, "/policy", True, 1)
    assert gate.ready(2) == (False, "")               # the expert has not answered
    gate.answered(20_000_000, "/expert", False, 0)
    assert gate.ready(2) == (False, "")               # the policy's command has not arrived
    gate.command_handled()
    assert gate.ready(2) == (True, "")
    gate.observed(40_000_000)                          # the next observation starts afresh
    gate.answered(20_000_000, "/policy", True, 0)      # a late answer to the previous one
    gate.answered(20_000_000, "/expert", True, 0)
    assert gate.ready(2) == (False, "")


def test_a_command_that_overtakes_its_answer_counts():
    gate = StepGate(clock=Clock())
    gate.observed(5)
    gate.command_handled()
    gate.answered(5, "/policy", True, 1)
    assert gate.ready(1) == (True, "")


def test_a_scene_held_at_its_start_waits_for_a_controller_that_acts():
    clock = Clock()
    gate = StepGate(step_timeout=1.0, start_timeout=30.0, clock=clock)
    gate.observed(0, start=True)
    gate.answered(0, "/policy", False, 0)              # idle: its episode has not started
    clock.t = 10.0
    assert gate.ready(1) == (False, "")                # beyond the step timeout, still held
    gate.answered(0, "/policy", True, 1)               # its later answer replaces the first
    gate.command_handled()
    assert gate.ready(1) == (True, "")


def test_waits_are_bounded_with_a_reason_once():
    clock = Clock()
    gate = StepGate(step_timeout=1.0, start_timeout=3.0, clock=clock)
    gate.observed(1_500_000_000)
    gate.answered(1_500_000_000, "/policy", True, 2)
    gate.command_handled()
    clock.t = 0.9
    assert gate.ready(1) == (False, "")
    clock.t = 1.1
    go, why = gate.ready(1)
    assert go and "1 of the 2 commands announced for t = 1.50 s" in why
    assert gate.ready(1) == (True, "")                 # said once
    gate.observed(0, start=True)
    clock.t = 4.2
    go, why = gate.ready(1)
    assert go and "no controller acted on the new scene within 3 s" in why
    gate.observed(20)
    clock.t = 5.3
    go, why = gate.ready(2)
    assert go and "0 of 2 controllers answered" in why
