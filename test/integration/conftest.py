"""Helpers to start the driver and episode nodes as real processes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

NODES = Path(__file__).resolve().parent.parent / "nodes"


def ros_node_cmd(pkg: str, exe: str, **params) -> list[str]:
    from ament_index_python.packages import get_package_prefix

    cmd = [str(Path(get_package_prefix(pkg)) / "lib" / pkg / exe), "--ros-args"]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={str(v).lower() if isinstance(v, bool) else v}"]
    return cmd


@pytest.fixture
def start_node(processes):
    """start_node(pkg, exe, **params): a node process that can import test/nodes."""
    def start(pkg: str, exe: str, **params):
        env = {"PYTHONPATH": f"{NODES}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        return processes.start(ros_node_cmd(pkg, exe, **params), env=env)
    return start
