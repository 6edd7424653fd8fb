#!/usr/bin/env bash
# Checks the Debian package under a real systemd: boots a Debian 12 container
# (systemd-nspawn, systemd as PID 1, PostgreSQL inside), installs the .deb,
# serves two simulated boards (stringdriverd sim-controller) and runs the
# service on them, and the operator console's unit beside it. Prints one
# line per check and a table at the end; exits non-zero naming the first
# check that failed (with the end of the journal).
#
#   scripts/check-systemd.sh                # the newest target/debian/*.deb
#   scripts/check-systemd.sh --deb FILE     # that package
#
# Without a package in target/debian it runs scripts/check-deb.sh --profile
# dev first. Needs root (systemd-nspawn), installs debootstrap and
# systemd-container with apt-get when missing. The container's root file
# system (debootstrap --variant=minbase with systemd, dbus, PostgreSQL and procps, from
# apt's configured mirror: about 80 s) is cached as a tarball in
# /var/cache/stringdriverd-ci/ (STRINGDRIVERD_CI_CACHE), keyed by suite,
# mirror and package list; each run unpacks a fresh copy under /var/tmp and
# removes it at the end. The container has no network (--private-network).
#
# The device policy (DevicePolicy=closed, DeviceAllow=) is a BPF program in
# a cgroup v2 group: nspawn runs with the unified hierarchy
# (SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1) from a cgroup v2 group of its own and
# lets the container's systemd load BPF (CAP_BPF, the bpf system call).
#
# Commands run inside with nsenter into the namespaces of the container's
# PID 1 (there is no host systemd or D-Bus for machinectl); the daemon and
# the simulators run as units of the container's systemd.
set -euo pipefail
cd "$(dirname "$0")/.."

suite=bookworm
# The package's dependencies must be there: the container has no network.
packages=systemd,systemd-sysv,dbus,postgresql,procps
cache_dir=${STRINGDRIVERD_CI_CACHE:-/var/cache/stringdriverd-ci}
host_name=ci-systemd
started_at=$(date +%s)

deb=
if [ "${1:-}" = "--deb" ] && [ -n "${2:-}" ]; then
  deb=$2
elif [ -n "${1:-}" ]; then
  echo "usage: $0 [--deb FILE]" >&2
  exit 2
fi

