"""Shared pytest fixtures: every test session runs on its own ROS domain, localhost only.

``GRRL_ABSENT_PACKAGES=a,b`` runs the session as if the packages ``a`` and ``b`` were not
installed: importing them (or their submodules) raises ModuleNotFoundError. CI runs the policy
package's tests that way (test.sh) to prove an integrator can use it without our simulator,
trainer and critic.
"""
from __future__ import annotations

import importlib.abc
import os
import sys
from pathlib import Path

import pytest

ABSENT_ENV = "GRRL_ABSENT_PACKAGES"


class AbsentPackages(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` finder that makes ``import <name>`` of the given top-level packages
    fail, as on a machine where they are not installed."""

    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in self.names:
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: {top!r} is treated as not installed in this test "
                f"session ({ABSENT_ENV}={os.environ.get(ABSENT_ENV, '')})", name=fullname)
        return None


def _install_absent_packages() -> None:
    names = {n.strip() for n in os.environ.get(ABSENT_ENV, "").split(",") if n.strip()}
    if not names:
        return
    # first on the path, before the finders that would find the installed package; and
    # forget what was imported already, or `import` would return it from sys.modules
    sys.meta_path.insert(0, AbsentPackages(names))
    for module in [m for m in sys.modules if m.partition(".")[0] in names]:
        del sys.modules[module]


_install_absent_packages()

# after the finder, so that the harness cannot bring an absent package in
from grrl_tools.testing import ProcessFactory, RosTestNode, isolated_ros_env  # noqa: E402


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
