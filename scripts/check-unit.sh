#!/usr/bin/env bash
# Checks systemd/stringdriverd.service and systemd/stringdriverd-console.service
# (the operator console), each the same way:
#   1. systemd-analyze verify: must print nothing and succeed;
#   2. systemd-analyze security --offline: overall exposure at most 2.5;
# and systemd/stringdriverd.tmpfiles.conf:
#   3. systemd-tmpfiles --create in a throw-away root makes the spool
#      directory and the /tmp links to the stepper GUI's socket.
# Prints the exposure scores; exits non-zero if any check fails.
#
# Works from a clean checkout: builds the binary (verify refuses a unit whose
# ExecStart= program is missing; any build of it will do, so the debug build
# the tests share rather than a release build of every dependency) and verifies the unchanged unit
# file inside a throw-away root (`--root`) holding the binary at the
# ExecStart= path, the host's copy of any other program the unit runs, and a
# copy of the host's system units (the unit's dependencies: sysinit.target,
# modprobe@.service, ...). Installs nothing on the host but systemd itself,
# and that only if systemd-analyze is missing (apt-get, as root). verify run
# as root does touch the empty timestamp /run/systemd/systemd-units-load, as
# every unit load by systemd does.
set -euo pipefail
cd "$(dirname "$0")/.."

units=(systemd/stringdriverd.service systemd/stringdriverd-console.service)
# systemd-analyze counts exposure in tenths: 25 is 2.5.
max_exposure_tenths=25

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "== installing systemd (for systemd-analyze)"
  if [ "$(id -u)" != 0 ]; then
    echo "systemd-analyze is missing; install the systemd package (as root: apt-get install systemd)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
systemd-analyze --version | head -n 1

echo "== cargo build --bin stringdriverd"
cargo build --quiet --bin stringdriverd
binary="${CARGO_TARGET_DIR:-target}/debug/stringdriverd"

# Temporary roots, removed at exit.
roots=()
trap 'rm -rf "${roots[@]}"' EXIT
verify_ok=1
security_ok=1
scores=()

# Verifies one unit and scores its exposure; clears verify_ok/security_ok
# on failure.
check_unit() {
  local unit=$1
  local name exec_path root verify_rc verify_out security_rc security_out score
  name=$(basename "$unit")
  # The program of ExecStart= (the first word, without the prefixes @-:+!).
  exec_path=$(sed -n 's/^ExecStart=[-@:+!]*\([^ ]*\).*/\1/p' "$unit" | head -n 1)
  if [ -z "$exec_path" ]; then
    echo "$unit: no ExecStart= found" >&2
    verify_ok=0
    return
  fi

  root=$(mktemp -d)
  roots+=("$root")
  mkdir -p "$root$(dirname "$exec_path")" "$root/etc/systemd/system"
  cp "$binary" "$root$exec_path"
  # verify checks every program the unit runs: the other Exec*= programs
  # (ExecReload=/bin/kill) come from the host.
  sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\([^ ]*\).*/\1/p' "$unit" | sort -u | while read -r program; do
    if [ "$program" != "$exec_path" ] && [ -e "$program" ]; then
      mkdir -p "$root$(dirname "$program")"
      cp "$program" "$root$program"
    fi
  done
  # The host's unit directories (/lib is /usr/lib on merged-/usr systems).
  for dir in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -d "$dir" ]; then
      mkdir -p "$root$dir"
      cp -a "$dir/." "$root$dir/"
    fi
  done
  cp "$unit" "$root/etc/systemd/system/$name"

  echo "== systemd-analyze verify $unit"
  verify_rc=0
  # --root reads both the unit and the paths it names underneath $root; the
  # messages are rewritten to name the unit file of this repository.
  verify_out=$(systemd-analyze verify --man=no --root="$root" "/etc/systemd/system/$name" 2>&1) || verify_rc=$?
  verify_out=${verify_out//"$root/etc/systemd/system/$name"/$unit}
  verify_out=${verify_out//"$root"/}
  if [ -n "$verify_out" ]; then
    printf '%s\n' "$verify_out"
  fi
  if [ "$verify_rc" != 0 ] || [ -n "$verify_out" ]; then
    echo "verify: FAILED (exit status $verify_rc)"
    verify_ok=0
  else
    echo "verify: OK"
  fi

  echo "== systemd-analyze security --offline=true $unit"
  security_rc=0
  security_out=$(systemd-analyze security --offline=true --threshold="$max_exposure_tenths" "$unit" 2>&1) || security_rc=$?
  # The settings that still add exposure, then the overall level.
  printf '%s\n' "$security_out" | grep -E '^✗|Overall exposure' || true
  score=$(printf '%s\n' "$security_out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  if [ -z "$score" ]; then
    echo "security: FAILED (no overall exposure level in the output)"
    printf '%s\n' "$security_out"
    security_ok=0
  elif [ "$security_rc" != 0 ] || ! awk -v s="$score" -v m="$max_exposure_tenths" 'BEGIN { exit !(s * 10 <= m) }'; then
    echo "security: FAILED (exposure $score, at most $((max_exposure_tenths / 10)).$((max_exposure_tenths % 10)) allowed)"
    security_ok=0
  else
    echo "security: OK (exposure $score)"
  fi

  scores+=("$name $score")
}

for unit in "${units[@]}"; do
  check_unit "$unit"
done

# The tmpfiles.d entries, applied in a throw-away root that knows the
# service user: the spool directory and the links where the lab's older
# tools look for the stepper GUI's socket (src/compat/mod.rs).
tmpfiles=systemd/stringdriverd.tmpfiles.conf
echo "== systemd-tmpfiles --create $tmpfiles"
troot=$(mktemp -d)
roots+=("$troot")
mkdir -p "$troot/etc" "$troot/tmp"
chmod 1777 "$troot/tmp"
echo 'stringdriver:x:990:990::/:/usr/sbin/nologin' >"$troot/etc/passwd"
echo 'stringdriver:x:990:' >"$troot/etc/group"
tmpfiles_ok=1
if ! systemd-tmpfiles --root="$troot" --create "$PWD/$tmpfiles"; then
  echo "tmpfiles: FAILED (systemd-tmpfiles --create)"
  tmpfiles_ok=0
fi
if [ "$(stat -c '%a %u' "$troot/var/lib/stringdriverd" 2>/dev/null)" != "750 990" ]; then
  echo "tmpfiles: FAILED (/var/lib/stringdriverd is not 0750 stringdriver)"
  tmpfiles_ok=0
fi
for port in _dev_ttyACM0 _dev_ttyUSB0; do
  link="/tmp/stepper_gui_$port.sock"
  target=$(readlink "$troot$link" || true)
  if [ "$target" != "/run/stringdriver/stepper_gui_$port.sock" ]; then
    echo "tmpfiles: FAILED ($link -> ${target:-nothing})"
    tmpfiles_ok=0
  fi
done
if [ "$tmpfiles_ok" = 1 ]; then
  echo "tmpfiles: OK"
fi

for s in "${scores[@]}"; do
  echo "exposure: $s"
done
[ "$verify_ok" = 1 ] && [ "$security_ok" = 1 ] && [ "$tmpfiles_ok" = 1 ]
