#!/usr/bin/env bash
# Runs a command with IOT_MANAGER_TEST_MONGO_URL pointing at a MongoDB-wire server.
#
#   scripts/with-mongo.sh <command> [args...]
#
# If IOT_MANAGER_TEST_MONGO_URL is already set, that server is used as is. Otherwise a throwaway
# server is started on a free loopback port in a temporary directory: `mongod` when it is on PATH,
# else FerretDB (SQLite backend) from scripts/build-ferretdb.sh. The server is always stopped and
# the directory removed afterwards; the exit status is the command's.
set -euo pipefail

if [ $# -eq 0 ]; then
  echo "usage: $0 <command> [args...]" >&2
  exit 2
fi

if [ -n "${IOT_MANAGER_TEST_MONGO_URL:-}" ]; then
  exec "$@"
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ready_timeout_s=20
tmp=$(mktemp -d "${TMPDIR:-/tmp}/iotm-mongo.XXXXXX")
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
log="$tmp/server.log"

if command -v mongod >/dev/null 2>&1; then
  mkdir -p "$tmp/db"
  mongod --dbpath "$tmp/db" --bind_ip 127.0.0.1 --port "$port" --nounixsocket \
    --logpath "$log" >/dev/null 2>&1 &
  server_pid=$!
  server=mongod
else
  ferretdb=$("$here/build-ferretdb.sh")
  mkdir -p "$tmp/data"
  "$ferretdb" --handler=sqlite --sqlite-url="file:$tmp/data/" \
    --listen-addr="127.0.0.1:$port" --state-dir=- --debug-addr=- --telemetry=disable \
    --log-level=warn >"$log" 2>&1 &
  server_pid=$!
  server=ferretdb
fi

# Ready once the port accepts connections (bounded; fail early if the server died).
ready=
for _ in $(seq 1 $((ready_timeout_s * 10))); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    break
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "with-mongo: $server did not become ready on 127.0.0.1:$port; its log:" >&2
  cat "$log" >&2 || true
  exit 1
fi

export IOT_MANAGER_TEST_MONGO_URL="mongodb://127.0.0.1:$port/"
set +e
"$@"
status=$?
set -e
exit "$status"
