#!/usr/bin/env bash
# Install what the tests need and run them: the one test command of the README.
#   bash tests/run.sh [pytest args…]
# Makes .venv (if missing), installs requirements.txt, installs Chromium (for the
# browser tests in tests/dashboard/) when /usr/bin/chromium is missing, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CHROMIUM=/usr/bin/chromium

# Playwright drives Debian's Chromium (it cannot download its own browser here).
ensure_chromium() {
    [ -x "$CHROMIUM" ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "tests/run.sh: $CHROMIUM is missing and apt-get is not available; install Chromium at $CHROMIUM" >&2
        return 1
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "tests/run.sh: installing Chromium needs root or sudo" >&2
            return 1
        fi
        sudo=sudo
    fi
    echo "tests/run.sh: $CHROMIUM is missing: installing chromium with apt-get" >&2
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    if [ ! -x "$CHROMIUM" ]; then
        echo "tests/run.sh: apt-get installed chromium but $CHROMIUM is still missing" >&2
        return 1
    fi
}
ensure_chromium
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
