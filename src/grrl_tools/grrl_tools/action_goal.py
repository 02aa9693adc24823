"""Sending an action goal when its answer can be lost.

Right after a client is discovered, Fast DDS drops a service reply whose reader the server has
not matched within 100 ms ("client will not receive response"); on a loaded machine that
happens to the first goal of a new action client. rclpy's server then keeps the goal accepted
but never executes it, and the client waits for ever. A goal whose acceptance is not answered
within ``attempt_timeout`` is therefore sent again (a new goal id); whichever request is
answered first decides. The lost goal cannot run: its server never started it.
"""
from __future__ import annotations

import time
from typing import Any, Callable

Wait = Callable[[Callable[[], bool], float], None]
"""``wait(predicate, timeout)``: return once ``predicate()`` is true or ``timeout`` s passed
(spinning the client's node meanwhile, if nobody else does)."""


def poll(predicate: Callable[[], bool], timeout: float, period: float = 0.01) -> None:
    """A ``Wait`` for a client whose node another thread spins."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(period)


def send_goal(client: Any, goal: Any, wait: Wait = poll, attempt_timeout: float = 5.0,
              attempts: int = 4, **kwargs: Any) -> Any:
    """Send ``goal`` and return the server's goal handle (accepted or not), asking again when
    an answer does not come; ``kwargs`` go to ``send_goal_async`` (e.g. feedback_callback).
    Raises ``TimeoutError`` when none of ``attempts`` requests is answered."""
    futures: list = []
    for _ in range(attempts):
        futures.append(client.send_goal_async(goal, **kwargs))
        wait(lambda: any(f.done() for f in futures), attempt_timeout)
        answers = [f.result() for f in futures if f.done() and f.result() is not None]
        if answers:
            accepted = [h for h in answers if h.accepted]
            return accepted[0] if accepted else answers[0]
    raise TimeoutError(f"no answer to a goal on {getattr(client, '_action_name', '?')} after {attempts} "
                       f"requests of {attempt_timeout:.0f} s each")
