"""The test helpers' own behaviour that the DDS tests rely on."""
import pytest

from grrl_tools.testing import RosTestNode


class FlakyClient:
    """rclpy's Client.call as it behaves when answers are lost: TimeoutError (newer rclpy) or
    None (older), then an answer."""
    srv_name = "/reset_scene"

    def __init__(self, lost: list) -> None:
        self.lost = lost
        self.calls = 0

    def call(self, request, timeout_sec=None):
        self.calls += 1
        if self.lost:
            outcome = self.lost.pop(0)
            if outcome is TimeoutError:
                raise TimeoutError()
            return outcome
        return f"answer to {request}"


def test_a_lost_or_late_answer_is_asked_for_again():
    client = FlakyClient([TimeoutError, None, TimeoutError])
    assert RosTestNode.call(None, client, "reset", timeout=0.01) == "answer to reset"
    assert client.calls == 4


def test_no_answer_at_all_is_a_clear_timeout():
    client = FlakyClient([TimeoutError] * 12)
    with pytest.raises(TimeoutError, match="no answer from /reset_scene after 12 attempts"):
        RosTestNode.call(None, client, "reset", timeout=0.01)
    client = FlakyClient([TimeoutError] * 3)
    with pytest.raises(TimeoutError, match="no answer from /reset_scene after 3 attempts"):
        RosTestNode.call(None, client, "reset", timeout=0.01, attempts=3)
