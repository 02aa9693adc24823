#!/usr/bin/env bash
# The README's test command: set the workspace up if needed, then run the whole suite.
# Extra arguments go to pytest (e.g. ./test.sh -k launcher -x).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
scripts/setup.sh || exit 1
. ./env.sh
python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure, not a pass" >&2
  exit 1
fi
# The whole suite passed: prove that the policy package works without the simulator, trainer
# and critic packages (an integrator with another robot installs grrl_policy alone); the root
# conftest.py makes importing the packages named here fail. Not for a selection (arguments).
if [ "$rc" -eq 0 ] && [ "$#" -eq 0 ]; then
  echo "test.sh: grrl_policy's tests without bytemini_driver, grrl_trainer, grrl_critic" >&2
  GRRL_ABSENT_PACKAGES=bytemini_driver,grrl_trainer,grrl_critic python -m pytest src/grrl_policy/test -q
  rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no grrl_policy tests; that is a failure, not a pass" >&2
    exit 1
  fi
fi
exit "$rc"
