#!/usr/bin/env bash
# Portcullis side by side with what would be deployed instead, in one run on one machine.
#
#   benches/compare.sh [seconds per run] [rounds]        (defaults: 10 s, 3 rounds)
#
# Contenders, each in front of the same nginx upstream serving a 100-byte body:
#   upstream        the upstream itself, no proxy (the ceiling)
#   nginx           nginx as a plain reverse proxy (no authentication)
#   haproxy-jwt     HAProxy with jwt_verify RS256 and ACLs on iss, aud, exp, roles and method
#   pingora         a plain Pingora passthrough with default settings (benches/passthrough.rs)
#   portcullis-off  Portcullis on a public route: routing and proxying, no authentication
#   portcullis      Portcullis: RS256, GET-for-role-`agent` policy, a local rate limit too
#                   high to bite
#   portcullis-es   the same Portcullis, with ES256 tokens
# Every contender that authenticates is first checked to answer 200 to a good token and
# 401/403 to bad ones. wrk then cycles through 1,000 distinct valid tokens ("many"), and, for
# the contenders that verify tokens, through one token ("one").
#
# The contender runs on CPU 0; wrk and the upstream share CPU 1. Each contender runs with 1
# and then 2 worker threads (nginx workers, HAProxy nbthread, Pingora threads), warmed up
# first. Runs are interleaved in rounds so that machine noise hits all alike; medians are
# reported with min–max, and CPU microseconds per request from the contender's own CPU time.
# A last phase measures Portcullis' valid throughput with 1,000 invalid tokens per second
# mixed in, and, as its control, with as many requests that carry no token and are answered
# by the gateway itself (the cheapest request it serves). PROFILE=1 adds a perf profile of
# Portcullis under load.
#
# Results: benches/results/compare.{tsv,md,png}.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-3}
CONNS=${CONNS:-50}
THREAD_COUNTS=${THREAD_COUNTS:-"1 2"}
OUT=benches/results

source benches/lib.sh
need wrk:wrk nginx:nginx-light haproxy:haproxy taskset:util-linux openssl:openssl \
  jq:jq gnuplot:gnuplot-nox curl:curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
PASSTHROUGH=$(cargo bench --bench passthrough --no-run --message-format=json 2>/dev/null |
  jq -r 'select(.executable != null and .target.name == "passthrough") | .executable')
[ -x "$PASSTHROUGH" ] || { echo "could not build benches/passthrough.rs" >&2; exit 1; }
mkdir -p "$OUT"

# --- keys and tokens ------------------------------------------------------------------------
ISS=https://dev.portcullis.local
RSA=conf/dev/private-key.pem
openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null |
  openssl pkcs8 -topk8 -nocrypt -out "$TMP/ec.pem"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/other.pem" 2>/dev/null
openssl pkey -in "$RSA" -pubout -out "$TMP/rsa.pub.pem"
"$BIN" jwks --key "$TMP/ec.pem" --alg ES256 --kid bench-ec > "$TMP/ec.jwks.json"
jq -s '{keys: (.[0].keys + .[1].keys)}' conf/dev/jwks.json "$TMP/ec.jwks.json" > "$TMP/jwks.json"

mint() { "$BIN" token --iss "$ISS" --aud portcullis --ttl 4h "$@"; }
echo "minting tokens" >&2
mint --key "$RSA" --sub user --roles agent --count 1000 > "$TMP/rs-many.txt"
mint --key "$TMP/ec.pem" --alg ES256 --kid bench-ec --sub user --roles agent --count 1000 \
  > "$TMP/es-many.txt"
mint --key "$TMP/other.pem" --sub intruder --roles agent --count 1000 > "$TMP/bad-many.txt"
head -1 "$TMP/rs-many.txt" > "$TMP/rs-one.txt"
head -1 "$TMP/es-many.txt" > "$TMP/es-one.txt"
for f in rs-many rs-one es-many es-one bad-many; do lua_tokens "$TMP/$f.txt"; done
# The flood: ten connections, each sending one invalid token every 10 ms.
sed 's/^local i = 0$/local i = 0\ndelay = function() return 10 end/' "$TMP/bad-many.lua" > "$TMP/flood.lua"
# Its control: the same connections and pace, to a public route the gateway answers itself.
sed 's#"/bench"#"/cheap"#' "$TMP/flood.lua" > "$TMP/cheapflood.lua"
CHEAP_ROUTE='
[[routes]]
path = "/cheap"
access = "public"
respond = { status = 401, body = "no token" }'

# --- the upstream, on CPU 1 -----------------------------------------------------------------
BODY=$(printf 'x%.0s' $(seq 99))
UP=$(port)
nginx_server upstream-1 1 "$UP" "location / { default_type text/plain; return 200 \"$BODY\n\"; }"
taskset -c 1 "$NGINX" -c "$TMP/upstream-1.conf" -p "$TMP" & PIDS+=($!)
wait_port "$UP"

