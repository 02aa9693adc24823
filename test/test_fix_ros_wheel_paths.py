"""scripts/fix_ros_wheel_paths.py rewrites the wheel build paths once and only once."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fix_ros_wheel_paths.py"
spec = importlib.util.spec_from_file_location("fix_ros_wheel_paths", SCRIPT)
fix = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fix)
B = fix.BUILD_PREFIX


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    share = tmp_path / "share"
    (share / "pkg" / "cmake").mkdir(parents=True)
    (share / "ament_index").mkdir()
    (share / "pkg" / "cmake" / "export.cmake").write_text(
        f'set(inc "{B}/include/python3.11;{B}/lib/python3.11/site-packages/numpy/_core/include")\n'
        f'set(site "{B}/lib/python3.11/site-packages/foo")\n')
    (share / "ament_index" / "parent_prefix_path").write_text(B)
    (share / "pkg" / "untouched.cmake").write_text("set(x 1)\n")
    (share / "pkg" / "blob.bin").write_bytes(b"\xff\xfe" + B.encode() + b"\x00\xff")
    return tmp_path


def test_rewrites_once_and_is_idempotent(tree: Path):
    pairs = [(f"{B}/lib/python3.11/site-packages/numpy/_core/include", "/np/include"),
             (f"{B}/lib/python3.11/site-packages", "/venv/site"),
             (f"{B}/include/python3.11", "/py/include"),
             (B, "/venv")]
    untouched = (tree / "share" / "pkg" / "untouched.cmake").stat().st_mtime_ns
    changed = fix.fix_tree(tree, pairs)
    assert sorted(p.name for p in changed) == ["export.cmake", "parent_prefix_path"]
    text = (tree / "share" / "pkg" / "cmake" / "export.cmake").read_text()
    assert text == ('set(inc "/py/include;/np/include")\n'
                    'set(site "/venv/site/foo")\n')
    assert (tree / "share" / "ament_index" / "parent_prefix_path").read_text() == "/venv"
    assert (tree / "share" / "pkg" / "untouched.cmake").stat().st_mtime_ns == untouched
    assert (tree / "share" / "pkg" / "blob.bin").read_bytes().startswith(b"\xff\xfe/opt")
    assert fix.fix_tree(tree, pairs) == []


def test_default_pairs_point_at_this_interpreter(tmp_path: Path):
    pairs = dict(fix.replacements(tmp_path))
    assert pairs[B] == str(tmp_path)
    inc = pairs[f"{B}/include/python3.11"]
    assert (Path(inc) / "Python.h").is_file()
    assert Path(pairs[f"{B}/lib/python3.11/site-packages/numpy/_core/include"]).is_dir()


def test_missing_share_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="is .* a venv with the ROS 2 wheels"):
        fix.fix_tree(tmp_path)


def test_the_workspace_venv_is_fixed():
    # The venv running the tests went through setup: no build path may remain in it.
    changed = fix.fix_tree(Path(sys.prefix), [])  # empty pairs: only report what still matches
    assert changed == [], f"unfixed files: {changed[:5]}"
