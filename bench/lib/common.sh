# shellcheck shell=bash disable=SC2034,SC2154 # the settings come from the sourcing script
# Shared pieces of the bench/*_bench.sh scripts. Sourced (under `set -euo pipefail`), not run.
#
# The helpers read the sourcing script's settings, which it sets before calling them:
#   bench_name             prefix of the messages ("api_bench")
#   repo, build_dir        the checkout and the build directory (bench_build, bench_build_type)
#   work                   the temporary directory (bench_make_work sets it)
#   sim, sim_threads, policy_key, policy_key2   the simulator and its owner policy's keys
#   bin, log_level, wrapper, aes_key            the service, its log level, the command prefix
#                                               (an array) and its encryption key
#   phases                 " name name ... " (phase), results: the results file (have)
# and defines stop_all, which stops every process it started (the exit trap calls it).
#
#   die MESSAGE...                     "bench_name: MESSAGE" on stderr, exit 1
#   require_tools TOOL...              dies when one is not on PATH
#   bench_build TARGET...              configures and builds them, unless SKIP_BUILD=1
#   bench_build_type                   sets build_type from the cache; warns unless optimised
#   bench_make_work PREFIX             sets work (a temporary directory) and the traps: on exit
#                                      stop_all, then work removed (kept with KEEP_WORK=1)
#   stop_pid PID                       SIGTERM, up to 5 s, then SIGKILL; reaps it
#   bench_hub_keys                     test certificates in $work/certs, policy_key(2)
#   start_iothub_sim PORT_FILE LOG [ARG...]     the simulator in the background; sets sim_pid
#   wait_port_file FILE PID TRIES STEP          until FILE holds a whole line (fails when PID
#                                               dies or after TRIES x STEP seconds)
#   start_bench_service LISTEN DB NATS_URI OUT ERR [NAME=VALUE...]
#                                      the service in gateway mode on the SQLite file DB, hub
#                                      rate limiter off, NAME=VALUE on top; sets svc_pid
#   gateway_token TENANT               an unsigned user JWT of TENANT (gateway mode)
#   create_integration OUT API AUTH CONN_STR [CURL_ARG...]
#                                      POST API/integrations for CONN_STR; dies unless 201
#   b64url, median, field NAME LINE, vmhwm_kb PID, proc_ticks PID, cpu_ticks, phase NAME,
#   have KEY, verdict VALUE LIMIT [min|max], machine_desc, loadavg, passed_env

die() {
  echo "$bench_name: $*" >&2
  exit 1
}

require_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || die "$tool is required (Debian: apt-get install $tool)"
  done
}

bench_build() {
  [ "${SKIP_BUILD:-0}" != 1 ] || return 0
  cmake -S "$repo" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build_dir" -j2 --target "$@" >/dev/null ||
    die "build failed (cmake --build $build_dir --target $*)"
}

bench_build_type() {
  build_type=unknown
  if [ -f "$build_dir/CMakeCache.txt" ]; then
    build_type=$(sed -n 's/^CMAKE_BUILD_TYPE:STRING=//p' "$build_dir/CMakeCache.txt")
  fi
  case "$build_type" in
  Release | RelWithDebInfo) ;;
  *) echo "$bench_name: WARNING: build type '$build_type' is not an optimised build" >&2 ;;
  esac
}

stop_pid() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

bench_cleanup() {
  stop_all
  if [ "${KEEP_WORK:-0}" = 1 ]; then
    echo "$bench_name: kept $work" >&2
  else
    rm -rf "$work"
  fi
}

