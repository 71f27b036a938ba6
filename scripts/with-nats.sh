#!/usr/bin/env bash
# Runs a command with IOT_MANAGER_TEST_NATS_URL pointing at a nats-server with JetStream.
#
#   scripts/with-nats.sh <command> [args...]
#
# If IOT_MANAGER_TEST_NATS_URL is already set, that server is used as is. Otherwise a throwaway
# /usr/sbin/nats-server (Debian package nats-server) is started on free loopback ports with its
# JetStream store in a temporary directory; IOT_MANAGER_TEST_NATS_MONITOR then names its
# monitoring endpoint. The server is always stopped and the directory removed afterwards; the
# exit status is the command's.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/with-server.sh
. "$here/lib/with-server.sh"

with_server_begin IOT_MANAGER_TEST_NATS_URL "$@"

nats_server=${NATS_SERVER:-/usr/sbin/nats-server} # /usr/sbin is often not on PATH
ready_timeout_s=10
if [ ! -x "$nats_server" ]; then
  echo "with-nats: $nats_server not found (apt-get install nats-server)" >&2
  exit 1
fi

with_server_setup nats
port=$(free_port)
monitor_port=$(free_port)

# -a: without it the server listens on 0.0.0.0 (client and monitoring ports alike)
"$nats_server" -a 127.0.0.1 -p "$port" -m "$monitor_port" -js -sd "$tmp/store" >"$log" 2>&1 &
server_pid=$!

health="http://127.0.0.1:$monitor_port/healthz?js-enabled-only=true"
with_server_wait with-nats nats-server "127.0.0.1:$port" $((ready_timeout_s * 20)) 0.05 \
  curl -sf -o /dev/null --max-time 1 "$health"

export IOT_MANAGER_TEST_NATS_URL="nats://127.0.0.1:$port"
export IOT_MANAGER_TEST_NATS_MONITOR="http://127.0.0.1:$monitor_port"
with_server_run "$@"
