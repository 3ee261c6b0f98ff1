#!/usr/bin/env bash
# The cost of tracing, in one run: four gateways on the same config but for `[tracing]`, the
# same 64 user tokens, the same upstream (nginx):
#   off        no [tracing] (the baseline)
#   off-again  the same under another process: how far two identical modes differ in this run,
#              the noise floor the other ratios are read against
#   ratio-0    [tracing] on, sampling_ratio = 0: trace context read, nothing recorded
#   ratio-1    every request recorded (server, authenticate, authorize, rate_limit and
#              upstream spans), encoded and exported over OTLP/HTTP to a collector that takes
#              everything (nginx answering 200)
#
#   benches/tracing.sh [seconds per run] [rounds]
#
# Each gateway has 1 thread pinned to CPU 0; nginx (upstream and collector) and wrk share
# CPU 1. Modes are interleaved round by round; medians are reported, with the gateway's CPU
# time per request (from /proc) and the spans exported and dropped.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-3}

source benches/lib.sh
need wrk:wrk nginx:nginx-light taskset:util-linux curl:curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

UP=$(port); COLLECTOR=$(port)
nginx_server nginx 1 "$UP" 'location / { return 200 "ok\n"; }'
nginx_server collector 1 "$COLLECTOR" 'client_max_body_size 64m; location / { return 200 ""; }'
for name in nginx collector; do
  taskset -c 1 "$NGINX" -c "$TMP/$name.conf" -p "$TMP" & PIDS+=($!)
done
wait_port "$UP"; wait_port "$COLLECTOR"

for i in $(seq 64); do
  "$BIN" token --key conf/dev/private-key.pem --sub "user-$i" --roles agent --ttl 1h
done > "$TMP/tokens.txt"
lua_tokens "$TMP/tokens.txt"
ISS=https://dev.portcullis.local
cp conf/dev/jwks.json "$TMP/jwks.json"

MODES="off ratio-0 off-again ratio-1"
declare -A GW_PORT GW_PID ADMIN
for mode in $MODES; do
  GW=$(port); AD=$(port)
  case $mode in
    off|off-again) tracing="" ;;
    ratio-0) tracing="[tracing]
endpoint = \"http://127.0.0.1:$COLLECTOR/v1/traces\"
sampling_ratio = 0.0" ;;
    ratio-1) tracing="[tracing]
endpoint = \"http://127.0.0.1:$COLLECTOR/v1/traces\"
sampling_ratio = 1.0" ;;
  esac
  portcullis_conf "$mode" 1 "$GW" authenticated "$FULL_POLICY

[admin]
listen = \"127.0.0.1:$AD\"

$tracing"
  RUST_LOG=warn taskset -c 0 "$BIN" run -c "$TMP/$mode.toml" 2>"$TMP/$mode.log" & PIDS+=($!)
  GW_PID[$mode]=$!; GW_PORT[$mode]=$GW; ADMIN[$mode]=$AD
done
for mode in $MODES; do
  wait_port "${GW_PORT[$mode]}"
  taskset -c 1 wrk -t1 -c16 -d2s -s "$TMP/tokens.lua" "http://127.0.0.1:${GW_PORT[$mode]}" >/dev/null 2>&1
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_US=$(( 1000000 / $(getconf CLK_TCK) ))
declare -A RPS CPU
for r in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    before=$(cpu_ticks "${GW_PID[$mode]}")
    result=$(taskset -c 1 wrk -t1 -c16 -d"${SECS}s" -s "$TMP/tokens.lua" "http://127.0.0.1:${GW_PORT[$mode]}" 2>&1 >/dev/null | awk '/^RESULT/')
    ticks=$(( $(cpu_ticks "${GW_PID[$mode]}") - before ))
    read -r _ requests duration errors _ _ <<< "$result"
    [ "$errors" = 0 ] || { echo "$mode: $errors errors" >&2; cat "$TMP/$mode.log" >&2; exit 1; }
    rps=$(awk -v n="$requests" -v d="$duration" 'BEGIN {printf "%.0f", n / d * 1000000}')
    us=$(awk -v t="$ticks" -v u="$TICK_US" -v n="$requests" 'BEGIN {printf "%.1f", t * u / n}')
    RPS[$mode]+="$rps "; CPU[$mode]+="$us "
    echo "round $r $mode: $rps req/s, $us µs of gateway CPU per request" >&2
  done
done

metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
base=$(echo "${RPS[off]}" | median)
base_cpu=$(echo "${CPU[off]}" | median)
printf '\n%-44s %10s %8s %12s %8s\n' tracing "req/s" "vs off" "CPU µs/req" "vs off"
for mode in $MODES; do
  m=$(echo "${RPS[$mode]}" | median); c=$(echo "${CPU[$mode]}" | median)
  case $mode in
    off) label="off" ;;
    off-again) label="off, another process (noise floor)" ;;
    ratio-0) label="on, sampling_ratio 0" ;;
    ratio-1) label="on, every request: 5 spans exported" ;;
  esac
  printf '%-44s %10.0f %8.3f %12s %8.3f\n' "$label" "$m" "$(awk -v a="$m" -v b="$base" 'BEGIN {print a / b}')" \
    "$c" "$(awk -v a="$c" -v b="$base_cpu" 'BEGIN {print a / b}')"
done
sleep 3
exported=$(metric "${ADMIN[ratio-1]}" portcullis_trace_spans_exported_total)
dropped=$(metric "${ADMIN[ratio-1]}" 'portcullis_trace_spans_dropped_total{reason="queue_full"}')
echo "ratio-1: ${exported:-0} spans exported, ${dropped:-0} dropped (queue full)"
echo "($ROUNDS rounds of ${SECS}s, wrk -t1 -c16, 64 RS256 tokens, 1 gateway thread each)"
