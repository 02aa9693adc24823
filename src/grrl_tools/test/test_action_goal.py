"""send_goal asks again when a goal's acceptance is lost, and takes the first answer."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from grrl_tools.action_goal import send_goal


class Future:
    def __init__(self) -> None:
        self.value = None
        self.is_done = False

    def done(self) -> bool:
        return self.is_done

    def result(self):
        return self.value

    def answer(self, accepted: bool) -> None:
        self.value, self.is_done = SimpleNamespace(accepted=accepted), True


class Client:
    """Answers request i (0-based) as ``answers[i]``: None = the reply is lost."""
    _action_name = "/run"

    def __init__(self, answers: list) -> None:
        self.answers, self.sent = answers, []

    def send_goal_async(self, goal, **kwargs):
        future = Future()
        self.sent.append((goal, kwargs, future))
        answer = self.answers[len(self.sent) - 1]
        if answer is not None:
            future.answer(answer)
        return future


def no_wait(predicate, timeout):
    pass


def test_a_lost_acceptance_is_asked_again():
    client = Client([None, None, True])
    handle = send_goal(client, "goal", no_wait, feedback_callback=print)
    assert handle.accepted and len(client.sent) == 3
    assert all(g == "goal" and kw == {"feedback_callback": print} for g, kw, _ in client.sent)


def test_an_answered_rejection_is_returned_not_retried():
    client = Client([False, True])
    assert not send_goal(client, "goal", no_wait).accepted
    assert len(client.sent) == 1


def test_a_late_answer_to_an_earlier_request_counts():
    client = Client([None, None, None])

    def wait(predicate, timeout):
        if len(client.sent) == 2:          # the first request's reply arrives late
            client.sent[0][2].answer(True)
    handle = send_goal(client, "goal", wait)
    assert handle.accepted and len(client.sent) == 2


def test_no_answer_at_all_is_a_clear_timeout():
    with pytest.raises(TimeoutError, match="no answer to a goal on /run after 3 requests"):
        send_goal(Client([None] * 3), "goal", no_wait, attempts=3)
