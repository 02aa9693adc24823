"""Every launch file of the product resolves (packages, executables, parameter files)."""
from __future__ import annotations

from pathlib import Path

import pytest

from grrl_tools.launch_description import load_launch_file

LAUNCH = sorted((Path(__file__).resolve().parents[1] / "launch").glob("*.launch.xml"))


@pytest.mark.parametrize("path", LAUNCH, ids=[p.name for p in LAUNCH])
def test_launch_file_resolves(path: Path):
    desc = load_launch_file(path)
    assert desc.processes, f"{path.name} starts nothing"
    for spec in desc.processes:
        assert Path(spec.cmd[0]).is_file()


def test_sim_launch_arguments():
    desc = load_launch_file(LAUNCH[0].parent / "sim.launch.xml",
                            {"controller": "none", "episodes": "0"})
    names = [p.name for p in desc.processes]
    assert names == ["bytemini_driver", "episode_node"]
    full = load_launch_file(LAUNCH[0].parent / "sim.launch.xml")
    assert [p.name for p in full.processes if p.required] == ["run_episodes"]
