#!/usr/bin/env bash
# Builds the Debian package with `cargo deb` (installs cargo-deb from
# crates.io, --locked, when it is missing) and checks what it holds: both
# binaries, the units (daemon, console), the sysusers and tmpfiles entries under /usr/lib, the
# configuration as a conffile under /etc/stringdriver, the docs, the shell
# completions and manual pages (generated first by scripts/deb-assets.sh) and
# the maintainer scripts. Prints the package's path; exits non-zero on the first
# thing missing. Installs nothing on the host but cargo-deb.
#
#   scripts/check-deb.sh                 # the package as shipped (release build)
#   scripts/check-deb.sh --profile dev   # CI: the same package from the debug
#                                        # build the tests already made
set -euo pipefail
cd "$(dirname "$0")/.."
profile=()
if [ "${1:-}" = "--profile" ] && [ -n "${2:-}" ]; then
  profile=(--profile "$2")
fi

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "== installing cargo-deb"
  cargo install cargo-deb --locked --version '^3' --quiet
fi

echo "== generated assets"
scripts/deb-assets.sh "${profile[@]}"

echo "== cargo deb"
# cargo-deb prints the paths of what it wrote: the package and (dbgsym =
# true) its debug symbols as a .ddeb.
log=$(mktemp)
if ! cargo deb "${profile[@]}" >"$log" 2>&1; then
  cat "$log" >&2
  echo "cargo deb failed" >&2
  exit 1
fi
deb=$(grep -E '\.deb$' "$log" | tail -n 1)
rm -f "$log"
if [ ! -f "$deb" ]; then
  echo "cargo deb did not name a package file (got: $deb)" >&2
  exit 1
fi
echo "package: $deb"

fail=0
contents=$(dpkg-deb --contents "$deb" | awk '{print $NF}')
# Stripped: the symbols are in the separate .ddeb.
for bin in stringdriverd stringdriverctl; do
  size=$(dpkg-deb --contents "$deb" | awk -v p="./usr/bin/$bin" '$NF == p {print $3}')
  echo "/usr/bin/$bin: ${size:-missing} bytes"
done
for path in \
  ./usr/bin/stringdriverd \
  ./usr/bin/stringdriverctl \
  ./usr/lib/systemd/system/stringdriverd.service \
  ./usr/lib/systemd/system/stringdriverd-console.service \
  ./usr/lib/sysusers.d/stringdriverd.conf \
  ./usr/lib/tmpfiles.d/stringdriverd.conf \
  ./etc/stringdriver/stringdriver.toml \
  ./usr/share/doc/stringdriverd/INSTALL.md \
  ./usr/share/doc/stringdriverd/OPERATIONS.md \
  ./usr/share/doc/stringdriverd/README.md \
  ./usr/share/bash-completion/completions/stringdriverctl \
  ./usr/share/zsh/vendor-completions/_stringdriverctl \
  ./usr/share/fish/vendor_completions.d/stringdriverctl.fish; do
  if ! grep -qxF "$path" <<<"$contents"; then
    echo "missing from the package: $path" >&2
    fail=1
  fi
done
# A manual page for each program and each of its subcommands (gzipped or
# not, as cargo-deb packs them).
for page in target/assets/man/*.1; do
  name=./usr/share/man/man1/$(basename "$page")
  if ! grep -qxF -e "$name" -e "$name.gz" <<<"$contents"; then
    echo "missing from the package: $name" >&2
    fail=1
  fi
done
echo "manual pages: $(grep -cE '^\./usr/share/man/man1/.*\.1(\.gz)?$' <<<"$contents")"

control=$(mktemp -d)
trap 'rm -rf "$control"' EXIT
dpkg-deb --control "$deb" "$control"
if ! grep -qxF /etc/stringdriver/stringdriver.toml "$control/conffiles" 2>/dev/null; then
  echo "/etc/stringdriver/stringdriver.toml is not a conffile" >&2
  fail=1
fi
for script in postinst prerm postrm; do
  if [ ! -x "$control/$script" ]; then
    echo "maintainer script missing: $script" >&2
    fail=1
  elif ! sh -n "$control/$script"; then
    echo "maintainer script does not parse: $script" >&2
    fail=1
  fi
done
# An unconfigured service must not be started or enabled by the package.
if grep -qE 'systemctl (start|enable|restart)\b' "$control/postinst"; then
  echo "postinst starts or enables the service" >&2
  fail=1
fi
arch=$(dpkg-deb --field "$deb" Architecture)
version=$(dpkg-deb --field "$deb" Version)
echo "version $version, architecture $arch"
if [ "$fail" = 0 ]; then
  echo "package: OK"
fi
exit "$fail"
