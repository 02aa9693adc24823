"""A throw-away ament package, grrl_testpkg, whose executables are test/nodes/param_talker.py and stuck_on_stop.py."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

NODES = Path(__file__).resolve().parent.parent / "nodes"
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def testpkg_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix = tmp_path_factory.mktemp("testpkg_prefix")
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / "grrl_testpkg").write_text("")
    (prefix / "share" / "grrl_testpkg").mkdir()
    lib = prefix / "lib" / "grrl_testpkg"
    lib.mkdir(parents=True)
    for name in ("param_talker", "stuck_on_stop"):
        exe = lib / name
        exe.write_text(f"#!{sys.executable}\n" + (NODES / f"{name}.py").read_text())
        exe.chmod(0o755)
    (lib / "not_executable").write_text("")
    return prefix


@pytest.fixture
def testpkg(testpkg_prefix: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put grrl_testpkg on AMENT_PREFIX_PATH for this test (and the processes it starts)."""
    monkeypatch.setenv("AMENT_PREFIX_PATH",
                       f"{testpkg_prefix}{os.pathsep}{os.environ.get('AMENT_PREFIX_PATH', '')}")
    return testpkg_prefix


@pytest.fixture
def launch_dir() -> Path:
    return HERE / "files"
