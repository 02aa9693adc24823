#!/usr/bin/env bash
# The README's main command: set the workspace up if needed, then run GR-RL in simulation:
# the simulated ByteMini-v2, the episode node and a controller, for one episode by default.
# Launch arguments pass through: ./start.sh episodes:=5 seed:=100 real_time_factor:=0
# Until a trained policy is shipped the controller is the scripted expert.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
scripts/setup.sh || exit 1
. ./env.sh
exec grrl-launch grrl_trainer sim.launch.xml "$@"
