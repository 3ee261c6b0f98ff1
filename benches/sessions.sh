#!/usr/bin/env bash
# Browser sessions against bearer tokens on the same route, with the session store in memory
# and in Redis, and what a refresh costs, measured in one run.
#
#   benches/sessions.sh [seconds per run] [rounds]        (defaults: 10 s, 3 rounds)
#
# The real OpenID provider of the tests (tests/idp) issues the tokens: a client registers, a
# user logs in through the gateway (curl following the provider's form), and the same user's
# access token is obtained once more directly for the bearer runs. wrk sends either the session
# cookie or that access token to a browser route forwarding to nginx. The gateways (1 worker
# thread) are pinned to CPU 0; nginx, redis-server, the provider and wrk share CPU 1. Modes
# alternate within each round; medians are reported, as ratios of "bearer".
#
# The refresh cost: a gateway whose users' access tokens live 2 s refreshes on the first
# request after each second; the latency of those requests is compared with the others'.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-3}

source benches/lib.sh
need wrk:wrk nginx:nginx-light redis-server:redis-server taskset:util-linux curl:curl jq:jq node:nodejs
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -d tests/idp/node_modules/oidc-provider ] || (cd tests/idp && npm ci --no-audit --no-fund --loglevel=error)

UP=$(port); REDIS=$(port); IDP=$(port)
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
taskset -c 1 node tests/idp/server.mjs "$IDP" >"$TMP/idp.log" 2>&1 & PIDS+=($!)
wait_port "$UP"; wait_port "$REDIS"; wait_port "$IDP"
ISSUER="http://127.0.0.1:$IDP"
openssl rand -hex 32 > "$TMP/session.key"

# A client registered for the gateway on port P whose users' tokens live TTL seconds.
register() { # P TTL -> "client_id client_secret"
  curl -s -X POST "$ISSUER/reg" -H 'content-type: application/json' -d "{
    \"redirect_uris\": [\"http://127.0.0.1:$1/auth/callback\"],
    \"grant_types\": [\"authorization_code\", \"refresh_token\"], \"response_types\": [\"code\"],
    \"test_access_token_ttl\": $2}" | jq -r '"\(.client_id) \(.client_secret)"'
}

gateway() { # NAME PORT CLIENT_ID STORE REFRESH_BEFORE
  local store=""
  [ "$4" = redis ] && store=$'store = "redis"\n[rate_limit.redis]\nurl = "redis://127.0.0.1:'"$REDIS"'"'
  cat > "$TMP/$1.toml" <<TOML
[server]
listen = ["127.0.0.1:$2"]
threads = 1
pid_file = "$TMP/$1.pid"
upgrade_sock = "$TMP/$1.sock"

[logging]
access_log = "off"
audit_log = "off"

[issuers.idp]
issuer = "$ISSUER"
audiences = ["https://api.portcullis.test"]
discovery = true

[upstreams.nginx]
targets = ["127.0.0.1:$UP"]

[[routes]]
path = "/bench"
upstream = "nginx"
access = "authenticated"
browser = true
[[routes.allow]]
methods = ["GET"]
roles = ["agent"]

[sessions]
issuer = "idp"
client_id = "$3"
client_secret_env = "SESSION_CLIENT_SECRET"
redirect_uri = "http://127.0.0.1:$2/auth/callback"
scopes = ["openid", "offline_access"]
refresh_before = "$5"
encryption_key_files = ["$TMP/session.key"]
$store
TOML
}

serve() { # NAME PORT CLIENT_SECRET: runs the gateway of $TMP/NAME.toml on CPU 0
  SESSION_CLIENT_SECRET=$3 RUST_LOG=warn taskset -c 0 "$BIN" run -c "$TMP/$1.toml" \
    2>"$TMP/$1.log" & PIDS+=($!)
  wait_port "$2"
}

# Logs USER in at the gateway on port P; prints the session cookie's value.
login() { # P USER
  local jar="$TMP/jar-$1" headers="$TMP/headers-$1" to code_url login_cookie
  rm -f "$jar"
  to=$(curl -s -o /dev/null -D "$headers" -H 'accept: text/html' -H 'sec-fetch-mode: navigate' \
    -w '%{redirect_url}' "http://127.0.0.1:$1/bench")
  login_cookie=$(grep -i '^set-cookie:' "$headers" | sed 's/^[^:]*: *//; s/;.*//' | tr -d '\r')
  to=$(curl -s -o /dev/null -c "$jar" -b "$jar" -w '%{redirect_url}' "$to")
  to=$(curl -s -o /dev/null -c "$jar" -b "$jar" -w '%{redirect_url}' -d "login=$2" "$to")
  code_url=$(curl -s -o /dev/null -c "$jar" -b "$jar" -w '%{redirect_url}' "$to")
  curl -s -o /dev/null -D "$headers" -H "cookie: $login_cookie" "$code_url"
  grep -i '^set-cookie: __Host-portcullis-session=' "$headers" | sed 's/^[^=]*=//; s/;.*//' | tr -d '\r'
}

