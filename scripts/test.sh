#!/usr/bin/env bash
# Run the test suite on the CPU: creates .venv in the repository root when missing,
# installs requirements.txt into it, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # the many small scan ops crawl with oversubscribed threads
exec .venv/bin/python -m pytest -q "$@"
