#!/usr/bin/env bash
# Write the locks: the exact version of every package, with the hashes of its files,
#   requirements.lock       from requirements.txt (the server's runtime set)
#   requirements-test.lock  from requirements-test.txt (that set plus the tests'; its
#                           runtime packages at the very versions of requirements.lock)
# tests/run.sh (so CI) installs requirements-test.lock with `pip install --require-hashes`.
# Run it after changing requirements*.txt (a merge that adds a test dependency, say):
#   bash tools/lock.sh                        keep every pin that still fits, add what is new
#   bash tools/lock.sh --upgrade              move everything to the newest versions that fit
#   bash tools/lock.sh --upgrade-package X    move X alone
# then run the tests and commit the .lock files.  The locks are resolved for Python 3.11
# and newer on every platform (uv's --universal; each release's files are all hashed) and
# used on Linux x86_64 with CPython 3.11, the platform CI runs on.
# It needs PyPI: uv (pinned below) is installed into a throwaway venv, removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
UV_VERSION=0.13.9

tool=$(mktemp -d)
trap 'rm -rf "$tool"' EXIT
"$PY" -m venv "$tool/venv"
"$tool/venv/bin/python" -m pip install --disable-pip-version-check -q "uv==$UV_VERSION"

compile() {  # IN OUT [uv args…]
    local in=$1 out=$2
    shift 2
    "$tool/venv/bin/uv" pip compile --quiet --generate-hashes --universal --python-version 3.11 \
        --custom-compile-command "bash tools/lock.sh" "$@" "$in" -o "$out"
    echo "tools/lock.sh: wrote $out"
}
compile requirements.txt requirements.lock "$@"
compile requirements-test.txt requirements-test.lock -c requirements.lock "$@"
