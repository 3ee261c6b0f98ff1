#!/usr/bin/env bash
# Portcullis against another build of itself, in one run: did a change cost anything?
#
#   benches/before_after.sh OTHER_BINARY [seconds per run] [rounds]    (defaults: 10 s, 5 rounds)
#
# Both gateways run the same config (RS256 tokens, a GET-for-role-`agent` rule, a local rate
# limit too high to bite, logs off) with 1 worker thread on CPU 0, in front of one nginx on
# CPU 1; wrk (also on CPU 1) cycles through 1,000 distinct tokens. Runs alternate between the
# two (each first every other round), so machine noise hits both alike. Prints each run and the median ratio this/other.
set -euo pipefail
cd "$(dirname "$0")/.."
OTHER=$(realpath "${1:?usage: benches/before_after.sh OTHER_BINARY [seconds] [rounds]}")
SECS=${2:-10}
ROUNDS=${3:-5}
CONNS=${CONNS:-50}

source benches/lib.sh
need wrk:wrk nginx:nginx-light taskset:util-linux curl:curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
ISS=https://dev.portcullis.local
RSA=conf/dev/private-key.pem

"$BIN" token --key "$RSA" --iss "$ISS" --aud portcullis --ttl 4h --sub user --roles agent \
  --count 1000 > "$TMP/tokens.txt"
lua_tokens "$TMP/tokens.txt"

cp conf/dev/jwks.json "$TMP/jwks.json"
UP=$(port)
nginx_server upstream 1 "$UP" 'location / { default_type text/plain; return 200 "ok\n"; }'
taskset -c 1 "$NGINX" -c "$TMP/upstream.conf" -p "$TMP" & PIDS+=($!)
wait_port "$UP"

declare -A PORT
start() { # NAME BINARY
  local p
  p=$(port)
  portcullis_conf "$1" 1 "$p" authenticated "$FULL_POLICY"
  taskset -c 0 "$2" run -c "$TMP/$1.toml" > "$TMP/$1.log" 2>&1 & PIDS+=($!)
  PORT[$1]=$p
  wait_port "$p"
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(head -1 "$TMP/tokens.txt")" "http://127.0.0.1:$p/bench")
  [ "$code" = 200 ] || { echo "$1 answered $code to a good token" >&2; exit 1; }
}
start this "$BIN"
start other "$OTHER"

run() { # NAME SECONDS: prints requests per second
  local r
  r=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$2"s -s "$TMP/tokens.lua" "http://127.0.0.1:${PORT[$1]}/bench" 2>&1 >/dev/null | sed -n 's/^RESULT //p')
  read -r reqs dur errs _ <<< "$r"
  [ "$errs" = 0 ] || { echo "$1: $errs errors" >&2; exit 1; }
  awk -v q="$reqs" -v d="$dur" 'BEGIN { printf "%.0f\n", q * 1e6 / d }'
}
run this 3 > /dev/null
run other 3 > /dev/null
: > "$TMP/ratios"
for round in $(seq "$ROUNDS"); do
  # Each goes first every other round, so neither always runs on a warmer machine.
  if [ $((round % 2)) = 1 ]; then
    a=$(run this "$SECS"); b=$(run other "$SECS")
  else
    b=$(run other "$SECS"); a=$(run this "$SECS")
  fi
  echo "round $round: this $a req/s, other $b req/s" >&2
  awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f\n", a / b }' >> "$TMP/ratios"
done
sort -n "$TMP/ratios" | awk '{ r[NR] = $1 } END { printf "this / other: median %.3f (min %.3f, max %.3f) over %d rounds\n", r[int((NR + 1) / 2)], r[1], r[NR], NR }'
