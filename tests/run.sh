#!/usr/bin/env bash
# Install what the tests need and run them: the one test command of the README.
#   bash tests/run.sh [pytest args…]
# Makes .venv (if missing), installs requirements-test.lock (the exact, hash-checked
# versions of requirements-test.txt: the server's runtime set and the tests'; written by
# bash tools/lock.sh), installs Chromium (for the
# browser tests in tests/dashboard/) when /usr/bin/chromium is missing, and nginx (the
# district's proxy example, tests/process/test_deploy.py) when missing, Node.js and npm
# when missing (the JS client's tests under Node) and tests/js's npm packages, makes sure a
# Redis answers (the queue tests): the one on 127.0.0.1:6379, or else a throwaway
# redis-server on a free port (installed with apt-get if missing, stopped at exit,
# its URL exported as HEALTHSYNC_TEST_REDIS_URL), makes sure a PostgreSQL answers (the
# storage contract): the one on 127.0.0.1:5432, or else a throwaway cluster (initdb into a
# temp dir, as user postgres when run as root; Debian's postgresql installed with apt-get
# if missing; stopped and removed at exit, its URL exported as
# HEALTHSYNC_TEST_POSTGRES_URL), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CHROMIUM=/usr/bin/chromium
REDIS_SERVER=/usr/bin/redis-server

# Playwright drives Debian's Chromium (it cannot download its own browser here).
# root, or sudo, to install a Debian package; fails saying what to install otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        return 1
    fi
}

redis_answers() {  # host port
    "$PY" - "$1" "$2" <<'PYEOF' 2>/dev/null
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as s:
    s.sendall(b"PING\r\n")
    sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
PYEOF
}

# The queue tests need a real Redis, left as found: they use db 15 and their own keys.
ensure_redis() {
    if [ -n "${HEALTHSYNC_TEST_REDIS_URL:-}" ] || redis_answers 127.0.0.1 6379; then
        return 0
    fi
    if [ ! -x "$REDIS_SERVER" ]; then
        if ! command -v apt-get >/dev/null 2>&1 ||
            ! { echo "tests/run.sh: no Redis on 127.0.0.1:6379: installing redis-server with apt-get" >&2 &&
                as_root apt-get update -qq &&
                as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } ||
            [ ! -x "$REDIS_SERVER" ]; then
            echo "tests/run.sh: the tests need Redis: install the redis-server package (or run one on" \
                "127.0.0.1:6379, or set HEALTHSYNC_TEST_REDIS_URL)" >&2
            return 1
        fi
    fi
    local port
    port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
        >/dev/null 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 50); do
        redis_answers 127.0.0.1 "$port" && break
        sleep 0.1
    done
    if ! redis_answers 127.0.0.1 "$port"; then
        echo "tests/run.sh: the throwaway redis-server on port $port did not start" >&2
        return 1
    fi
    export HEALTHSYNC_TEST_REDIS_URL="redis://127.0.0.1:$port"
    echo "tests/run.sh: no Redis on 127.0.0.1:6379: started a throwaway one at $HEALTHSYNC_TEST_REDIS_URL" >&2
}

port_answers() {  # host port: something accepts a TCP connection there
    "$PY" - "$1" "$2" <<'PYEOF' 2>/dev/null
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
PYEOF
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_bindir() {  # where initdb and pg_ctl are (Debian keeps them off PATH), or nothing
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    else
        find /usr/lib/postgresql -maxdepth 3 -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n 1 |
            xargs -r dirname
    fi
}

# The storage contract needs a real PostgreSQL; the tests make (and drop) a database of their own.
ensure_postgres() {
    if [ -n "${HEALTHSYNC_TEST_POSTGRES_URL:-}" ] || port_answers 127.0.0.1 5432; then
        return 0
    fi
    local bin
    bin=$(pg_bindir)
    if [ -z "$bin" ]; then
        if ! command -v apt-get >/dev/null 2>&1 ||
            ! { echo "tests/run.sh: no PostgreSQL on 127.0.0.1:5432: installing postgresql with apt-get" >&2 &&
                as_root apt-get update -qq &&
                as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }; then
            bin=""
        else
            bin=$(pg_bindir)
        fi
    fi
    local why=""
    if [ -z "$bin" ]; then
        why="initdb is not installed"
    elif [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        why="running as root and there is no user postgres to run initdb as"
    fi
    if [ -z "$why" ]; then
        PG_DIR=$(mktemp -d)
        PG_BIN=$bin
        PG_AS=()
        if [ "$(id -u)" -eq 0 ]; then  # initdb refuses root
            chown postgres "$PG_DIR"
            PG_AS=(runuser -u postgres --)
        fi
        local port
        port=$(free_port)
        if "${PG_AS[@]}" "$PG_BIN/initdb" -U postgres -A trust -D "$PG_DIR/data" >"$PG_DIR/initdb.log" 2>&1 &&
            "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 30 \
                -o "-F -p $port -k $PG_DIR -c listen_addresses=127.0.0.1" start >/dev/null 2>&1; then
            export HEALTHSYNC_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$port/postgres"
            echo "tests/run.sh: no PostgreSQL on 127.0.0.1:5432: started a throwaway one at" \
                "$HEALTHSYNC_TEST_POSTGRES_URL" >&2
            return 0
        fi
        why="the throwaway cluster did not start: $(tail -n 3 "$PG_DIR"/*.log 2>/dev/null | tr '\n' ' ')"
        stop_postgres
    fi
    echo "tests/run.sh: the tests need PostgreSQL ($why): install the postgresql package (or run one" \
        "on 127.0.0.1:5432 with user postgres and trust, or set HEALTHSYNC_TEST_POSTGRES_URL)" >&2
    return 1
}

stop_postgres() {
    [ -n "${PG_DIR:-}" ] || return 0
    if [ -f "$PG_DIR/data/postmaster.pid" ]; then
        "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$PG_DIR"
    PG_DIR=""
}

cleanup() {
    if [ -n "${REDIS_PID:-}" ]; then
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
    fi
    stop_postgres
}
trap cleanup EXIT

# ensure_package PATH PACKAGE: install Debian's PACKAGE with apt-get when PATH is missing
# (Chromium for the browser tests, nginx for the district's proxy example).
ensure_package() {
    local path=$1 package=$2
    [ -x "$path" ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "tests/run.sh: $path is missing and apt-get is not available; install $package" >&2
        return 1
    fi
    echo "tests/run.sh: $path is missing: installing $package with apt-get" >&2
    if ! { as_root apt-get update -qq &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package"; }; then
        echo "tests/run.sh: installing $package needs root or sudo; install it by hand" >&2
        return 1
    fi
    if [ ! -x "$path" ]; then
        echo "tests/run.sh: apt-get installed $package but $path is still missing" >&2
        return 1
    fi
}
ensure_package "$CHROMIUM" chromium
ensure_package /usr/sbin/nginx nginx-light
# The JS client's tests run it under Node too (tests/dashboard/test_client_runtimes.py): Node's own
# WebSocket (Node 22, or Node 20 with --experimental-websocket; Debian 12's nodejs 18 has none) and the
# npm package ws, pinned in tests/js/package-lock.json.
command -v node >/dev/null 2>&1 || ensure_package /usr/bin/node nodejs
command -v npm >/dev/null 2>&1 || ensure_package /usr/bin/npm npm
npm ci --prefix tests/js --no-audit --no-fund --prefer-offline --loglevel=error
ensure_redis
ensure_postgres
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --disable-pip-version-check -q --require-hashes -r requirements-test.lock
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "tests/run.sh: pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$status"
