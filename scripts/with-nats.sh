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

if [ $# -eq 0 ]; then
  echo "usage: $0 <command> [args...]" >&2
  exit 2
fi

if [ -n "${IOT_MANAGER_TEST_NATS_URL:-}" ]; then
  exec "$@"
fi

nats_server=${NATS_SERVER:-/usr/sbin/nats-server} # /usr/sbin is often not on PATH
ready_timeout_s=10
if [ ! -x "$nats_server" ]; then
  echo "with-nats: $nats_server not found (apt-get install nats-server)" >&2
  exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/iotm-nats.XXXXXX")
server_pid=

stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    # bounded graceful stop, then forced
    for _ in $(seq 1 50); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    # nats-server 2.9 exits with status 1 on SIGTERM: not a failure of the run
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=
}
cleanup() {
  stop_server
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# A port the kernel just handed out and released; the tiny window before the server binds it
# is acceptable for tests.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

port=$(free_port)
monitor_port=$(free_port)
log="$tmp/server.log"

# -a: without it the server listens on 0.0.0.0 (client and monitoring ports alike)
"$nats_server" -a 127.0.0.1 -p "$port" -m "$monitor_port" -js -sd "$tmp/store" >"$log" 2>&1 &
server_pid=$!

health="http://127.0.0.1:$monitor_port/healthz?js-enabled-only=true"
ready=
for _ in $(seq 1 $((ready_timeout_s * 20))); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    break
  fi
  if curl -sf -o /dev/null --max-time 1 "$health"; then
    ready=1
    break
  fi
  sleep 0.05
done
if [ -z "$ready" ]; then
  echo "with-nats: nats-server did not become ready on 127.0.0.1:$port; its log:" >&2
  cat "$log" >&2 || true
  exit 1
fi

export IOT_MANAGER_TEST_NATS_URL="nats://127.0.0.1:$port"
export IOT_MANAGER_TEST_NATS_MONITOR="http://127.0.0.1:$monitor_port"
set +e
"$@"
status=$?
set -e
exit "$status"
