#!/usr/bin/env bash
# Install what the tests need and run them: the one test command of the README.
#   bash tests/run.sh [pytest args…]
# Makes .venv (if missing), installs requirements.txt, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "tests/run.sh: pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$status"
