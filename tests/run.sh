#!/usr/bin/env bash
# Runs every test of Portcullis. Installs what is missing first, so it works on a fresh
# Debian machine (as root, or with sudo available).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)          # builds aws-lc and zlib-ng
command -v python3 >/dev/null 2>&1 || missing+=(python3)      # test upstreams and key servers
command -v node >/dev/null 2>&1 || missing+=(nodejs)          # the OpenID provider for interop
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)  # shared rate limits
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
/usr/bin/python3 -c 'import websockets' >/dev/null 2>&1 || missing+=(python3-websockets)  # deflate WebSocket peers
command -v wrk >/dev/null 2>&1 || missing+=(wrk)              # reload under load
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)  # verifies the unit file
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -d tests/idp/node_modules/oidc-provider ]; then
  (cd tests/idp && npm ci --no-audit --no-fund --loglevel=error)
fi

cargo fmt --check
cargo clippy --profile ci --all-targets -- -D warnings
# The integration tests start real servers (Python echoes, node, redis, the gateway) on a
# small shared machine. A test target that fails is run once more and named as flaky, so a flake
# is seen and tracked without failing the whole run on it; a target that fails twice fails.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --profile ci --all-targets --no-fail-fast 2>&1 | tee "$log" || status=$?
if [ "$status" -ne 0 ]; then
  # One failed target: "to rerun pass `--test x`"; several: one "`--test x`" line each.
  mapfile -t failed < <(sed -n -e 's/.*to rerun pass `\([^`]*\)`.*/\1/p' \
    -e 's/^ *`\(--[^`]*\)`$/\1/p' "$log" | sort -u)
  [ ${#failed[@]} -gt 0 ] || exit "$status"
  echo "FLAKY: failed once, running again: ${failed[*]}" >&2
  again=()
  for target in "${failed[@]}"; do read -r -a words <<< "$target"; again+=("${words[@]}"); done
  cargo test --profile ci "${again[@]}"
fi
