"""Shared pytest fixtures: every test session runs on its own ROS domain, localhost only."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from grrl_trainer.testing import ProcessFactory, RosTestNode, isolated_ros_env


@pytest.fixture(scope="session", autouse=True)
def ros_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Isolate the session: ROS_DOMAIN_ID of its own, localhost discovery, ROS_HOME in tmp."""
    env = isolated_ros_env(tmp_path_factory.mktemp("ros_home"))
    os.environ.update(env)
    return env


@pytest.fixture
def processes(tmp_path: Path, ros_env: dict[str, str]):
    """Start node/launch processes; all are stopped after the test and none may be left."""
    factory = ProcessFactory(dict(os.environ), tmp_path)
    yield factory
    stray = factory.cleanup()
    assert not stray, f"processes left running after the test: {stray}"


@pytest.fixture
def ros_node(ros_env: dict[str, str]):
    """A probe node spinning in the background, for subscribing, calling and graph waits."""
    node = RosTestNode()
    yield node
    node.close()
