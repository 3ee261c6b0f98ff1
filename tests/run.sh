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
/usr/bin/python3 -c 'import jsonschema' >/dev/null 2>&1 || missing+=(python3-jsonschema)  # checks configs against the schema
/usr/bin/python3 -c 'import grpc' >/dev/null 2>&1 || missing+=(python3-grpcio)  # gRPC client and server
/usr/bin/python3 -c 'import jwt, cryptography' >/dev/null 2>&1 || missing+=(python3-jwt python3-cryptography)  # an independent JWT verifier
/usr/bin/python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)  # the OTLP receiver's packages
command -v chromium >/dev/null 2>&1 || missing+=(chromium)    # browser tests (CORS, sessions)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)  # drives it over WebDriver
command -v wrk >/dev/null 2>&1 || missing+=(wrk)              # reload under load
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)  # verifies the unit file
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# OpenTelemetry's protobuf messages, for the OTLP receiver the tracing tests export to.
if ! PYTHONPATH=target/pydeps /usr/bin/python3 -c 'import opentelemetry.proto.collector.trace.v1' 2>/dev/null; then
  /usr/bin/python3 -m pip install --quiet --disable-pip-version-check --target target/pydeps \
    opentelemetry-proto==1.45.2
fi

if [ ! -d tests/idp/node_modules/oidc-provider ]; then
  (cd tests/idp && npm ci --no-audit --no-fund --loglevel=error)
fi

cargo fmt --check
cargo clippy --profile ci --all-targets -- -D warnings

# A short run of every fuzz target (cargo-fuzz needs a nightly toolchain, which cannot be
# downloaded here: without one, the fuzzers are skipped and only their corpora are replayed,
# by tests/fuzz_corpus.rs). New inputs go to a scratch corpus, not into the repository.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
  cargo +nightly fuzz build -O
  scratch=$(mktemp -d)
  for target in token introspection route websocket config apisix; do
    mkdir -p "$scratch/$target"
    fuzzed=0
    cargo +nightly fuzz run -O "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
      -max_total_time="${FUZZ_SECONDS:-10}" -rss_limit_mb=4096 -print_final_stats=1 \
      > "$scratch/$target.log" 2>&1 || fuzzed=$?
    if [ "$fuzzed" -ne 0 ]; then
      tail -40 "$scratch/$target.log" >&2
      echo "fuzz target $target failed" >&2
      exit 1
    fi
    echo "fuzz $target: $(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$target.log") inputs, no failure"
  done
  rm -rf "$scratch"
else
  echo "fuzzing skipped: no nightly toolchain" >&2
fi
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

# The Debian package: built from the same binary, its contents and unit checked (installed and
# removed as well when PACKAGE_INSTALL=1, as on CI's throwaway machine).
tests/package.sh
