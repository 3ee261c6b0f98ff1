#!/usr/bin/env bash
# Throughput of the gateway with rate limits off, in-process, and in Redis, measured in one run
# against the same upstream (nginx answering 200) with the same 64 user tokens.
#
#   benches/rate_limit.sh [seconds per run] [rounds]
#
# The gateways are pinned to CPU 0; nginx, redis-server and wrk share CPU 1. Modes alternate
# within each round so that machine noise hits all of them alike; the median of the rounds is
# reported, with each mode as a ratio of "off".
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-3}

source benches/lib.sh
need wrk:wrk nginx:nginx-light redis-server:redis-server taskset:util-linux
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

UP=$(port); REDIS=$(port)
cat > "$TMP/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:$UP; keepalive_requests 1000000; location / { return 200 "ok\n"; } }
}
NGINX
taskset -c 1 "$NGINX" -c "$TMP/nginx.conf" -p "$TMP" & PIDS+=($!)
taskset -c 1 redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!)
wait_port "$UP"; wait_port "$REDIS"

# 64 consumers, so that limits are looked up per consumer as in production.
{
  echo "tokens = {"
  for i in $(seq 64); do
    echo "  \"$("$BIN" token --key conf/dev/private-key.pem --sub "user-$i" --roles agent --ttl 1h)\","
  done
  echo "}"
  cat <<'LUA'
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "/bench", { ["Authorization"] = "Bearer " .. tokens[i] })
end
LUA
} > "$TMP/tokens.lua"

declare -A URL
for mode in off local redis; do
  P=$(port)
  # Limits high enough that every request is admitted: the cost measured is the counting.
  case $mode in
    off) tiers="" ;;
    local) tiers=$'[[rate_limit.tiers]]\nname = "users"\nlimits = ["1000000/second", "100000000/hour"]' ;;
    redis) tiers=$'[rate_limit.redis]\nurl = "redis://127.0.0.1:'"$REDIS"$'"\n[[rate_limit.tiers]]\nname = "users"\nbackend = "redis"\nlimits = ["1000000/second", "100000000/hour"]' ;;
  esac
  cat > "$TMP/$mode.toml" <<TOML
[server]
listen = ["127.0.0.1:$P"]
threads = 1
pid_file = "$TMP/$mode.pid"
upgrade_sock = "$TMP/$mode.sock"

# What these figures compare does not include the logs (measured as they were first taken).
[logging]
access_log = "off"
audit_log = "off"

[issuers.dev]
issuer = "https://dev.portcullis.local"
audiences = ["portcullis"]
jwks_file = "$PWD/conf/dev/jwks.json"

[upstreams.nginx]
targets = ["127.0.0.1:$UP"]

$tiers

[[routes]]
path = "/bench"
upstream = "nginx"
access = "authenticated"
TOML
  RUST_LOG=warn taskset -c 0 "$BIN" run -c "$TMP/$mode.toml" 2>"$TMP/$mode.log" & PIDS+=($!)
  wait_port "$P"
  URL[$mode]="http://127.0.0.1:$P/bench"
  # Warm up connections, caches and the Redis script.
  taskset -c 1 wrk -t1 -c32 -d2s -s "$TMP/tokens.lua" "${URL[$mode]}" >/dev/null
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $("$BIN" token --key conf/dev/private-key.pem --sub probe --roles agent)" "${URL[$mode]}")
  [ "$status" = 200 ] || { echo "$mode: probe got $status" >&2; cat "$TMP/$mode.log" >&2; exit 1; }
done

declare -A RPS P99
for r in $(seq "$ROUNDS"); do
  for mode in off local redis; do
    out=$(taskset -c 1 wrk -t1 -c32 -d"${SECS}s" --latency -s "$TMP/tokens.lua" "${URL[$mode]}")
    if echo "$out" | grep -q "Non-2xx"; then echo "$mode: non-2xx responses" >&2; echo "$out" >&2; exit 1; fi
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    RPS[$mode]+="$rps "
    P99[$mode]+="$(echo "$out" | awk '$1 == "99%" {print $2}') "
    echo "round $r $mode: $rps req/s" >&2
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
base=$(echo "${RPS[off]}" | median)
printf '\n%-8s %12s %10s %12s\n' mode "req/s" "vs off" "p99 latency"
for mode in off local redis; do
  m=$(echo "${RPS[$mode]}" | median)
  p=$(echo "${P99[$mode]}" | tr ' ' '\n' | grep -v '^$' | sort | sed -n "$(( (ROUNDS + 1) / 2 ))p")
  printf '%-8s %12.0f %10.3f %12s\n' "$mode" "$m" "$(awk -v a="$m" -v b="$base" 'BEGIN {print a / b}')" "$p"
done
echo "($ROUNDS rounds of ${SECS}s, wrk -t1 -c32, 64 consumers, every request admitted)"