# USER's access token, by the same code flow straight at the provider.
access_token() { # P CLIENT_ID CLIENT_SECRET USER
  local jar="$TMP/jar-direct" verifier challenge to code
  rm -f "$jar"
  verifier=$(openssl rand -hex 32)
  challenge=$(printf %s "$verifier" | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '=')
  to=$(curl -s -o /dev/null -c "$jar" -b "$jar" -w '%{redirect_url}' \
    "$ISSUER/auth?client_id=$2&response_type=code&scope=openid&redirect_uri=http://127.0.0.1:$1/auth/callback&state=bench-state&nonce=bench-nonce&code_challenge=$challenge&code_challenge_method=S256")
  to=$(curl -s -o /dev/null -c "$jar" -b "$jar" -w '%{redirect_url}' -d "login=$4" "$to")
  to=$(curl -s -o /dev/null -c "$jar" -b "$jar" -w '%{redirect_url}' "$to")
  code=$(echo "$to" | sed 's/.*[?&]code=\([^&]*\).*/\1/')
  curl -s -u "$2:$3" -d grant_type=authorization_code -d "code=$code" -d code_verifier="$verifier" \
    -d "redirect_uri=http://127.0.0.1:$1/auth/callback" "$ISSUER/token" | jq -r .access_token
}

declare -A URL HEADER
for store in memory redis; do
  P=$(port)
  read -r ID SECRET < <(register "$P" 3600)
  gateway "$store" "$P" "$ID" "$store" 30s
  serve "$store" "$P" "$SECRET"
  cookie=$(login "$P" bench-user)
  [ -n "$cookie" ] || { echo "$store: login failed" >&2; cat "$TMP/$store.log" >&2; exit 1; }
  URL[$store]="http://127.0.0.1:$P/bench"
  HEADER[$store]="Cookie: __Host-portcullis-session=$cookie"
  if [ "$store" = memory ]; then
    token=$(access_token "$P" "$ID" "$SECRET" bench-user)
    URL[bearer]="http://127.0.0.1:$P/bench"
    HEADER[bearer]="Authorization: Bearer $token"
  fi
done
for mode in bearer memory redis; do
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "${HEADER[$mode]}" "${URL[$mode]}")
  [ "$status" = 200 ] || { echo "$mode: probe got $status" >&2; exit 1; }
  taskset -c 1 wrk -t1 -c32 -d2s -H "${HEADER[$mode]}" "${URL[$mode]}" >/dev/null
done

declare -A RPS P99
for r in $(seq "$ROUNDS"); do
  for mode in bearer memory redis; do
    out=$(taskset -c 1 wrk -t1 -c32 -d"${SECS}s" --latency -H "${HEADER[$mode]}" "${URL[$mode]}")
    if echo "$out" | grep -q "Non-2xx"; then echo "$mode: non-2xx responses" >&2; echo "$out" >&2; exit 1; fi
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    RPS[$mode]+="$rps "
    P99[$mode]+="$(echo "$out" | awk '$1 == "99%" {print $2}') "
    echo "round $r $mode: $rps req/s" >&2
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
base=$(echo "${RPS[bearer]}" | median)
printf '\n%-8s %12s %10s %12s\n' caller "req/s" "vs bearer" "p99 latency"
for mode in bearer memory redis; do
  m=$(echo "${RPS[$mode]}" | median)
  p=$(echo "${P99[$mode]}" | tr ' ' '\n' | grep -v '^$' | sort | sed -n "$(( (ROUNDS + 1) / 2 ))p")
  printf '%-8s %12.0f %10.3f %12s\n' "$mode" "$m" "$(awk -v a="$m" -v b="$base" 'BEGIN {print a / b}')" "$p"
done
echo "($ROUNDS rounds of ${SECS}s, wrk -t1 -c32, one session or one token; memory and redis: the session cookie)"

# --- the cost of a refresh -------------------------------------------------------------------
for store in memory redis; do
  P=$(port)
  read -r ID SECRET < <(register "$P" 2)
  gateway "refresh-$store" "$P" "$ID" "$store" 1s
  serve "refresh-$store" "$P" "$SECRET"
  cookie=$(login "$P" bench-user)
  plain=() refreshing=()
  for i in $(seq 20); do
    # Just refreshed: not due for a second.
    t=$(curl -s -o /dev/null -w '%{time_total}' -H "cookie: __Host-portcullis-session=$cookie" "http://127.0.0.1:$P/bench")
    plain+=("$t")
    sleep 1.1
    t=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' -H "cookie: __Host-portcullis-session=$cookie" "http://127.0.0.1:$P/bench")
    [ "${t%% *}" = 200 ] || { echo "refresh-$store: got ${t%% *}" >&2; exit 1; }
    refreshing+=("${t#* }")
  done
  pm=$(printf '%s\n' "${plain[@]}" | median)
  rm_=$(printf '%s\n' "${refreshing[@]}" | median)
  printf 'refresh (%s store): median %.2f ms for a request that refreshes, %.2f ms for one that does not (20 each)\n' \
    "$store" "$(awk -v t="$rm_" 'BEGIN {print t * 1000}')" "$(awk -v t="$pm" 'BEGIN {print t * 1000}')"
done
