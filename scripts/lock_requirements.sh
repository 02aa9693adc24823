#!/usr/bin/env bash
# Resolve requirements.txt in a throw-away venv and write the full pinned set to
# requirements.lock (what scripts/setup.sh installs). Run after editing requirements.txt.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
"${GRRL_PYTHON:-python3.11}" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet -r "$ROOT/requirements.txt" 2>&1 | { grep -v "^WARNING: Location" || true; }
"$tmp/venv/bin/python" - "$ROOT/requirements.lock" <<'PY'
import importlib.metadata as md
import pathlib
import sys

pins = set()
for dist in md.distributions():
    # The ROS wheels also carry the egg-info of their inner packages; only real installs count.
    if not pathlib.Path(dist._path).name.endswith(".dist-info"):
        continue
    name, version = dist.metadata["Name"], dist.version
    if name.lower() in ("pip", "setuptools"):
        continue
    if name.lower() == "torch":
        version = version.split("+")[0]  # the local CPU wheel is found by its plain version
    pins.add(f"{name}=={version}")
header = ("# Full pinned environment (generated from requirements.txt by resolving it in a fresh venv;\n"
          "# regenerate with scripts/lock_requirements.sh). torch is the CPU build from the local wheel.\n")
pathlib.Path(sys.argv[1]).write_text(header + "\n".join(sorted(pins, key=str.lower)) + "\n")
PY
echo "wrote $ROOT/requirements.lock"
