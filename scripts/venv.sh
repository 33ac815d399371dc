# Sourced by test.sh and demo.sh from the repository root: creates .venv when missing and installs
# requirements.txt into it (quick when everything is already installed).
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -r requirements.txt