# --- contenders, on CPU 0 -------------------------------------------------------------------
declare -A PORT PID
start() { # NAME PORT COMMAND...
  local name=$1 p=$2; shift 2
  taskset -c 0 "$@" > "$TMP/$name.log" 2>&1 &
  PID[$name]=$!; PIDS+=($!); PORT[$name]=$p
}

haproxy_conf() { # THREADS PORT
  cat > "$TMP/haproxy.cfg" <<HAPROXY
global
  nbthread $1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend bench
  bind 127.0.0.1:$2
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('\$.iss')
  http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('\$.aud')
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  # HAProxy 2.6 reads no arrays from JSON: the first realm role stands for the list.
  http-request set-var(txn.role) var(txn.bearer),jwt_payload_query('\$.realm_access.roles[0]')
  http-request deny status 401 unless { var(txn.alg) -m str RS256 }
  http-request deny status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$TMP/rsa.pub.pem") -m int 1 }
  http-request deny status 401 unless { var(txn.iss) -m str $ISS } { var(txn.aud) -m str portcullis }
  http-request set-var(txn.now) date()
  http-request set-var(txn.left) var(txn.exp),sub(txn.now)
  http-request deny status 401 unless { var(txn.left) -m int gt 0 }
  http-request deny status 403 unless METH_GET { var(txn.role) -m str agent }
  default_backend upstream
backend upstream
  http-reuse always
  server up 127.0.0.1:$UP maxconn 1000
HAPROXY
}

# --- correctness, before anything is timed --------------------------------------------------
status() { # PORT METHOD [TOKEN]
  local auth=()
  [ -n "${3:-}" ] && auth=(-H "Authorization: Bearer $3")
  curl -s -o /dev/null -w '%{http_code}' -X "$2" "${auth[@]}" "http://127.0.0.1:$1/bench"
}
expect() { # WHAT WANTED GOT
  [ "$2" = "$3" ] || { echo "check failed: $1: wanted $2, got $3" >&2; exit 1; }
}
GOOD=$(head -1 "$TMP/rs-many.txt")
declare -A BAD=(
  [no-token]=""
  [bad-signature]=$(head -1 "$TMP/bad-many.txt")
  [expired]=$(mint --key "$RSA" --sub late --roles agent --issued-ago 5h)
  [wrong-audience]=$("$BIN" token --key "$RSA" --iss "$ISS" --aud elsewhere --sub x --roles agent)
  [wrong-issuer]=$("$BIN" token --key "$RSA" --iss https://elsewhere.example --aud portcullis --sub x --roles agent)
  [garbage]="not.a.token"
)
check() { # NAME TOKEN AUTHENTICATES
  local p=${PORT[$1]} what
  expect "$1: body of a good request" "$BODY" "$(curl -s -H "Authorization: Bearer $2" "http://127.0.0.1:$p/bench")"
  [ "$3" = yes ] || return 0
  for what in "${!BAD[@]}"; do expect "$1: $what" 401 "$(status "$p" GET "${BAD[$what]}")"; done
  expect "$1: no agent role" 403 "$(status "$p" GET "$(mint --key "$RSA" --sub guest --roles guest)")"
  expect "$1: POST" 403 "$(status "$p" POST "$2")"
}

# --- measurement ----------------------------------------------------------------------------
TICK=$(getconf CLK_TCK)
cpu_ticks() { # PID: CPU time of the process and its child processes (nginx's workers)
  local total=0 p f
  for p in "$1" $(pgrep -P "$1" || true); do
    read -r -a f < "/proc/$p/stat"
    total=$((total + f[13] + f[14]))
  done
  echo "$total"
}
wrk_on() { # PORT SCRIPT SECONDS CONNECTIONS: prints "requests µs errors p50µs p99µs"
  taskset -c 1 wrk -t1 -c"$4" -d"$3"s -s "$TMP/$2.lua" "http://127.0.0.1:$1/bench" 2>&1 >/dev/null |
    sed -n 's/^RESULT //p'
}
measure() { # THREADS ROUND NAME SCRIPT [flood|cheapflood]: appends one line to the results
  local name=$3 before after flood_pid="" r
  if [ -n "${5:-}" ]; then
    wrk_on "${PORT[$name]}" "$5" $((SECS + 2)) 10 > "$TMP/flood.out" & flood_pid=$!
    sleep 1
  fi
  before=$(cpu_ticks "${PID[$name]}")
  r=$(wrk_on "${PORT[$name]}" "$4" "$SECS" "$CONNS")
  after=$(cpu_ticks "${PID[$name]}")
  [ -n "$flood_pid" ] && wait "$flood_pid"
  read -r reqs dur errs p50 p99 <<< "$r"
  [ "$errs" = 0 ] || { echo "$name/$4: $errs errors in $reqs requests" >&2; exit 1; }
  local label=$name
  if [ -n "$flood_pid" ]; then
    read -r freqs fdur ferrs _ <<< "$(cat "$TMP/flood.out")"
    [ "$ferrs" = "$freqs" ] || { echo "$5: $ferrs of $freqs requests refused" >&2; exit 1; }
    label="$name+$5"
    awk -v f="$5" -v q="$freqs" -v d="$fdur" 'BEGIN { printf "%s: %.0f requests/s, all refused\n", f, q * 1e6 / d }' >&2
  fi
  awk -v t="$1" -v r="$2" -v n="$label" -v s="$4" -v q="$reqs" -v d="$dur" -v a="$p50" -v b="$p99" \
    -v c=$((after - before)) -v k="$TICK" 'BEGIN {
      printf "%s\t%s\t%s\t%s\t%.0f\t%d\t%d\t%.1f\n", t, r, n, s, q * 1e6 / d, a, b, c * 1e6 / k / q }' \
    | tee -a "$OUT/compare.tsv" >&2
}

