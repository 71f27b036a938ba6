# Shared skeleton of the scripts/with-*.sh wrappers, which run a command against a throwaway
# server. Sourced (under `set -euo pipefail`), not run. A wrapper:
#
#   with_server_begin URL_VAR "$@"    usage check (exit 2 without a command); when URL_VAR is
#                                     already set, runs the command against that server instead
#   with_server_setup NAME            makes $tmp (a temporary directory named after NAME) and
#                                     $log inside it; on exit (also HUP, INT, TERM) the server
#                                     started in $server_pid is stopped and $tmp removed
#   free_port                         prints a loopback port that was free a moment ago
#   ...starts the server in the background, logging to $log, and sets server_pid=$!...
#   with_server_wait LABEL WHAT ADDR TRIES STEP CHECK [ARGS...]
#                                     polls CHECK every STEP seconds, at most TRIES times, until
#                                     it succeeds; when the server dies or time runs out, prints
#                                     "LABEL: WHAT did not become ready on ADDR" and the log,
#                                     and exits 1
#   with_server_port_open PORT        a CHECK: 127.0.0.1:PORT accepts connections
#   with_server_run "$@"              runs the command and exits with its status

with_server_begin() {
  local url_var=$1
  shift
  if [ $# -eq 0 ]; then
    echo "usage: $0 <command> [args...]" >&2
    exit 2
  fi
  if [ -n "${!url_var:-}" ]; then
    exec "$@"
  fi
}

server_pid=
tmp=
log=

stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    # bounded graceful stop, then forced
    for _ in $(seq 1 50); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    # a server's own exit status on SIGTERM (nats-server 2.9 exits 1) is not the run's
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=
}

with_server_cleanup() {
  stop_server
  if [ -n "$tmp" ]; then
    rm -rf "$tmp"
  fi
}

with_server_setup() {
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/iotm-$1.XXXXXX")
  log="$tmp/server.log"
  trap with_server_cleanup EXIT
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# A port the kernel just handed out and released; the tiny window before the server binds it
# is acceptable for tests.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

with_server_port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

with_server_wait() {
  local label=$1 what=$2 addr=$3 tries=$4 step=$5
  shift 5
  for _ in $(seq 1 "$tries"); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      break # died: fail now rather than at the deadline
    fi
    if "$@"; then
      return 0
    fi
    sleep "$step"
  done
  echo "$label: $what did not become ready on $addr; its log:" >&2
  cat "$log" >&2 || true
  exit 1
}

with_server_run() {
  local status
  set +e
  "$@"
  status=$?
  set -e
  exit "$status"
}
