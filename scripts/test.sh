#!/usr/bin/env bash
# Run the test suite on the CPU: creates .venv in the repository root when missing,
# installs requirements.txt into it, then runs pytest in $MTL_TEST_WORKERS processes (default 2, one per core of
# the CI machine; 0 runs in this process). Tests go out in xdist's default 'load' order (a run in its 'worksteal'
# order hung at the end of the suite with one test never reported). A hung test fails after pytest.ini's timeout.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # the many small scan ops crawl with oversubscribed threads
workers="${MTL_TEST_WORKERS:-2}"
if [ "$workers" = 0 ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
exec .venv/bin/python -m pytest -q -n "$workers" "$@"
