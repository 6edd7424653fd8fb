#!/usr/bin/env bash
# Generates the Debian package's generated assets into target/assets/ from
# the programs' own CLI definitions (clap): stringdriverctl's shell
# completions (bash, zsh, fish) and the manual pages of both programs, one per
# program and subcommand. [package.metadata.deb] assets takes files only, so
# run this before `cargo deb` (scripts/check-deb.sh does). The files do not
# depend on the architecture: a host build makes them, also for a
# cross-compiled package.
#
#   scripts/deb-assets.sh                 # with the release build
#   scripts/deb-assets.sh --profile dev   # with the debug build
set -euo pipefail
cd "$(dirname "$0")/.."
profile=(--release)
if [ "${1:-}" = "--profile" ] && [ -n "${2:-}" ]; then
  profile=(--profile "$2")
fi
out=target/assets
rm -rf "$out"
mkdir -p "$out/completions" "$out/man"
run() { cargo run --quiet "${profile[@]}" --bin "$@"; }
run stringdriverctl -- completions bash >"$out/completions/stringdriverctl.bash"
run stringdriverctl -- completions zsh >"$out/completions/_stringdriverctl"
run stringdriverctl -- completions fish >"$out/completions/stringdriverctl.fish"
run stringdriverctl -- man --out-dir "$out/man"
run stringdriverd -- man --out-dir "$out/man"
for f in "$out"/completions/* "$out"/man/stringdriverctl.1 "$out"/man/stringdriverd.1; do
  if [ ! -s "$f" ]; then
    echo "generated nothing: $f" >&2
    exit 1
  fi
done
echo "assets: $(ls "$out/completions" | wc -l) completion scripts, $(ls "$out/man" | wc -l) manual pages in $out"