die() {
  echo "check-systemd: $*" >&2
  exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root (systemd-nspawn, debootstrap)"

# --- the package ----------------------------------------------------------
if [ -z "$deb" ]; then
  debian_dir="${CARGO_TARGET_DIR:-target}/debian"
  deb=$(ls -t "$debian_dir"/stringdriverd_*.deb 2>/dev/null | head -n 1 || true)
  if [ -z "$deb" ]; then
    echo "== no package in $debian_dir: scripts/check-deb.sh --profile dev"
    scripts/check-deb.sh --profile dev
    deb=$(ls -t "$debian_dir"/stringdriverd_*.deb 2>/dev/null | head -n 1 || true)
  fi
fi
[ -f "$deb" ] || die "no package to check (looked for ${deb:-target/debian/stringdriverd_*.deb})"
echo "package: $deb"

# --- host tools -----------------------------------------------------------
missing=()
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
command -v ps >/dev/null 2>&1 || missing+=(procps)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# apt's configured Debian mirror (deb822 .sources or one-line lists), not
# the security archive.
mirror=${STRINGDRIVERD_CI_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }')
fi
if [ -z "$mirror" ]; then
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk '$1 == "deb" && $2 !~ /^\[/ && $2 !~ /security/ { print $2; exit }')
fi
mirror=${mirror:-http://deb.debian.org/debian}

# --- the cached base root file system -------------------------------------
key=$(printf '%s\n' "$suite" minbase "$packages" "$mirror" | sha256sum | cut -c1-16)
base_tar="$cache_dir/$suite-$key.tar"
mkdir -p "$cache_dir"
t0=$(date +%s)
(
  # One builder at a time; a second run waits and then finds the tarball.
  flock -w 600 9 || die "timed out waiting for the lock on $cache_dir"
  if [ ! -f "$base_tar" ]; then
    echo "== debootstrap $suite ($packages) from $mirror (cached as $base_tar)"
    build=$(mktemp -d /var/tmp/stringdriverd-ci-base.XXXXXX)
    trap 'rm -rf "$build"' EXIT
    # It becomes the container's /: mktemp's 0700 would keep every user but
    # root out (PostgreSQL's postinst could not create its cluster as the
    # user postgres, dbus-daemon could not read its configuration).
    chmod 0755 "$build"
    if ! timeout 900 debootstrap --variant=minbase --include="$packages" "$suite" "$build" "$mirror" \
      >"$build.log" 2>&1; then
      tail -n 20 "$build.log" >&2
      rm -f "$build.log"
      die "debootstrap failed (log above)"
    fi
    rm -f "$build.log"
    rm -f "$build"/var/cache/apt/archives/*.deb
    if ! compgen -G "$build/etc/postgresql/*/main/postgresql.conf" >/dev/null; then
      die "debootstrap made no PostgreSQL cluster (postgresql's postinst failed?)"
    fi
    tar --numeric-owner -C "$build" -cf "$base_tar.tmp" .
    mv "$base_tar.tmp" "$base_tar"
  fi
) 9>"$cache_dir/lock"
echo "base root file system: $base_tar ($(($(date +%s) - t0)) s)"

# --- the container ----------------------------------------------------------
root=$(mktemp -d /var/tmp/stringdriverd-ci-root.XXXXXX)
cgroup=
nspawn_pid=
leader=
boot_log="$root.boot.log"

cleanup() {
  local rc=$?
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    local t_stop deadline
    t_stop=$(date +%s)
    # SIGTERM to nspawn: the container's systemd powers off.
    kill -TERM "$nspawn_pid" 2>/dev/null || true
    deadline=$((t_stop + 10))
    while kill -0 "$nspawn_pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do
      sleep 0.2
    done
    if kill -0 "$nspawn_pid" 2>/dev/null; then
      # Disposable: everything in our cgroup goes (cgroup.kill, Linux 5.14),
      # nspawn itself at least.
      echo 1 >"$cgroup/cgroup.kill" 2>/dev/null || kill -KILL "$nspawn_pid" 2>/dev/null || true
    fi
    wait "$nspawn_pid" 2>/dev/null || true
    echo "container stopped ($(($(date +%s) - t_stop)) s)"
  fi
  if [ -n "$cgroup" ] && [ -d "$cgroup" ]; then
    # nspawn and the container's systemd made groups below it.
    find "$cgroup" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  fi
  rm -rf "$root" "$boot_log"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$(date +%s)
tar --numeric-owner -C "$root" -xf "$base_tar"
chmod 0755 "$root"
cp "$deb" "$root/root/stringdriverd.deb"

# The cgroup v2 hierarchy: /sys/fs/cgroup on a unified host, its "unified"
# part on a hybrid one.
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
  cg_root=/sys/fs/cgroup
elif [ -d /sys/fs/cgroup/unified ]; then
  cg_root=/sys/fs/cgroup/unified
else
  die "no cgroup v2 hierarchy on this host (the device policy needs one)"
fi
cgroup="$cg_root/stringdriverd-ci-$$"
mkdir "$cgroup"

# nspawn in the background, in its own cgroup v2 group (the subshell moves
# itself there before it execs nspawn).
(
  echo "$BASHPID" >"$cgroup/cgroup.procs"
  export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
  exec systemd-nspawn --quiet --boot --directory="$root" --machine="sdci$$" \
    --register=no --keep-unit --private-network \
    --capability=CAP_BPF --system-call-filter=bpf \
    --console=passive
) >"$boot_log" 2>&1 </dev/null &
nspawn_pid=$!

# Polls "$@" (a command) until it succeeds, for at most $1 seconds.
wait_for() {
  local limit=$1
  shift
  local deadline=$(($(date +%s) + limit))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      return 1
    fi
    sleep 0.2
  done
}

find_leader() {
  kill -0 "$nspawn_pid" 2>/dev/null || return 1
  local pid
  for pid in $(ps --ppid "$nspawn_pid" -o pid= 2>/dev/null); do
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd ]; then
      leader=$pid
      return 0
    fi
  done
  return 1
}
if ! wait_for 30 find_leader; then
  cat "$boot_log" >&2
  die "the container did not start (systemd-nspawn's output above)"
fi

# Runs a command inside the container (as root, in all its namespaces but
# the user namespace it does not have), at most 120 s.
ct() {
  timeout 120 nsenter --target "$leader" --mount --uts --ipc --net --pid --root --wd \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}

booted() {
  local state
  state=$(ct systemctl is-system-running 2>/dev/null || true)
  [ "$state" = running ] || [ "$state" = degraded ]
}
if ! wait_for 90 booted; then
  ct systemctl --failed --no-pager >&2 || true
  die "the container's systemd did not finish booting"
fi
echo "container booted ($(($(date +%s) - t0)) s)"

# --- checks ---------------------------------------------------------------
results=()
check_started=0
begin() {
  check=$1
  check_started=$(date +%s%N)
  echo "-- $check"
}
pass() {
  local ms=$((($(date +%s%N) - check_started) / 1000000))
  results+=("$(printf '%-44s ok   %6d ms' "$check" "$ms")")
  echo "   ok${1:+: $1}"
}
fail() {
  echo "FAILED: $check: $*" >&2
  echo "---- journalctl -u stringdriverd (last 30 lines)" >&2
  ct journalctl -u stringdriverd --no-pager -n 30 >&2 || true
  printf '%s\n' "${results[@]}" >&2
  echo "check-systemd: FAILED at \"$check\"" >&2
  exit 1
}

conf=/etc/stringdriver/stringdriver.toml
show() { ct systemctl show -p "$1" --value stringdriverd; }
cursor() { ct journalctl -n 0 --show-cursor -q | sed -n 's/^-- cursor: //p'; }
# The journal's MESSAGE texts of the unit since cursor $1 (what plain
# journalctl and systemctl status show).
messages_since() { ct journalctl -u stringdriverd --after-cursor="$1" -o cat --no-pager; }
# Whether the unit's messages since cursor $1 match the extended regex $2.
message_seen() { messages_since "$1" | grep -qE -- "$2"; }
# Polls until they do, for at most $3 seconds (20).
wait_message() { wait_for "${3:-20}" message_seen "$1" "$2"; }
status_json() { ct stringdriverctl --json status; }
boards_connected() {
  local s
  s=$(status_json) || return 1
  [ "$(grep -oE '"link": ?"connected"' <<<"$s" | wc -l)" = 2 ]
}
spool_field() {
  ct stringdriverd spool-status --json --config "$conf" | grep -oE "\"$1\": ?[0-9]+" | grep -oE '[0-9]+$'
}

write_config() {
  # $1: snapshot interval; $2: an extra line for [snapshot] (a broken file).
  cat >"$root$conf" <<EOF
# Written by scripts/check-systemd.sh: two simulated boards (the
# simulators' pseudo-terminals), PostgreSQL in the container.
host = "$host_name"

[[boards]]
name = "carriage"
port = "/run/sdsim-carriage/port"
int_bytes = 2
firmware = "v2"
steppers = 13
reset_wait = "500ms"
poll_interval = "200ms"
reply_timeout = "1s"

[[boards]]
name = "tuner"
port = "/run/sdsim-tuner/port"
int_bytes = 4
firmware = "tuner"
steppers = 6
reset_wait = "500ms"
poll_interval = "200ms"
reply_timeout = "1s"

[layout]
strings = 6
x_index = 0
z_first_index = 1
tuner_first_index = 13

[snapshot]
interval = "$1"
${2:-}

[feed]
dir = "/dev/shm"

[database]
url = "postgres://stringdriver@127.0.0.1:$pg_port/stringdriver"
auto_migrate = false
connect_timeout = "2s"

[spool]
path = "/var/lib/stringdriverd/spool.sqlite"

[control]
socket = "/run/stringdriver/control.sock"
EOF
}

begin "install the package (apt, offline)"
ct env DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/stringdriverd.deb >"$root/root/apt.log" 2>&1 ||
  { tail -n 20 "$root/root/apt.log" >&2; fail "apt-get install ./stringdriverd.deb failed"; }
ct id stringdriver >/dev/null || fail "the user stringdriver was not created"
[ "$(ct systemctl is-enabled stringdriverd 2>/dev/null || true)" = disabled ] ||
  fail "the package enabled the service (it must wait for a configuration)"
[ "$(show ActiveState)" = inactive ] || fail "the package started the service"
[ "$(ct stat -c '%U:%G %a' "$conf")" = "root:stringdriver 640" ] ||
  fail "$conf is not root:stringdriver 0640"
pass

begin "PostgreSQL: role, database, credential, migrate"
# The port is the cluster's (5433 when something listened on 5432 while
# debootstrap ran PostgreSQL's postinst; the container has its own network).
pg_port=$(ct pg_lsclusters --no-header | awk 'NR == 1 { print $3 }')
[ -n "$pg_port" ] || fail "no PostgreSQL cluster in the container"
wait_for 60 ct runuser -u postgres -- pg_isready -q -p "$pg_port" || fail "PostgreSQL in the container is not ready"
psql_q() { ct runuser -u postgres -- psql -XAtq -p "$pg_port" -v ON_ERROR_STOP=1 "$@"; }
psql_q -c "CREATE ROLE stringdriver LOGIN PASSWORD 'ci-check'" -c "CREATE DATABASE stringdriver OWNER stringdriver" ||
  fail "cannot create the role and database"
printf 'ci-check\n' >"$root/etc/stringdriver/db-password"
chmod 0600 "$root/etc/stringdriver/db-password"
write_config 200ms
# As docs/INSTALL.md step 6: the password handed over as the credential.
out=$(ct systemd-run --pipe --wait --quiet -p LoadCredential=db-password:/etc/stringdriver/db-password \
  /usr/bin/stringdriverd migrate --config "$conf" 2>&1) ||
  fail "stringdriverd migrate under systemd-run failed: $out"
pass "port $pg_port"

begin "check-config as the service user"
out=$(ct runuser -u stringdriver -- stringdriverd check-config --quiet --config "$conf" 2>&1) ||
  fail "check-config refused the file: $out"
pass

begin "simulated boards and audmon feed (units sdsim-*)"
start_sim() { # name profile
  ct systemd-run --quiet --collect --unit="sdsim-$1" -p User=stringdriver -p RuntimeDirectory="sdsim-$1" \
    -p RuntimeDirectoryMode=0755 /usr/bin/stringdriverd sim-controller --link "/run/sdsim-$1/port" \
    --profile "$2" --speed-scale 10 || fail "cannot start the simulator of $1"
  wait_for 20 ct test -c "/run/sdsim-$1/port" || fail "the simulator of $1 made no port"
}
start_sim carriage v2
start_sim tuner tuner
# audmon's feed (docs: /work/shared reference audmon-feed): its PID, 6
# channels of 12 partials, and silent frames (all zero) whose modification
# time advances, as audmon writes them when nothing sounds. As the service's
# user, so that the daemon (ProtectProc=invisible) sees the PID alive.
# systemd expands "$" in a command line: "$$$$" is the shell's "$$".
ct systemd-run --quiet --collect --unit=sdsim-audmon -p User=stringdriver /bin/sh -c \
  'printf "%s\n6\n12\n" "$$$$" >/dev/shm/audio_control
   head -c 576 /dev/zero >/dev/shm/audio_peaks
   while :; do sleep 0.2; touch /dev/shm/audio_peaks; done' || fail "cannot start the simulated audmon feed"
pass

begin "start: READY and STATUS"
start_cursor=$(cursor)
ct systemctl start stringdriverd || fail "systemctl start failed"
[ "$(show ActiveState)" = active ] || fail "not active after start (ActiveState=$(show ActiveState))"
status_text=$(show StatusText)
grep -q '^boards: carriage .*tuner' <<<"$status_text" ||
  fail "STATUS at READY is not the status line (StatusText=$status_text)"
wait_for 30 boards_connected || fail "the boards did not connect: $(status_json || true)"
status_connected() { grep -q 'carriage connected, tuner connected' <<<"$(show StatusText)"; }
wait_for 15 status_connected || fail "STATUS never showed both boards connected ($(show StatusText))"
pass "$(show StatusText)"

begin "journal: messages carry their context"
wait_message "$start_cursor" '^board carriage: link connected' ||
  fail "no 'board carriage: link connected' MESSAGE"
wait_message "$start_cursor" '^ready: boards: ' || fail "no 'ready: boards: ...' MESSAGE"
start_log=$(messages_since "$start_cursor")
if grep -E 'cannot give the control socket|made no progress' <<<"$start_log"; then
  fail "a healthy start logged a spurious warning (above)"
fi
# The field is still there for journalctl F_BOARD=carriage.
[ -n "$(ct journalctl -u stringdriverd F_BOARD=carriage -o cat -n 1 --no-pager)" ] ||
  fail "no journal entry with the field F_BOARD=carriage"
pass

begin "control socket: group member yes, stranger no"
# -N: Debian has a group "operator" already; both users get "users".
ct useradd --create-home -N --groups stringdriver labop
ct useradd --create-home -N stranger
out=$(ct runuser -u labop -- stringdriverctl --json status) ||
  fail "stringdriverctl status as a member of the group stringdriver failed: $out"
grep -q '"boards"' <<<"$out" || fail "status as a member of the group returned no boards: $out"
rc=0
err=$(ct runuser -u stranger -- stringdriverctl status 2>&1) || rc=$?
[ "$rc" = 2 ] || fail "a stranger's stringdriverctl status exited $rc (expected 2): $err"
grep -q 'Permission denied' <<<"$err" && grep -q 'members of the daemon' <<<"$err" ||
  fail "a stranger's refusal does not say why: $err"
pass

begin "counters set: snapshots reach PostgreSQL"
# New boards' counters are untrusted and snapshots wait for them (STATUS
# says "paused"): set them as at commissioning, through the socket.
for stepper in $(seq 0 18); do
  ct stringdriverctl set-position "$stepper" 0 >/dev/null || fail "set-position $stepper 0 failed"
done
shipped_some() { [ "$(spool_field shipped_snapshots)" -gt 0 ]; }
wait_for 30 shipped_some || fail "nothing was shipped to PostgreSQL ($(show StatusText))"
pass "shipped $(spool_field shipped_snapshots)"

begin "operator console: its unit serves the page and reaches the daemon"
[ "$(ct systemctl is-enabled stringdriverd-console 2>/dev/null || true)" = disabled ] ||
  fail "the package enabled the console"
ct systemctl start stringdriverd-console || fail "systemctl start stringdriverd-console failed"
# HTTP/1.1 by hand over bash's /dev/tcp (the container has no curl): one
# request, the whole reply (Connection: close).
console_http() { # method path body
  ct bash -c 'exec 3<>/dev/tcp/127.0.0.1/7125 || exit 1
    printf "%s %s HTTP/1.1\r\nHost: 127.0.0.1:7125\r\nConnection: close\r\nContent-Type: application/json\r\nX-Stringdriver-Console: 1\r\nContent-Length: %s\r\n\r\n%s" \
      "$1" "$2" "${#3}" "$3" >&3
    cat <&3' _ "$1" "$2" "${3:-}"
}
console_up() { console_http GET /api/meta | grep -q '"z_calibrate"'; }
wait_for 20 console_up || {
  ct journalctl -u stringdriverd-console --no-pager -n 20 >&2
  fail "the console does not answer /api/meta on 127.0.0.1:7125"
}
# Through the console to the daemon's control socket: the dynamic user in
# the group stringdriver, under the sandbox, is let in by the daemon.
reply=$(console_http POST /api/call '{"cmd":"status"}')
grep -q '"ok":true' <<<"$reply" && grep -q '"boards"' <<<"$reply" || {
  ct journalctl -u stringdriverd-console --no-pager -n 20 >&2
  fail "status through the console failed: $reply"
}
console_security=$(ct systemd-analyze security --no-pager stringdriverd-console 2>&1) || true
console_score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$console_security")
[ -n "$console_score" ] && awk -v s="$console_score" 'BEGIN { exit !(s <= 2.5) }' ||
  fail "console exposure ${console_score:-unknown}, at most 2.5 allowed"
ct systemctl stop stringdriverd-console || fail "systemctl stop stringdriverd-console failed"
pass "exposure $console_score"

begin "reload: a changed file applies"
pid=$(show MainPID)
c=$(cursor)
write_config 300ms
ct systemctl reload stringdriverd || fail "systemctl reload of a valid changed file failed"
wait_message "$c" '^SIGHUP: applied .*snapshot\.interval' || fail "no 'SIGHUP: applied snapshot.interval ...' MESSAGE"
[ "$(show MainPID)" = "$pid" ] || fail "the reload restarted the daemon"
pass

begin "reload: a broken file fails visibly, old config runs"
c=$(cursor)
write_config 300ms 'link = 7'
rc=0
ct systemctl reload stringdriverd 2>/dev/null || rc=$?
[ "$rc" != 0 ] || fail "systemctl reload of a broken file reported success"
[ "$(show ActiveState)" = active ] && [ "$(show MainPID)" = "$pid" ] ||
  fail "the refused reload stopped or restarted the daemon"
wait_message "$c" 'stringdriver\.toml:[0-9]+:[0-9]+' ||
  fail "the journal does not name the broken file's line:column"
# The daemon's own check, for a SIGHUP that bypasses ExecReload=.
c=$(cursor)
ct systemctl kill --kill-who=main --signal=HUP stringdriverd
wait_message "$c" '^SIGHUP: the new configuration is invalid; keeping the running one: .*stringdriver\.toml:[0-9]+:[0-9]+' ||
  fail "no 'SIGHUP: the new configuration is invalid; keeping the running one: FILE:LINE:COL' MESSAGE"
wait_for 5 boards_connected || fail "the daemon stopped working after the refused file"
write_config 300ms
ct systemctl reload stringdriverd || fail "reload of the repaired file failed"
pass

begin "a board that goes away is named in the journal"
c=$(cursor)
ct systemctl stop sdsim-tuner
wait_message "$c" '^board tuner: link (disconnected|lost|absent|reconnecting)' 30 ||
  fail "no 'board tuner: link ...' MESSAGE after its port went away"
# A message whose text names neither: the journald layer appends its fields.
wait_message "$c" '^board link down board=tuner error=' ||
  fail "MESSAGE 'board link down' without board=tuner error=... (the fields only in F_*)"
start_sim tuner tuner
wait_for 60 boards_connected || fail "the tuner did not reconnect"
pass

begin "kill -9: restarted, boards reopen, spool intact"
# Some seconds of timer snapshots first (every 300 ms), so that the count
# below means something.
captured_at_least() { [ "$(spool_field captured_snapshots)" -ge "$1" ]; }
wait_for 30 captured_at_least 20 || fail "fewer than 20 snapshots captured in 30 s"
captured_before=$(spool_field captured_snapshots)
pid=$(show MainPID)
ct systemctl kill --kill-who=main --signal=KILL stringdriverd
restarted() { local p; p=$(show MainPID); [ "$(show ActiveState)" = active ] && [ "$p" != 0 ] && [ "$p" != "$pid" ]; }
# RestartSec=10s.
wait_for 40 restarted || fail "not restarted after kill -9 (ActiveState=$(show ActiveState))"
[ "$(show NRestarts)" = 1 ] || fail "NRestarts=$(show NRestarts), expected 1"
# The killed daemon held the ports exclusively: they must open again.
wait_for 30 boards_connected || fail "the boards did not reconnect after the restart: $(status_json || true)"
captured_after=$(spool_field captured_snapshots)
[ "$captured_after" -ge "$captured_before" ] ||
  fail "the spool lost records: captured $captured_before before kill -9, $captured_after after"
# The restarted daemon records again.
wait_for 30 captured_at_least $((captured_after + 10)) || fail "no new snapshots after the restart"
pass "captured $captured_before before, $captured_after after"

begin "clean stop; every record in PostgreSQL exactly once"
t_stop=$(date +%s%N)
ct systemctl stop stringdriverd || fail "systemctl stop failed"
stop_ms=$((($(date +%s%N) - t_stop) / 1000000))
[ "$(show Result)" = success ] || fail "Result=$(show Result) after stop"
[ "$stop_ms" -lt 10000 ] || fail "the stop took $stop_ms ms (TimeoutStopSec=10)"
captured=$(spool_field captured_snapshots)
shipped=$(spool_field shipped_snapshots)
backlog=$(spool_field backlog)
rows=$(psql_q -d stringdriver -c "SELECT count(*) FROM machine_state WHERE host = '$host_name'")
distinct=$(psql_q -d stringdriver -c "SELECT count(DISTINCT state_id) FROM machine_state WHERE host = '$host_name'")
[ "$backlog" = 0 ] || fail "backlog $backlog after a clean stop with the database up"
[ "$rows" = "$captured" ] && [ "$distinct" = "$rows" ] && [ "$shipped" = "$captured" ] ||
  fail "captured $captured, shipped $shipped, rows $rows ($distinct distinct)"
pass "stop $stop_ms ms; $rows rows = $captured captured"

begin "systemd-analyze security (live) <= 2.5"
security=$(ct systemd-analyze security --no-pager stringdriverd 2>&1) || true
score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$security")
[ -n "$score" ] || fail "no exposure level in: $security"
awk -v s="$score" 'BEGIN { exit !(s <= 2.5) }' || fail "exposure $score, at most 2.5 allowed"
pass "exposure $score"

echo
echo "== check-systemd: all passed ($(($(date +%s) - started_at)) s)"
printf '%s\n' "${results[@]}"
