#!/usr/bin/env bash
# Throughput of a route with an external decision point whose cache is hot, against the same
# route without one, in one run, with the same 64 user tokens and the same upstream (nginx).
#
#   benches/ext_authz.sh [seconds per run] [rounds]
#
# One gateway (1 thread, pinned to CPU 0) serves both routes; nginx, the decision point (the
# test suite's HTTP fixture) and wrk share CPU 1. Each token's first request asks the decision
# point; the warm-up makes every later one a cache hit, which the script checks by counting
# the decision point's calls. Modes alternate within each round; medians are reported.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-3}

source benches/lib.sh
need wrk:wrk nginx:nginx-light taskset:util-linux curl:curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

UP=$(port); AUTHZ=$(port); GW=$(port)
nginx_server nginx 1 "$UP" 'location / { return 200 "ok\n"; }'
taskset -c 1 "$NGINX" -c "$TMP/nginx.conf" -p "$TMP" & PIDS+=($!)
taskset -c 1 python3 tests/support/http_fixture.py authz "$AUTHZ" & PIDS+=($!)
wait_port "$UP"; wait_port "$AUTHZ"

for i in $(seq 64); do
  "$BIN" token --key conf/dev/private-key.pem --sub "user-$i" --roles agent --ttl 1h
done > "$TMP/tokens.txt"
lua_tokens "$TMP/tokens.txt"
for mode in local ext; do
  sed "s|\"/bench\"|\"/$mode\"|" "$TMP/tokens.lua" > "$TMP/$mode.lua"
done

cat > "$TMP/gw.toml" <<TOML
[server]
listen = ["127.0.0.1:$GW"]
threads = 1
pid_file = "$TMP/gw.pid"
upgrade_sock = "$TMP/gw.sock"

[logging]
access_log = "off"
audit_log = "off"

[issuers.dev]
issuer = "https://dev.portcullis.local"
audiences = ["portcullis"]
jwks_file = "$PWD/conf/dev/jwks.json"

[upstreams.nginx]
targets = ["127.0.0.1:$UP"]

[[routes]]
path = "/local"
upstream = "nginx"
access = "authenticated"
[[routes.allow]]
methods = ["GET"]
roles = ["agent"]

[[routes]]
path = "/ext"
upstream = "nginx"
access = "authenticated"
[[routes.allow]]
methods = ["GET"]
roles = ["agent"]
[routes.ext_authz]
kind = "http"
url = "http://127.0.0.1:$AUTHZ/check"
upstream_headers = ["x-authz-tenant"]
cache_ttl = "1h"
TOML
RUST_LOG=warn taskset -c 0 "$BIN" run -c "$TMP/gw.toml" 2>"$TMP/gw.log" & PIDS+=($!)
wait_port "$GW"
for mode in local ext; do
  taskset -c 1 wrk -t1 -c32 -d2s -s "$TMP/$mode.lua" "http://127.0.0.1:$GW/$mode" >/dev/null 2>&1
done
calls_before=$(curl -s "http://127.0.0.1:$AUTHZ/__calls")

declare -A RPS
for r in $(seq "$ROUNDS"); do
  for mode in local ext; do
    out=$(taskset -c 1 wrk -t1 -c32 -d"${SECS}s" -s "$TMP/$mode.lua" "http://127.0.0.1:$GW/$mode" 2>&1)
    if echo "$out" | grep -q "Non-2xx"; then echo "$mode: non-2xx responses" >&2; echo "$out" >&2; exit 1; fi
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    RPS[$mode]+="$rps "
    echo "round $r $mode: $rps req/s" >&2
  done
done
calls=$(( $(curl -s "http://127.0.0.1:$AUTHZ/__calls") - calls_before ))

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
base=$(echo "${RPS[local]}" | median)
printf '\n%-34s %10s %10s\n' route "req/s" "vs local"
for mode in local ext; do
  m=$(echo "${RPS[$mode]}" | median)
  label=$([ "$mode" = local ] && echo "local rules only" || echo "local rules + ext_authz, cache hot")
  printf '%-34s %10.0f %10.3f\n' "$label" "$m" "$(awk -v a="$m" -v b="$base" 'BEGIN {print a / b}')"
done
echo "decision point calls during the measured runs: $calls"
echo "($ROUNDS rounds of ${SECS}s, wrk -t1 -c32, 64 consumers, 1 gateway thread)"
