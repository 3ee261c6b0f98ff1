#!/usr/bin/env bash
# Cost of TLS to the upstream, in one run against nginx: plain HTTP, TLS with connections kept
# alive (the handshake is paid once per connection), and TLS with nginx closing every
# connection (a full handshake per request).
#
#   benches/upstream_tls.sh [seconds per run] [rounds]
#
# The gateway is pinned to CPU 0; nginx and wrk share CPU 1. Public route, no token, so the
# difference is the upstream connection alone.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-3}

source benches/lib.sh
need wrk:wrk nginx:nginx-light openssl:openssl taskset:util-linux
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# A CA and a server certificate for localhost, as a real deployment has.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$TMP/ca.key" -out "$TMP/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$TMP/up.key" -out "$TMP/up.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$TMP/up.ext"
openssl x509 -req -in "$TMP/up.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
  -days 2 -extfile "$TMP/up.ext" -out "$TMP/up.pem" 2>/dev/null

PLAIN=$(port); REUSE=$(port); CLOSE=$(port)
cat > "$TMP/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  ssl_certificate $TMP/up.pem;
  ssl_certificate_key $TMP/up.key;
  ssl_session_tickets off;
  ssl_session_cache off;
  server { listen 127.0.0.1:$PLAIN; keepalive_requests 1000000; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$REUSE ssl; keepalive_requests 1000000; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$CLOSE ssl; keepalive_timeout 0; location / { return 200 "ok\n"; } }
}
NGINX
taskset -c 1 "$NGINX" -c "$TMP/nginx.conf" -p "$TMP" & PIDS+=($!)
wait_port "$PLAIN"; wait_port "$REUSE"; wait_port "$CLOSE"

GW=$(port)
tls() { printf '[upstreams.%s.tls]\nsni = "localhost"\nca_file = "%s"\n' "$1" "$TMP/ca.pem"; }
cat > "$TMP/gw.toml" <<TOML
[server]
listen = ["127.0.0.1:$GW"]
threads = 1
pid_file = "$TMP/gw.pid"
upgrade_sock = "$TMP/gw.sock"

# What these figures compare does not include the logs (measured as they were first taken).
[logging]
access_log = "off"
audit_log = "off"

[upstreams.plain]
targets = ["127.0.0.1:$PLAIN"]

[upstreams.reuse]
targets = ["127.0.0.1:$REUSE"]
$(tls reuse)

[upstreams.close]
targets = ["127.0.0.1:$CLOSE"]
$(tls close)

[[routes]]
path = "/plain"
access = "public"
upstream = "plain"

[[routes]]
path = "/reuse"
access = "public"
upstream = "reuse"

[[routes]]
path = "/close"
access = "public"
upstream = "close"
TOML
RUST_LOG=warn taskset -c 0 "$BIN" run -c "$TMP/gw.toml" 2>"$TMP/gw.log" & PIDS+=($!)
wait_port "$GW"
for mode in plain reuse close; do
  status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GW/$mode")
  [ "$status" = 200 ] || { echo "$mode: got $status" >&2; cat "$TMP/gw.log" >&2; exit 1; }
  taskset -c 1 wrk -t1 -c16 -d2s "http://127.0.0.1:$GW/$mode" >/dev/null
done

declare -A RPS
for r in $(seq "$ROUNDS"); do
  for mode in plain reuse close; do
    out=$(taskset -c 1 wrk -t1 -c16 -d"${SECS}s" "http://127.0.0.1:$GW/$mode")
    if echo "$out" | grep -q "Non-2xx"; then echo "$mode: non-2xx responses" >&2; echo "$out" >&2; exit 1; fi
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    RPS[$mode]+="$rps "
    echo "round $r $mode: $rps req/s" >&2
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
base=$(echo "${RPS[plain]}" | median)
printf '\n%-28s %10s %8s\n' upstream "req/s" "vs plain"
for mode in plain reuse close; do
  m=$(echo "${RPS[$mode]}" | median)
  label=$mode
  case $mode in plain) label="plain HTTP" ;; reuse) label="TLS, connections reused" ;; close) label="TLS, handshake per request" ;; esac
  printf '%-28s %10.0f %8.3f\n' "$label" "$m" "$(awk -v a="$m" -v b="$base" 'BEGIN {print a / b}')"
done
echo "($ROUNDS rounds of ${SECS}s, wrk -t1 -c16; with a handshake per request, nginx's side of it on CPU 1 may be the limit)"
