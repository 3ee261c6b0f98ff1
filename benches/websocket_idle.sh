#!/usr/bin/env bash
# Idle WebSockets through one gateway process, closed as their tokens expire: memory per
# connection, idle CPU, and how late each Close comes. See benches/websocket_idle.rs.
#
#   benches/websocket_idle.sh [connections]     (default 100,000)
#   WS_TLS=1 benches/websocket_idle.sh ...      (the clients connect over TLS, wss://)
#
# Each connection takes two descriptors in the gateway (client and backend side), so the
# open-file limit must exceed twice the count. It is raised when the machine allows; where the
# hard limit is lower, the count is reduced to fit and the run says so.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
# The gateway holds two descriptors per connection; the client and the backend one each.
ulimit -n $(( 2 * N + 1024 )) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
FITS=$(( ($(ulimit -n) - 64) / 2 ))
if [ "$N" -gt "$FITS" ]; then
  echo "open-file limit $(ulimit -n): running $FITS connections instead of $N" >&2
  N=$FITS
fi
WS_CONNECTIONS=$N cargo bench --bench websocket_idle
