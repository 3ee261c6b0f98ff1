# Shared set-up of the wrk benchmarks; sourced from the repository root by each script.
#
#   need CMD:PACKAGE ...   installs the Debian packages of the commands that are missing
#   port                   prints a free loopback port
#   wait_port PORT         waits (10 s at most) until something accepts on PORT
#   nginx_server NAME WORKERS PORT LOCATION-BODY
#                          writes $TMP/NAME.conf: an nginx serving LOCATION-BODY on PORT, with
#                          an `up` upstream block pointing at $UP for proxying configs
#   portcullis_conf NAME THREADS PORT ACCESS EXTRA
#                          writes $TMP/NAME.toml: the gateway on PORT with THREADS, logs off,
#                          issuer $ISS with keys from $TMP/jwks.json, route /bench to nginx on
#                          $UP with ACCESS, then the EXTRA lines ($FULL_POLICY: the measured
#                          policy, GET for role `agent` and a rate limit too high to bite)
#   lua_tokens FILE        writes FILE.lua (FILE without .txt): a wrk script sending GET /bench
#                          with each bearer token of FILE in turn, reporting a RESULT line
#
# After sourcing: BIN (the release gateway, built unless BIN was given), NGINX, TMP (removed on exit) and PIDS
# (killed on exit: append every background process).

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

need() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; echo "nothing on $1" >&2; exit 1; }

# BIN=path measures another build of the gateway (for example the test profile's).
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=$PWD/target/release/portcullis
fi

lua_tokens() { # FILE: a wrk script cycling through the tokens in FILE, one per line
  {
    echo "local tokens = {"
    sed 's/.*/  "&",/' "$1"
    cat <<'LUA'
}
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "/bench", { ["Authorization"] = "Bearer " .. tokens[i] })
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.stderr:write(string.format("RESULT %d %d %d %d %d\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout + e.status,
    latency:percentile(50), latency:percentile(99)))
end
LUA
  } > "${1%.txt}.lua"
}

nginx_server() { # NAME WORKERS PORT LOCATION-BODY
  cat > "$TMP/$1.conf" <<NGINX
worker_processes $2;
daemon off;
pid $TMP/$1.pid;
error_log $TMP/$1.err;
events { worker_connections 4096; }
http {
  access_log off;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server { listen 127.0.0.1:$3 backlog=4096; keepalive_requests 10000000; $4 }
}
NGINX
}

portcullis_conf() { # NAME THREADS PORT ACCESS EXTRA
  cat > "$TMP/$1.toml" <<TOML
[server]
listen = ["127.0.0.1:$3"]
threads = $2
pid_file = "$TMP/$1.pid"
upgrade_sock = "$TMP/$1.sock"

# The other contenders log nothing either.
[logging]
access_log = "off"
audit_log = "off"

[issuers.dev]
issuer = "$ISS"
audiences = ["portcullis"]
algorithms = ["RS256", "ES256"]
jwks_file = "$TMP/jwks.json"

[upstreams.nginx]
targets = ["127.0.0.1:$UP"]

[[routes]]
path = "/bench"
upstream = "nginx"
access = "$4"
$5
TOML
}

FULL_POLICY='
[[routes.allow]]
methods = ["GET"]
roles = ["agent"]

[[rate_limit.tiers]]
name = "users"
limits = ["1000000/second"]'

TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
