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

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/with-server.sh
. "$here/lib/with-server.sh"

with_server_begin IOT_MANAGER_TEST_MONGO_URL "$@"

ready_timeout_s=20
with_server_setup mongo
port=$(free_port)

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

# Ready once the port accepts connections (bounded; fails early if the server died).
with_server_wait with-mongo "$server" "127.0.0.1:$port" $((ready_timeout_s * 10)) 0.1 \
  with_server_port_open "$port"

export IOT_MANAGER_TEST_MONGO_URL="mongodb://127.0.0.1:$port/"
with_server_run "$@"
