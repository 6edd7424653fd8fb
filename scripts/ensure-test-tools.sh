#!/usr/bin/env bash
# Installs what the browser and dataset tests need when it is missing:
# Debian's chromium and chromium-driver (the console's and the report's
# browser tests drive a real headless Chromium through chromedriver) and
# pyarrow (the exported dataset is loaded by pyarrow, the reference reader).
# Called by scripts/test.sh; idempotent; about 30 s the first time.
set -euo pipefail

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-test-tools: ${need_apt[*]} missing; install them (apt-get install ${need_apt[*]}); the browser tests will fail." >&2
  else
    echo "ensure-test-tools: installing ${need_apt[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null; }
  fi
fi

if ! python3 -c 'import pyarrow' >/dev/null 2>&1; then
  echo "ensure-test-tools: installing pyarrow (pip)" >&2
  python3 -m pip install -q pyarrow >/dev/null
fi