{
  echo "- CPU: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(nproc) cores; $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "- Linux $(uname -r); $(rustc --version | cut -d' ' -f1-2); $("$NGINX" -v 2>&1 | cut -d' ' -f3); $("$HAPROXY" -v | head -1 | cut -d' ' -f1-3); $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"
  echo "- $SECS s per run, $ROUNDS rounds, $CONNS connections, wrk with 1 thread"
} > "$OUT/machine.md"
printf 'threads\tround\tcontender\ttokens\treq_per_s\tp50_us\tp99_us\tcpu_us_per_req\n' > "$OUT/compare.tsv"
for T in $THREAD_COUNTS; do
  echo "== $T worker thread(s)" >&2
  P=$(port); nginx_server "direct-$T" "$T" "$P" "location / { default_type text/plain; return 200 \"$BODY\n\"; }"
  start upstream "$P" "$NGINX" -c "$TMP/direct-$T.conf" -p "$TMP"
  P=$(port); nginx_server "proxy-$T" "$T" "$P" \
    'location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }'
  start nginx "$P" "$NGINX" -c "$TMP/proxy-$T.conf" -p "$TMP"
  P=$(port); haproxy_conf "$T" "$P"
  start haproxy-jwt "$P" "$HAPROXY" -db -f "$TMP/haproxy.cfg"
  P=$(port); start pingora "$P" "$PASSTHROUGH" "127.0.0.1:$P" "127.0.0.1:$UP" "$T"
  P=$(port); portcullis_conf "off-$T" "$T" "$P" public ""
  start portcullis-off "$P" "$BIN" run -c "$TMP/off-$T.toml"
  P=$(port); portcullis_conf "full-$T" "$T" "$P" authenticated "$FULL_POLICY$CHEAP_ROUTE"
  start portcullis "$P" "$BIN" run -c "$TMP/full-$T.toml"
  PORT[portcullis-es]=$P; PID[portcullis-es]=${PID[portcullis]}
  for name in upstream nginx haproxy-jwt pingora portcullis-off portcullis; do wait_port "${PORT[$name]}"; done

  for name in upstream nginx pingora portcullis-off; do check "$name" "$GOOD" no; done
  check haproxy-jwt "$GOOD" yes
  check portcullis "$GOOD" yes
  check portcullis-es "$(head -1 "$TMP/es-many.txt")" yes

  RUNS=("upstream rs-many" "nginx rs-many" "haproxy-jwt rs-many" "haproxy-jwt rs-one"
    "pingora rs-many" "portcullis-off rs-many" "portcullis rs-many" "portcullis rs-one"
    "portcullis-es es-many" "portcullis-es es-one")
  echo "warming up" >&2
  for run in "${RUNS[@]}"; do
    read -r name script <<< "$run"
    wrk_on "${PORT[$name]}" "$script" 3 "$CONNS" > /dev/null
  done
  for round in $(seq "$ROUNDS"); do
    for run in "${RUNS[@]}"; do measure "$T" "$round" $run; done
    # Valid traffic with a flood of invalid tokens, and with its control, back to back.
    if [ "$T" = 1 ]; then
      measure "$T" "$round" portcullis rs-many flood
      measure "$T" "$round" portcullis rs-many cheapflood
    fi
  done

  if [ "${PROFILE:-0}" = 1 ]; then
    need perf:linux-perf
    echo "profiling portcullis ($T threads)" >&2
    perf record -F 2000 -g -o "$TMP/perf-$T.data" -p "${PID[portcullis]}" -- sleep "$SECS" \
      > /dev/null 2>&1 & perf_pid=$!
    wrk_on "${PORT[portcullis]}" rs-many "$SECS" "$CONNS" > /dev/null
    wait "$perf_pid"
    perf report -i "$TMP/perf-$T.data" --no-children --sort dso,sym --percent-limit 0.7 --stdio \
      2>/dev/null | grep -v '^#' | grep -v '^$' | grep '%' > "$OUT/profile-$T.txt" || true
  fi

  for name in upstream nginx haproxy-jwt pingora portcullis-off portcullis; do
    kill -KILL "${PID[$name]}" 2>/dev/null || true
    wait "${PID[$name]}" 2>/dev/null || true
  done
done

python3 benches/compare_report.py "$OUT"

gnuplot -e "data='$OUT/compare.plot'; out='$OUT/compare.png'" benches/compare.gnuplot
cat "$OUT/compare.md"