bench_make_work() {
  work=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_hub_keys() {
  bash "$repo/scripts/gen-test-certs.sh" "$work/certs" >/dev/null
  policy_key=$(openssl rand -base64 32)
  policy_key2=$(openssl rand -base64 32)
}

start_iothub_sim() {
  local port_file=$1 log=$2
  shift 2
  "$sim" --cert "$work/certs/server.pem" --key "$work/certs/server.key" --quiet \
    --threads "$sim_threads" --port-file "$port_file" \
    --policy "iothubowner:$policy_key:$policy_key2:RegistryRead,RegistryWrite,ServiceConnect" \
    "$@" >"$log" 2>&1 &
  sim_pid=$!
}

# The simulators write the port and a newline to a temporary file and rename it, so a whole
# line is the whole port.
wait_port_file() {
  local file=$1 pid=$2 tries=$3 step=$4
  for _ in $(seq "$tries"); do
    [ -s "$file" ] && [ "$(tail -c1 "$file" | od -An -c | tr -d ' ')" = '\n' ] && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep "$step"
  done
  return 1
}

# The settings listed here are the benchmark's: the caller's NAME=VALUE come after them (and
# win), the other IOT_MANAGER_* variables of the environment pass through.
start_bench_service() {
  local listen=$1 db=$2 nats_uri=$3 out=$4 err=$5
  shift 5
  env IOT_MANAGER_LISTEN="$listen" \
    IOT_MANAGER_SQLITE_PATH="$db" \
    IOT_MANAGER_MONGO_URL="" \
    IOT_MANAGER_NATS_URI="$nats_uri" \
    IOT_MANAGER_NATS_URL="" \
    IOT_MANAGER_AUTH_MODE=gateway \
    IOT_MANAGER_RBAC=false \
    IOT_MANAGER_AES_ENCRYPTION_KEY="$aes_key" \
    IOT_MANAGER_DOMAIN_WHITELIST="localhost" \
    IOT_MANAGER_HUB_CA_FILE="$work/certs/ca.pem" \
    IOT_MANAGER_HUB_ALLOW_PRIVATE_ADDRESSES=true \
    IOT_MANAGER_HUB_RATELIMIT=false \
    IOT_MANAGER_LOG_LEVEL="$log_level" \
    "$@" "${wrapper[@]}" "$bin" --log-level "$log_level" server --automigrate >"$out" 2>"$err" &
  svc_pid=$!
}

# Gateway mode does not check the signature: Mender's API gateway has done that.
gateway_token() {
  echo "$(printf '{"alg":"HS256","typ":"JWT"}' | b64url).$(printf \
    '{"sub":"%s","mender.tenant":"%s","mender.user":true,"mender.plan":"enterprise","iss":"Mender","exp":%d}' \
    "$(cat /proc/sys/kernel/random/uuid)" "$1" $(($(date +%s) + 6 * 3600)) | b64url).bench-unsigned"
}

create_integration() {
  local out=$1 api=$2 auth=$3 cs=$4 code
  shift 4
  code=$(curl -sS -o "$out" -w '%{http_code}' "$@" -H "Authorization: $auth" \
    -H 'Content-Type: application/json' \
    -d "{\"provider\":\"iot-hub\",\"credentials\":{\"type\":\"sas\",\"connection_string\":\"$cs\"}}" \
    "$api/integrations")
  [ "$code" = 201 ] || { cat "$out" >&2; die "creating the integration answered $code"; }
}

b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

median() { sort -g | awk '{a[NR] = $1} END {if (NR) print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# field NAME LINE: the value of NAME=... in a result line
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }

vmhwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# proc_ticks PID: the user + system clock ticks of PID (0 without one)
proc_ticks() { [ -n "$1" ] && sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0; }

# cpu_ticks: "tasks irq" in clock ticks over every CPU. tasks: user + system + steal time; irq:
# hard and soft interrupt time, which the kernel charges to no process (loopback TCP is mostly
# processed there).
cpu_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $9, $7 + $8; exit}' /proc/stat; }

phase() { [[ "$phases" == *" $1 "* ]]; }

have() { awk -v k="$1" '$1 == k {found = 1} END {exit !found}' "$results"; }

# verdict VALUE LIMIT [min|max]: "met" when VALUE >= LIMIT (min, the default) or < LIMIT (max)
verdict() { awk -v v="$1" -v lim="$2" -v dir="${3:-min}" \
  'BEGIN {ok = (dir == "min") ? v >= lim : v < lim; print ok ? "met" : "MISSED"}'; }

machine_desc() { echo "$(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), kernel $(uname -r)"; }

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# passed_env: the IOT_MANAGER_* variables of the environment, which reach the service
passed_env() { env | sed -n 's/^\(IOT_MANAGER_[A-Z_]*\)=.*/\1/p' | sort | tr '\n' ' '; }
