#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ for SECONDS each (default 300): the
# long form of CI's short runs.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      (default: every target)
#
# The committed seeds (fuzz/corpus/<target>/seed-*) are read, never written:
# libFuzzer adds what it finds to the first corpus directory it is given,
# here a scratch directory, removed at the end unless FUZZ_WORK_DIR names one
# to keep (and to start from next time). A crash, panic, timeout (one input
# over 10 s) or out-of-memory fails the script after every target has run;
# the reproducer is in fuzz/artifacts/<target>/ and the end of the target's
# log is printed. Installs cargo-fuzz if it is missing. Needs no nightly
# toolchain: RUSTC_BOOTSTRAP=1 lets stable take the sanitizer flags.
#
# No sanitizer by default (FUZZ_SANITIZER=none): the crate has no unsafe
# code, and without AddressSanitizer the targets run 3 to 7 times as many
# inputs and rebuild in about 1.5 min instead of 2+ min after a change to
# src/. That build lives in fuzz/target/sanitizer-none, so it never
# invalidates the AddressSanitizer build of a plain `cargo fuzz run` in
# fuzz/target (switching flags in one target directory rebuilds every
# dependency, 12 to 20 min on two cores). FUZZ_SANITIZER=address uses that
# one.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-300}
[ $# -gt 0 ] && shift
case $seconds in
  '' | *[!0-9]*)
    echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
    exit 2
    ;;
esac
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(ls fuzz/fuzz_targets | sed -n 's/\.rs$//p' | sort)
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1

if [ -n "${FUZZ_WORK_DIR:-}" ]; then
  work=$FUZZ_WORK_DIR
  mkdir -p "$work"
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/stringdriverd-fuzz.XXXXXX")
  trap 'rm -rf "$work"' EXIT
fi

sanitizer=${FUZZ_SANITIZER:-none}
flags=(--sanitizer "$sanitizer")
if [ "$sanitizer" != address ]; then
  flags+=(--target-dir "$PWD/fuzz/target/sanitizer-$sanitizer")
fi

# One cargo invocation builds every target (shared dependencies); `cargo
# fuzz run` then finds them up to date.
cargo fuzz build "${flags[@]}"

failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  corpora=("$work/$t")
  [ -d "fuzz/corpus/$t" ] && corpora+=("fuzz/corpus/$t")
  log="$work/$t.log"
  start=$(date +%s)
  if cargo fuzz run "${flags[@]}" "$t" "${corpora[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
  fi
  # libFuzzer's own count; "Done N runs in S second(s)" only on a clean end.
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  fuzzed=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
  entries=$(find "$work/$t" -type f | wc -l)
  echo "fuzz: $t: $status, ${runs:-?} runs in ${fuzzed:-?} s" \
    "($(($(date +%s) - start)) s with start-up), $entries new corpus entries"
  if [ "$status" != ok ]; then
    echo "---- what went wrong, and the end of the $t log${FUZZ_WORK_DIR:+ ($log)}:"
    grep -m 1 -A 3 -E "panicked at|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)" "$log" || true
    echo "[...]"
    tail -n 30 "$log"
    echo "----"
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (reproducers in fuzz/artifacts/<target>/;" \
    "replay one with: RUSTC_BOOTSTRAP=1 cargo fuzz run ${flags[*]} <target> <file>)" >&2
  exit 1
fi
