#!/usr/bin/env python3
"""Rewrite the wheel-build interpreter paths baked into the ROS 2 PyPI wheels.

The ROS 2 Kilted wheels are built in a manylinux container whose Python lives at
``/opt/python/cp311-cp311``. About 90 files under ``<prefix>/share`` (CMake export
files of the rosidl Python generators and ament ``parent_prefix_path`` markers) keep that
path, so ``colcon build`` of an interface package cannot find ``Python.h`` or NumPy's
headers. This script rewrites them to the interpreter that runs it (normally the
workspace's ``.venv/bin/python``).

Idempotent: once rewritten, the build path no longer occurs and a second run changes
nothing. Only text files that contain the build path are touched.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import sysconfig
from pathlib import Path

LOG = logging.getLogger("fix_ros_wheel_paths")

#: Interpreter prefix of the manylinux container the wheels were built in.
BUILD_PREFIX = "/opt/python/cp311-cp311"


def replacements(prefix: Path) -> list[tuple[str, str]]:
    """Ordered (old, new) pairs, longest first so sub-paths are rewritten before the prefix."""
    import numpy  # the rosidl Python generator compiles against NumPy's C API

    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = sysconfig.get_paths()["purelib"]
    return [
        (f"{BUILD_PREFIX}/lib/{ver}/site-packages/numpy/_core/include", numpy.get_include()),
        (f"{BUILD_PREFIX}/lib/{ver}/site-packages", site),
        (f"{BUILD_PREFIX}/include/{ver}", sysconfig.get_paths()["include"]),
        (BUILD_PREFIX, str(prefix)),
    ]


def fix_tree(prefix: Path, pairs: list[tuple[str, str]] | None = None) -> list[Path]:
    """Rewrite every file under ``prefix/share`` that mentions the build prefix.

    Returns the files changed (empty on a second run).
    """
    pairs = pairs if pairs is not None else replacements(prefix)
    share = prefix / "share"
    if not share.is_dir():
        raise FileNotFoundError(f"{share} does not exist: is {prefix} a venv with the ROS 2 wheels?")
    changed: list[Path] = []
    needle = BUILD_PREFIX.encode()
    for root, _dirs, files in os.walk(share):
        for name in files:
            path = Path(root) / name
            if path.is_symlink():
                continue
            try:
                raw = path.read_bytes()
            except OSError:
                continue
            if needle not in raw:
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                LOG.warning("skipping binary file %s", path)
                continue
            for old, new in pairs:
                text = text.replace(old, new)
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", type=Path, default=Path(sys.prefix),
                        help="venv prefix holding the ROS 2 wheels (default: this interpreter's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    changed = fix_tree(args.prefix.resolve())
    LOG.info("fix_ros_wheel_paths: rewrote %d file(s) under %s/share", len(changed), args.prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
