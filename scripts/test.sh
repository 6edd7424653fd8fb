#!/usr/bin/env bash
# Runs the whole test suite: unit, integration, property and CLI tests, and the doc tests.
#
# PostgreSQL: the tests use DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/postgres). When nothing answers there but
# the PostgreSQL server binaries are installed, a throw-away cluster is started
# in a temporary directory for this run and removed afterwards. Tests that need
# PostgreSQL never skip: without one they fail and say how to get one.
set -euo pipefail
cd "$(dirname "$0")/.."

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

find_pg_bin() {
  local name=$1
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  ls -1d /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -n 1
}

pg_answers() {
  local isready
  isready=$(find_pg_bin pg_isready)
  if [ -n "$isready" ]; then
    "$isready" -q -d "$DATABASE_URL" >/dev/null 2>&1
  else
    # No client tools: try the TCP port named in the URL.
    local hostport=${DATABASE_URL#*://}; hostport=${hostport#*@}; hostport=${hostport%%/*}
    local host=${hostport%%:*} port=5432
    [ "$hostport" != "$host" ] && port=${hostport##*:}
    timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
  fi
}

tmp_cluster=""
cleanup() {
  if [ -n "$tmp_cluster" ]; then
    run_as_pg "$(find_pg_bin pg_ctl)" -D "$tmp_cluster/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$tmp_cluster"
  fi
}
trap cleanup EXIT

run_as_pg() {
  # initdb and postgres refuse to run as root.
  if [ "$(id -u)" = 0 ]; then
    if id postgres >/dev/null 2>&1; then
      runuser -u postgres -- "$@"
    else
      setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"
    fi
  else
    "$@"
  fi
}

if ! pg_answers; then
  initdb=$(find_pg_bin initdb)
  if [ -z "$initdb" ]; then
    echo "test.sh: no PostgreSQL answers at $DATABASE_URL and no server binaries are installed." >&2
    echo "test.sh: install them (apt-get install postgresql) or set DATABASE_URL; the database tests will fail." >&2
  else
    tmp_cluster=$(mktemp -d /tmp/stringdriverd-pg.XXXXXX)
    chmod 755 "$tmp_cluster"
    if [ "$(id -u)" = 0 ]; then
      if id postgres >/dev/null 2>&1; then chown postgres "$tmp_cluster"; else chown 65534:65534 "$tmp_cluster"; fi
    fi
    port=$(( 20000 + RANDOM % 20000 ))
    echo "test.sh: no PostgreSQL at $DATABASE_URL; starting a throw-away cluster on 127.0.0.1:$port" >&2
    run_as_pg "$initdb" -D "$tmp_cluster/data" -U postgres --auth=trust -E UTF8 >/dev/null
    run_as_pg "$(find_pg_bin pg_ctl)" -D "$tmp_cluster/data" -l "$tmp_cluster/log" -w \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $tmp_cluster -c fsync=off" start >/dev/null
    export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  fi
fi

# Chromium, chromedriver and pyarrow for the browser and dataset tests.
scripts/ensure-test-tools.sh

cargo test --doc
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-targets --no-fail-fast
else
  cargo test --all-targets --no-fail-fast
fi
