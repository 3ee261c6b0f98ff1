#!/usr/bin/env bash
# Cost of TLS to the upstream, in one run against nginx: plain HTTP, TLS and mutual TLS with
# connections kept alive (the handshake is paid once per connection), and TLS with nginx
# closing every connection (a full handshake per request).
#
#   benches/upstream_tls.sh [seconds per run] [rounds]        (THREADS=2 gateway threads)
#
# The gateway is pinned to CPU 0; nginx and wrk share CPU 1. Public route, no token, so the
# difference is the upstream connection alone. Besides requests per second it reports how many
# connections nginx accepted from the gateway during each run (16 client connections; a working
# keep-alive pool opens about as many) and how often the gateway logged "failed to acquire
# reusable stream" (cloudflare/pingora#998).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-3}
THREADS=${THREADS:-2}

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
# The gateway's client certificate, for mutual TLS.
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=gateway \
  -keyout "$TMP/gw.key" -out "$TMP/gw.csr" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > "$TMP/gw.ext"
openssl x509 -req -in "$TMP/gw.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
  -days 2 -extfile "$TMP/gw.ext" -out "$TMP/gw.pem" 2>/dev/null

PLAIN=$(port); REUSE=$(port); MTLS=$(port); CLOSE=$(port); STATUS=$(port)
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
  server { listen 127.0.0.1:$MTLS ssl; keepalive_requests 1000000;
    ssl_client_certificate $TMP/ca.pem; ssl_verify_client on; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$STATUS; location / { stub_status; } }
  server { listen 127.0.0.1:$CLOSE ssl; keepalive_timeout 0; location / { return 200 "ok\n"; } }
}
NGINX
taskset -c 1 "$NGINX" -c "$TMP/nginx.conf" -p "$TMP" & PIDS+=($!)
wait_port "$PLAIN"; wait_port "$REUSE"; wait_port "$MTLS"; wait_port "$CLOSE"; wait_port "$STATUS"
# Connections nginx has accepted so far (its stub_status "accepts").
accepted() { curl -s "http://127.0.0.1:$STATUS/" | awk 'NR == 3 {print $1}'; }

GW=$(port)
tls() { printf '[upstreams.%s.tls]\nsni = "localhost"\nca_file = "%s"\n' "$1" "$TMP/ca.pem"; }
cat > "$TMP/gw.toml" <<TOML
[server]
listen = ["127.0.0.1:$GW"]
threads = $THREADS
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

[upstreams.mtls]
targets = ["127.0.0.1:$MTLS"]
$(tls mtls)
client_cert_file = "$TMP/gw.pem"
client_key_file = "$TMP/gw.key"

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
path = "/mtls"
access = "public"
upstream = "mtls"

[[routes]]
path = "/close"
access = "public"
upstream = "close"
TOML
RUST_LOG=warn taskset -c 0 "$BIN" run -c "$TMP/gw.toml" 2>"$TMP/gw.log" & PIDS+=($!)
wait_port "$GW"
MODES="plain reuse mtls close"
for mode in $MODES; do
  status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GW/$mode")
  [ "$status" = 200 ] || { echo "$mode: got $status" >&2; cat "$TMP/gw.log" >&2; exit 1; }
  taskset -c 1 wrk -t1 -c16 -d2s "http://127.0.0.1:$GW/$mode" >/dev/null
done

declare -A RPS CONNS
lost_before=$(grep -c "failed to acquire reusable stream" "$TMP/gw.log" || true)
for r in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    before=$(accepted)
    out=$(taskset -c 1 wrk -t1 -c16 -d"${SECS}s" "http://127.0.0.1:$GW/$mode")
    opened=$(( $(accepted) - before - 1 ))  # less the status request itself
    if echo "$out" | grep -q "Non-2xx"; then echo "$mode: non-2xx responses" >&2; echo "$out" >&2; exit 1; fi
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    RPS[$mode]+="$rps "
    CONNS[$mode]+="$opened "
    echo "round $r $mode: $rps req/s, $opened upstream connections opened" >&2
  done
done
lost=$(( $(grep -c "failed to acquire reusable stream" "$TMP/gw.log" || true) - lost_before ))

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
base=$(echo "${RPS[plain]}" | median)
printf '\n%-30s %10s %8s %22s\n' upstream "req/s" "vs plain" "connections per run"
for mode in $MODES; do
  m=$(echo "${RPS[$mode]}" | median)
  c=$(echo "${CONNS[$mode]}" | median)
  case $mode in
    plain) label="plain HTTP" ;;
    reuse) label="TLS, connections reused" ;;
    mtls) label="mutual TLS, connections reused" ;;
    close) label="TLS, handshake per request" ;;
  esac
  printf '%-30s %10.0f %8.3f %22s\n' "$label" "$m" "$(awk -v a="$m" -v b="$base" 'BEGIN {print a / b}')" "$c"
done
echo "\"failed to acquire reusable stream\" logged $lost times during the runs"
echo "($ROUNDS rounds of ${SECS}s, wrk -t1 -c16, $THREADS gateway threads; with a handshake per request, nginx's side of it on CPU 1 may be the limit)"
