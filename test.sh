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
exit "$rc"
