#!/usr/bin/env bash
# HTTP/2 against HTTP/1.1 to the upstream, and the cost of the resilience bookkeeping on the
# happy path, in one run against nginx:
#   h1        plain HTTP/1.1 upstream, no retries on answers, no breaker (the baseline)
#   h1-again  the same as h1 under another name: how far two identical modes differ in this
#             run, the noise floor the other ratios are read against
#   h2        the same nginx over HTTP/2 by prior knowledge (protocol = "http2")
#   guarded   HTTP/1.1 with retry_on_status, retry_on_timeout, a circuit breaker and
#             max_requests: every request counts toward the budget, settles its circuit and
#             takes an in-flight place
#
#   benches/upstream_protocols.sh [seconds per run] [rounds]        (THREADS=2 gateway threads)
#
# The gateway is pinned to CPU 0; nginx and wrk share CPU 1. Public routes, no token. Modes are
# interleaved round by round so drift on a shared machine hits them alike; medians are reported.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-3}
THREADS=${THREADS:-2}

source benches/lib.sh
need wrk:wrk nginx:nginx-light taskset:util-linux
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

H1=$(port); H2=$(port)
cat > "$TMP/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:$H1; keepalive_requests 1000000; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$H2 http2; keepalive_requests 1000000; location / { return 200 "ok\n"; } }
}
NGINX
taskset -c 1 "$NGINX" -c "$TMP/nginx.conf" -p "$TMP" & PIDS+=($!)
wait_port "$H1"; wait_port "$H2"

GW=$(port)
cat > "$TMP/gw.toml" <<TOML
[server]
listen = ["127.0.0.1:$GW"]
threads = $THREADS
pid_file = "$TMP/gw.pid"
upgrade_sock = "$TMP/gw.sock"

[logging]
access_log = "off"
audit_log = "off"

[upstreams.h1]
targets = ["127.0.0.1:$H1"]

[upstreams.h1-again]
targets = ["127.0.0.1:$H1"]

[upstreams.h2]
targets = ["127.0.0.1:$H2"]
protocol = "http2"

[upstreams.guarded]
targets = ["127.0.0.1:$H1"]
retries = 2
retry_on_status = [502, 503, 504]
retry_on_timeout = true
max_requests = 10000

[upstreams.guarded.circuit_breaker]
consecutive_failures = 5

[[routes]]
path = "/h1"
access = "public"
upstream = "h1"

[[routes]]
path = "/h1-again"
access = "public"
upstream = "h1-again"

[[routes]]
path = "/h2"
access = "public"
upstream = "h2"

[[routes]]
path = "/guarded"
access = "public"
upstream = "guarded"
TOML
RUST_LOG=warn taskset -c 0 "$BIN" run -c "$TMP/gw.toml" 2>"$TMP/gw.log" & PIDS+=($!)
GW_PID=$!
wait_port "$GW"
# The gateway's CPU time so far (user + system), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$GW_PID/stat"; }
TICK_US=$(( 1000000 / $(getconf CLK_TCK) ))
MODES="h1 guarded h1-again h2"
for mode in $MODES; do
  status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GW/$mode")
  [ "$status" = 200 ] || { echo "$mode: got $status" >&2; cat "$TMP/gw.log" >&2; exit 1; }
  taskset -c 1 wrk -t1 -c16 -d2s "http://127.0.0.1:$GW/$mode" >/dev/null
done

declare -A RPS CPU
for r in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    before=$(cpu_ticks)
    out=$(taskset -c 1 wrk -t1 -c16 -d"${SECS}s" "http://127.0.0.1:$GW/$mode")
    ticks=$(( $(cpu_ticks) - before ))
    if echo "$out" | grep -q "Non-2xx"; then echo "$mode: non-2xx responses" >&2; echo "$out" >&2; exit 1; fi
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    total=$(echo "$out" | awk '/requests in/ {print $1}')
    us=$(awk -v t="$ticks" -v u="$TICK_US" -v n="$total" 'BEGIN {printf "%.1f", t * u / n}')
    RPS[$mode]+="$rps "
    CPU[$mode]+="$us "
    echo "round $r $mode: $rps req/s, $us µs of gateway CPU per request" >&2
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
base=$(echo "${RPS[h1]}" | median)
base_cpu=$(echo "${CPU[h1]}" | median)
printf '\n%-52s %10s %8s %12s %8s\n' upstream "req/s" "vs h1" "CPU µs/req" "vs h1"
for mode in $MODES; do
  m=$(echo "${RPS[$mode]}" | median)
  case $mode in
    h1) label="HTTP/1.1" ;;
    h1-again) label="HTTP/1.1 again (noise floor)" ;;
    h2) label="HTTP/2 (h2c), 16 clients over shared connections" ;;
    guarded) label="HTTP/1.1 + retry policy, budget, breaker, cap" ;;
  esac
  c=$(echo "${CPU[$mode]}" | median)
  printf '%-52s %10.0f %8.3f %12s %8.3f\n' "$label" "$m" "$(awk -v a="$m" -v b="$base" 'BEGIN {print a / b}')" \
    "$c" "$(awk -v a="$c" -v b="$base_cpu" 'BEGIN {print a / b}')"
done
echo "($ROUNDS rounds of ${SECS}s, wrk -t1 -c16, $THREADS gateway threads)"
