#!/usr/bin/env bash
# The README's main command: set the workspace up if needed, then run GR-RL in simulation:
# the simulated ByteMini-v2, the episode node and the shipped trained policy
# (checkpoints/grrl_sim_state: GR-RL's result, BC on filtered + mirrored flawed demonstrations
# steered by online RL, 91/100 held out; it acts with its noise predictor, steer:=true), for one
# episode by default, printing the result of each episode and the success rate.
# Launch arguments pass through: ./start.sh episodes:=5 seed:=100 real_time_factor:=0
# Naming a controller (controller:=expert, controller:=policy checkpoint:=PATH, ...) replaces
# the shipped policy.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
scripts/setup.sh || exit 1
. ./env.sh
shipped=checkpoints/grrl_sim_state.safetensors
defaults=()
if [ -f "$shipped" ] && ! printf '%s\n' "$@" | grep -qE '^(controller|checkpoint):='; then
  defaults=(controller:=policy "checkpoint:=$PWD/$shipped" steer:=true publish_images:=false)
fi
exec grrl-launch grrl_trainer sim.launch.xml "${defaults[@]}" "$@"
