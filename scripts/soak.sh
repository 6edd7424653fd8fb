#!/usr/bin/env bash
# The soak and fault-injection run (tests/soak.rs): the daemon as a real
# process against simulated boards and feed and a real PostgreSQL, with
# database cuts, unplugged boards, a removed feed, SIGKILLs and reloads on a
# schedule; prints the faults and the accounting of every record.
#
#   scripts/soak.sh            # the short form CI runs (240 s)
#   scripts/soak.sh 3600       # an hour
#
# PostgreSQL as for scripts/test.sh (DATABASE_URL, default
# postgres://postgres@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export SOAK_SECONDS="${1:-${SOAK_SECONDS:-240}}"
cargo test --test soak
