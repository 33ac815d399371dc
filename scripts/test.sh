#!/usr/bin/env bash
# Run the test suite on the CPU: creates .venv in the repository root when missing,
# installs requirements.txt into it, then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -r requirements.txt
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # the many small scan ops crawl with oversubscribed threads
exec .venv/bin/python -m pytest -q "$@"
