#!/usr/bin/env bash
# HTTP API benchmark of iot-manager (issue 5, item 9): gateway mode, SQLite store, next to the
# IoT Hub simulator on loopback, measured with wrk (Debian package `wrk`) over keep-alive
# connections.
#
#   bench/api_bench.sh
#
# What it measures, each RUNS times after a warm-up run:
#   integrations  GET /api/management/v1/iot-manager/integrations (one integration stored)
#   twin          GET .../devices/{id}/state/{integrationId}: the device record, the integration
#                 (its key decrypted), then GET /twins/{id} on the simulator over HTTPS
#   direct        the same GET /twins/{id} sent by wrk straight to the simulator (SAS token):
#                 the baseline; "added" latency = twin minus direct, percentile by percentile
# at CONNECTIONS connections (wrk -t WRK_THREADS) as fast as possible, at CONNECTIONS connections
# paced to each rate in PACED_RPS requests/s in all (wrk's delay() hook), and at one connection
# (wrk -t1 -c1);
# twin and direct runs interleaved so that drifting background load hits both alike. Then GET
# /integrations once more per IOT_MANAGER_HTTP_THREADS value in HTTP_THREADS_LIST, each on a
# freshly started service. Prints every run, a table of medians, the added latency and each
# service process's peak RSS (VmHWM), and the CPU each party used during each run (service,
# simulator, wrk, interrupts, every other process).
#
# The service runs with IOT_MANAGER_HUB_RATELIMIT=false (the S1 quota, 100 twin reads/s, would
# otherwise be what the twin benchmark measures) and otherwise default settings: thread per
# connection, IOT_MANAGER_HUB_MAX_CONNECTIONS=64, one access-log line per request (to a file).
#
# On 2 shared cores wrk, the service and the simulator compete for the CPU: in the saturating
# runs the twin-minus-direct difference is mostly queueing (closed loop: latency ~ connections /
# throughput, and the service's own work slows the simulator down); the paced and one-connection
# runs show what the service adds to a request.
#
# Environment:
#   BUILD_DIR (build)      configured RelWithDebInfo and built unless SKIP_BUILD=1
#   IOT_MANAGER_BIN, IOTHUB_SIM   binaries (default: in BUILD_DIR)
#   RUNS (3), DURATION (10s), WARMUP (3s), CONNECTIONS (64), WRK_THREADS (2)
#   HTTP_THREADS (0)       IOT_MANAGER_HTTP_THREADS of the main service (0: thread per connection)
#   HTTP_THREADS_LIST ("0 2 4")   variants for GET /integrations ("" skips them)
#   SIM_THREADS (2)        the simulator's MHD pool
#   LOG_LEVEL (info)       the service's; info logs one line per request, as in production
#   PACED_RPS ("2000 4000 6000")   offered loads of the paced twin/direct runs at CONNECTIONS
#   PHASES ("integrations twin paced c1 threads")   which measurements to run: GET
#                          /integrations, twin vs direct saturating, paced, at one connection,
#                          GET /integrations per HTTP_THREADS_LIST value
#   SERVICE_WRAPPER        command prefix for the service (profiling: valgrind --tool=callgrind)
#   MAX_OTHER_CORES (0.2), RETRIES (2)   a run during which processes other than the service,
#                          the simulator and wrk used more CPU than that is repeated, up to
#                          RETRIES times, keeping the least disturbed attempt (marked DISTURBED
#                          when even that one was over the limit): for machines shared with
#                          builds and tests
#   KEEP_WORK (0)          1 keeps the temporary directory (logs, database, certificates)
# Other IOT_MANAGER_* variables in the environment reach the service (they are listed), except
# the store, NATS and auth settings the benchmark fixes.
# Exits non-zero when a run sees a socket error or an answer >= 400.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
build_dir=${BUILD_DIR:-$repo/build}
runs=${RUNS:-3}
duration=${DURATION:-10s}
warmup=${WARMUP:-3s}
connections=${CONNECTIONS:-64}
wrk_threads=${WRK_THREADS:-2}
http_threads=${HTTP_THREADS:-0}
http_threads_list=${HTTP_THREADS_LIST-0 2 4}
sim_threads=${SIM_THREADS:-2}
log_level=${LOG_LEVEL:-info}
phases=" ${PHASES:-integrations twin paced c1 threads} "
# SERVICE_WRAPPER: a command prefix for the service, e.g. valgrind --tool=callgrind (profiling)
read -r -a wrapper <<<"${SERVICE_WRAPPER:-}"
paced_list=${PACED_RPS:-2000 4000 6000}
max_other=${MAX_OTHER_CORES:-0.2}
retries=${RETRIES:-2}
bench_delay_ms=0
lua="$here/lib/wrk_auth_report.lua"
bench_name=api_bench
# shellcheck source=bench/lib/common.sh
. "$here/lib/common.sh"

require_tools wrk curl openssl sqlite3 base64 od awk
bench_build iot-manager iothub-sim
bin=${IOT_MANAGER_BIN:-$build_dir/iot-manager}
sim=${IOTHUB_SIM:-$build_dir/iothub-sim}
[ -x "$bin" ] || die "no iot-manager at $bin"
[ -x "$sim" ] || die "no iothub-sim at $sim"
bench_build_type

sim_pid=""
svc_pid=""
stop_all() {
  stop_pid "$svc_pid"
  stop_pid "$sim_pid"
}
bench_make_work iotm-api-bench

# ---- helpers

# listen_port PID: the TCP port PID listens on (the service binds port 0 and does not report it
# outside its info-level log): its socket inodes matched against /proc/net/tcp{,6}.
listen_port() {
  local inodes hex
  inodes=$(find "/proc/$1/fd" -lname 'socket:*' -printf '%l ' 2>/dev/null | tr -dc '0-9 ')
  [ -n "${inodes// /}" ] || return 0
  hex=$(awk -v list="$inodes" 'BEGIN {n = split(list, a, " "); for (i = 1; i <= n; i++) own[a[i]] = 1}
    FNR > 1 && $4 == "0A" && ($10 in own) {split($2, p, ":"); print p[2]; exit}' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null)
  [ -z "$hex" ] || echo $((16#$hex))
}

# wrk_run LABEL CONNECTIONS THREADS URL AUTH DURATION: one wrk run; prints its BENCH_RESULT line
# plus wrk_cpu_s=<wrk's CPU seconds> (and keeps wrk's own output in the work directory). Fails
# on any error.
wrk_run() {
  local label=$1 conns=$2 threads=$3 url=$4 auth=$5 dur=$6
  local out
  out="$work/wrk-$label-$(date +%s%N).txt"
  BENCH_AUTH="$auth" BENCH_DELAY_MS="$bench_delay_ms" wrk -t"$threads" -c"$conns" -d"$dur" --latency -s "$lua" "$url" >"$out" 2>&1 ||
    { cat "$out" >&2; die "wrk failed ($label)"; }
  # This function runs in a command substitution, so the children's times are wrk's alone.
  local wrk_cpu
  times >"$out.times" # a builtin with a redirection: no fork, which would reset the times
  wrk_cpu=$(awk 'NR == 2 {t = 0; for (i = 1; i <= 2; i++) {split($i, m, "m"); t += m[1] * 60 + m[2]} print t}' "$out.times")
  local line
  line=$(grep '^BENCH_RESULT ' "$out") || { cat "$out" >&2; die "no result from wrk ($label)"; }
  line="$line wrk_cpu_s=$wrk_cpu"
  local bad=0
  for f in connect read write timeout status; do
    [ "$(field "$f" "$line")" = 0 ] || bad=1
  done
  [ "$(field requests "$line")" -gt 0 ] || bad=1
  if [ "$bad" = 1 ]; then
    cat "$out" >&2
    die "errors during $label (see above); the service log is in $work (KEEP_WORK=1 keeps it)"
  fi
  echo "$line"
}

# CPU time in clock ticks: "tasks irq service simulator" (cpu_ticks, then the two processes)
cpu_snapshot() { echo "$(cpu_ticks)" "$(proc_ticks "$svc_pid")" "$(proc_ticks "$sim_pid")"; }

# Results, one line per run:
#   "KEY rps p50_us p99_us mean_us service simulator wrk irq other"
# (CPU in cores: CPU time used during the run / its wall time; irq: interrupt and softirq time,
# mostly the loopback traffic itself; other: every other process)
results="$work/results.txt"
: >"$results"
hz=$(getconf CLK_TCK)

# one_run KEY CONNECTIONS THREADS URL AUTH: "rps p50 p99 mean svc sim wrk irq other" of one run
one_run() {
  local before after t0 t1 line
  before=$(cpu_snapshot)
  t0=$(date +%s%N)
  line=$(wrk_run "$@" "$duration")
  t1=$(date +%s%N)
  after=$(cpu_snapshot)
  awk -v b="$before" -v a="$after" -v hz="$hz" -v ns=$((t1 - t0)) -v w="$(field wrk_cpu_s "$line")" \
    -v rps="$(field rps "$line")" -v p50="$(field p50_us "$line")" \
    -v p99="$(field p99_us "$line")" -v mean="$(field mean_us "$line")" 'BEGIN {
    split(b, x, " "); split(a, y, " "); s = ns / 1e9
    tasks = (y[1] - x[1]) / hz / s; irq = (y[2] - x[2]) / hz / s
    svc = (y[3] - x[3]) / hz / s; sim = (y[4] - x[4]) / hz / s; wrk = w / s
    other = tasks - svc - sim - wrk; if (other < 0) other = 0
    printf "%s %s %s %s %.2f %.2f %.2f %.2f %.2f\n", rps, p50, p99, mean, svc, sim, wrk, irq, other}'
}

# measure KEY CONNECTIONS THREADS URL AUTH: one run, recorded under KEY and echoed. A run during
# which other processes used more than MAX_OTHER_CORES is repeated (up to RETRIES times) and the
# least disturbed attempt is kept.
measure() {
  local key=$1 best="" r attempt
  for attempt in $(seq $((retries + 1))); do
    r=$(one_run "$key" "$2" "$3" "$4" "$5")
    if [ -z "$best" ] || awk -v a="$r" -v b="$best" 'BEGIN {split(a, x, " "); split(b, y, " "); exit !(x[9] < y[9])}'; then
      best=$r
    fi
    awk -v r="$best" -v m="$max_other" 'BEGIN {split(r, x, " "); exit !(x[9] <= m)}' && break
    if [ "$attempt" -le "$retries" ]; then
      echo "  ($key: other processes used $(cut -d' ' -f9 <<<"$r") cores during the run; repeating it)"
    fi
  done
  echo "$key $best" >>"$results"
  local rps p50 p99 svc sim wrkc irq other mark=""
  read -r rps p50 p99 _ svc sim wrkc irq other <<<"$best"
  awk -v o="$other" -v m="$max_other" 'BEGIN {exit !(o > m)}' && mark=" DISTURBED"
  printf '  %-24s %6.0f req/s  p50 %6.3f ms  p99 %6.3f ms  CPU: svc %s sim %s wrk %s irq %s other %s%s\n' \
    "$key" "$rps" "$(awk -v v="$p50" 'BEGIN {print v / 1000}')" \
    "$(awk -v v="$p99" 'BEGIN {print v / 1000}')" "$svc" "$sim" "$wrkc" "$irq" "$other" "$mark"
}

warm() { wrk_run "warmup-$1" "$2" "$3" "$4" "$5" "$warmup" >/dev/null; }

# col KEY N: median of column N (2 rps, 3 p50_us, 4 p99_us, 5 mean_us, 6-10 CPU) over KEY's runs
col() { awk -v k="$1" -v n="$2" '$1 == k {print $n}' "$results" | median; }

# ---- the simulator

bench_hub_keys
start_iothub_sim "$work/sim.port" "$work/iothub-sim.log"
wait_port_file "$work/sim.port" "$sim_pid" 200 0.05 ||
  { cat "$work/iothub-sim.log" >&2; die "the simulator did not start"; }
sim_port=$(head -n1 "$work/sim.port")
hub_host="localhost:$sim_port"
conn_str="HostName=$hub_host;SharedAccessKeyName=iothubowner;SharedAccessKey=$policy_key"
# (stderr kept apart: client libraries may print notices there)
sas=$("$bin" sas-token --connection-string "$conn_str" --expiry $(($(date +%s) + 6 * 3600)) \
  2>"$work/sas-token.err") || { cat "$work/sas-token.err" >&2; die "sas-token failed"; }

# ---- the service

tenant=$(openssl rand -hex 12) # a Mender tenant id: 24 hex digits
user_auth="Bearer $(gateway_token "$tenant")"
aes_key=$(openssl rand -base64 32)
svc_port=""
svc_log=""

# start_service HTTP_THREADS: a fresh process on the same database; sets svc_pid, svc_port
start_service() {
  local threads=$1
  svc_log="$work/iot-manager-threads$threads.log"
  start_bench_service "127.0.0.1:0" "$work/iot-manager.db" "" "$work/iot-manager.stdout" \
    "$svc_log" IOT_MANAGER_HTTP_THREADS="$threads"
  svc_port=""
  for _ in $(seq 300); do
    kill -0 "$svc_pid" 2>/dev/null || break
    svc_port=$(listen_port "$svc_pid")
    if [ -n "$svc_port" ] &&
      curl -sf -o /dev/null "http://127.0.0.1:$svc_port/api/internal/v1/iot-manager/alive"; then
      return 0
    fi
    sleep 0.05
  done
  cat "$svc_log" >&2
  die "iot-manager did not start"
}

start_service "$http_threads"
api="http://127.0.0.1:$svc_port/api/management/v1/iot-manager"

# One integration for the simulated hub.
create_integration "$work/create.out" "$api" "$user_auth" "$conn_str" -D "$work/create.hdr"
integration_id=$(sed -n 's/^[Ll]ocation:.*\/\([0-9a-f-]*\)[[:space:]]*$/\1/p' "$work/create.hdr")
[ -n "$integration_id" ] || die "no Location header on the created integration"

# A device as provisioning leaves it: the hub identity, and the link in our store.
device_id=$(cat /proc/sys/kernel/random/uuid)
code=$(curl -sS -o "$work/device.out" -w '%{http_code}' --cacert "$work/certs/ca.pem" -X PUT \
  -H "Authorization: $sas" -H 'Content-Type: application/json' \
  -d "{\"deviceId\":\"$device_id\"}" "https://$hub_host/devices/$device_id?api-version=2021-04-12")
[ "$code" = 200 ] || { cat "$work/device.out" >&2; die "creating the hub device answered $code"; }
iid_hex=$(tr -d '-' <<<"$integration_id")
sqlite3 -cmd '.timeout 5000' "$work/iot-manager.db" \
  "INSERT OR IGNORE INTO devices(tenant_id, id) VALUES ('$tenant', '$device_id');
   INSERT OR IGNORE INTO device_integrations(tenant_id, device_id, integration_id)
     VALUES ('$tenant', '$device_id', X'$iid_hex');" >/dev/null

url_integrations="$api/integrations"
url_twin="$api/devices/$device_id/state/$integration_id"
url_direct="https://$hub_host/twins/$device_id?api-version=2021-04-12"

# Sanity: each URL answers 200 once before timing anything.
for pair in "integrations|$url_integrations|$user_auth" "twin|$url_twin|$user_auth" \
  "direct|$url_direct|$sas"; do
  IFS='|' read -r name url auth <<<"$pair"
  code=$(curl -sS -k -o "$work/check-$name.out" -w '%{http_code}' -H "Authorization: $auth" "$url")
  [ "$code" = 200 ] || { cat "$work/check-$name.out" >&2; die "$name answered $code"; }
done

# ---- conditions

passed=$(passed_env)
echo "iot-manager API benchmark"
echo "  machine:   $(machine_desc)"
echo "  build:     $build_type ($bin)"
echo "  service:   gateway mode, SQLite store (WAL, synchronous=NORMAL), log level $log_level, hub rate limiter off"
echo "  simulator: iothub-sim --threads $sim_threads, HTTPS (TLS 1.3 on loopback)"
echo "  load:      wrk -t$wrk_threads -c$connections -d$duration --latency (+ -t1 -c1), warm-up $warmup, $runs runs"
echo "  phases:   $phases"
[ "${#wrapper[@]}" = 0 ] || echo "  wrapper:   ${wrapper[*]}"
echo "  loadavg:   $(loadavg) before the runs"
[ -z "$passed" ] || echo "  from env:  $passed"
echo

# ---- 1. GET /integrations, main service

if phase integrations; then
  echo "GET /integrations, $connections connections, IOT_MANAGER_HTTP_THREADS=$http_threads"
  warm integrations "$connections" "$wrk_threads" "$url_integrations" "$user_auth"
  for _ in $(seq "$runs"); do
    measure "integrations-c$connections" "$connections" "$wrk_threads" "$url_integrations" \
      "$user_auth"
  done
fi

# ---- 2 + 3. twin read path and the direct call, interleaved

if phase twin; then
  echo "twin read path vs direct GET /twins/{id}, $connections connections, saturating"
  warm twin "$connections" "$wrk_threads" "$url_twin" "$user_auth"
  warm direct "$connections" "$wrk_threads" "$url_direct" "$sas"
  for _ in $(seq "$runs"); do
    measure "twin-c$connections" "$connections" "$wrk_threads" "$url_twin" "$user_auth"
    measure "direct-c$connections" "$connections" "$wrk_threads" "$url_direct" "$sas"
  done
fi

if phase paced; then
  for rate in $paced_list; do
    bench_delay_ms=$((connections * 1000 / rate))
    echo "twin read path vs direct, $connections connections paced to ~$rate req/s" \
      "(${bench_delay_ms} ms between a connection's requests)"
    warm "twinp$rate" "$connections" "$wrk_threads" "$url_twin" "$user_auth"
    for _ in $(seq "$runs"); do
      measure "twin-paced$rate" "$connections" "$wrk_threads" "$url_twin" "$user_auth"
      measure "direct-paced$rate" "$connections" "$wrk_threads" "$url_direct" "$sas"
    done
  done
  bench_delay_ms=0
fi

if phase c1; then
  echo "one connection (wrk -t1 -c1)"
  warm twin1 1 1 "$url_twin" "$user_auth"
  warm direct1 1 1 "$url_direct" "$sas"
  for _ in $(seq "$runs"); do
    measure "twin-c1" 1 1 "$url_twin" "$user_auth"
    measure "direct-c1" 1 1 "$url_direct" "$sas"
    measure "integrations-c1" 1 1 "$url_integrations" "$user_auth"
  done
fi
hwm_lines=("IOT_MANAGER_HTTP_THREADS=$http_threads, all runs above: $(vmhwm_kb "$svc_pid") kB")

# ---- GET /integrations per IOT_MANAGER_HTTP_THREADS value

phase threads || http_threads_list=""
for t in $http_threads_list; do
  stop_pid "$svc_pid"
  svc_pid=""
  start_service "$t"
  url_integrations="http://127.0.0.1:$svc_port/api/management/v1/iot-manager/integrations"
  echo "GET /integrations, $connections connections, IOT_MANAGER_HTTP_THREADS=$t (fresh process)"
  warm "integrations-t$t" "$connections" "$wrk_threads" "$url_integrations" "$user_auth"
  for _ in $(seq "$runs"); do
    measure "integrations-c$connections-threads$t" "$connections" "$wrk_threads" \
      "$url_integrations" "$user_auth"
  done
  hwm_lines+=("IOT_MANAGER_HTTP_THREADS=$t, GET /integrations only: $(vmhwm_kb "$svc_pid") kB")
done
echo "  loadavg:   $(loadavg) after the runs"

# ---- report

ms() { awk -v v="$1" 'BEGIN {printf "%.3f", v / 1000}'; }
# disturbed KEY: "d/n", runs of KEY during which other processes used more than MAX_OTHER_CORES
disturbed() { awk -v k="$1" -v m="$max_other" '$1 == k {n++; if ($10 > m) d++} END {printf "%d/%d", d, n}' "$results"; }
# per_req KEY COLUMN: median CPU microseconds per request of column 6 (service) or 7 (simulator)
per_req() { awk -v k="$1" -v c="$2" '$1 == k && $2 > 0 {print $c / $2 * 1e6}' "$results" | median; }

echo
echo "Medians of $runs runs. Latency in ms (each run's wrk percentile, then the median). CPU in"
echo "cores busy during the run: svc = iot-manager, sim = iothub-sim, irq = interrupt and softirq"
echo "time (mostly the loopback TCP itself), other = every other process; us/req = CPU"
echo "microseconds per request; dist = runs during which other processes used > $max_other cores."
printf '| %-42s | %7s | %7s | %7s | %4s | %4s | %4s | %4s | %5s | %6s | %6s | %4s |\n' \
  "benchmark" "req/s" "p50" "p99" "svc" "sim" "wrk" "irq" "other" "svc us" "sim us" "dist"
dashes() { printf -- '-%.0s' $(seq "$1"); }
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' "$(dashes 44)" "$(dashes 9)" "$(dashes 9)" \
  "$(dashes 9)" "$(dashes 6)" "$(dashes 6)" "$(dashes 6)" "$(dashes 6)" "$(dashes 7)" "$(dashes 8)" \
  "$(dashes 8)" "$(dashes 6)"
row() {
  have "$1" || return 0
  printf '| %-42s | %7.0f | %7s | %7s | %4.2f | %4.2f | %4.2f | %4.2f | %5.2f | %6.1f | %6.1f | %4s |\n' \
    "$2" "$(col "$1" 2)" "$(ms "$(col "$1" 3)")" "$(ms "$(col "$1" 4)")" "$(col "$1" 6)" \
    "$(col "$1" 7)" "$(col "$1" 8)" "$(col "$1" 9)" "$(col "$1" 10)" "$(per_req "$1" 6)" \
    "$(per_req "$1" 7)" "$(disturbed "$1")"
}
row "integrations-c$connections" "GET /integrations -c$connections"
row "twin-c$connections" "twin read path -c$connections"
row "direct-c$connections" "direct GET /twins/{id} -c$connections"
for rate in $paced_list; do
  row "twin-paced$rate" "twin read path -c$connections, ~$rate req/s"
  row "direct-paced$rate" "direct GET /twins/{id} -c$connections, ~$rate req/s"
done
row "twin-c1" "twin read path -c1"
row "direct-c1" "direct GET /twins/{id} -c1"
row "integrations-c1" "GET /integrations -c1"
for t in $http_threads_list; do
  row "integrations-c$connections-threads$t" "GET /integrations -c$connections, HTTP_THREADS=$t"
done

# added MODE: "p50 p99" the service adds (ms), twin minus direct medians
added() { awk -v a="$(col "twin-$1" 3)" -v b="$(col "direct-$1" 3)" -v c="$(col "twin-$1" 4)" \
  -v d="$(col "direct-$1" 4)" 'BEGIN {printf "%.3f %.3f", (a - b) / 1000, (c - d) / 1000}'; }
# added_quiet MODE: "pairs p50 p99": the same from the interleaved (twin, direct) run pairs in
# which neither run was disturbed, median of the per-pair differences (ms)
added_quiet() {
  awk -v t="twin-$1" -v d="direct-$1" -v m="$max_other" '
    $1 == t {nt++; tq[nt] = ($10 <= m); t50[nt] = $3; t99[nt] = $4}
    $1 == d {nd++; dq[nd] = ($10 <= m); d50[nd] = $3; d99[nd] = $4}
    END {for (i = 1; i <= nt && i <= nd; i++) if (tq[i] && dq[i]) print (t50[i] - d50[i]) / 1000, (t99[i] - d99[i]) / 1000}' \
    "$results" >"$work/pairs-$1"
  printf '%d %s %s' "$(wc -l <"$work/pairs-$1")" "$(cut -d' ' -f1 "$work/pairs-$1" | median)" \
    "$(cut -d' ' -f2 "$work/pairs-$1" | median)"
}
paced_modes=""
for rate in $paced_list; do paced_modes+=" paced$rate"; done
mode_name() {
  case $1 in
  paced*) echo "-c$connections at ~${1#paced} req/s" ;;
  *) echo "-$1, saturating" ;;
  esac
}

echo
echo "Latency the twin read path adds over the direct call (ms; medians of all runs, and of the"
echo "per-pair differences over the undisturbed interleaved pairs):"
for mode in "c$connections" $paced_modes c1; do
  have "twin-$mode" || continue
  read -r a50 a99 <<<"$(added "$mode")"
  read -r qn q50 q99 <<<"$(added_quiet "$mode")"
  trps=$(col "twin-$mode" 2) drps=$(col "direct-$mode" 2)
  printf '  %-24s p50 %+.3f  p99 %+.3f  (%.0f vs %.0f req/s, %.2fx)' "$(mode_name "$mode")" \
    "$a50" "$a99" "$trps" "$drps" "$(awk -v a="$trps" -v b="$drps" 'BEGIN {print (b > 0) ? a / b : 0}')"
  if [ "$qn" -gt 0 ]; then
    printf '; undisturbed pairs (%d): p50 %+.3f  p99 %+.3f\n' "$qn" "$q50" "$q99"
  else
    printf '; no undisturbed pair\n'
  fi
done
if have "twin-c$connections"; then
  echo "  Saturating runs are closed loops: each side's latency is about connections / throughput,"
  echo "  and on 2 shared cores the service's work (its HTTP, the store, a TLS client) takes CPU"
  echo "  from the simulator too, so that difference is mostly queueing. The paced and -c1 runs"
  echo "  measure what the service adds to one request."
fi

echo
echo "Peak RSS of the service (VmHWM):"
for l in "${hwm_lines[@]}"; do echo "  $l"; done

best=""
best_rps=0
for t in $http_threads_list; do
  r=$(col "integrations-c$connections-threads$t" 2)
  if awk -v a="$r" -v b="$best_rps" 'BEGIN {exit !(a > b)}'; then
    best=$t best_rps=$r
  fi
done
if [ -n "$best" ]; then
  echo
  printf 'Best IOT_MANAGER_HTTP_THREADS for GET /integrations: %s (%.0f req/s)\n' "$best" "$best_rps"
fi

# A negative difference means the noise is larger than what the service adds.
added_verdict() {
  if awk -v v="$1" 'BEGIN {exit !(v < 0)}'; then
    echo "inconclusive (negative: noise)"
  else
    verdict "$1" 1 max
  fi
}
echo
echo "Targets (2 cores):"
if have "integrations-c$connections"; then
  int_rps=$(col "integrations-c$connections" 2)
  printf '  GET /integrations >= 20000 req/s, -c%s, HTTP_THREADS=%s: %.0f -> %s (%s runs disturbed)\n' \
    "$connections" "$http_threads" "$int_rps" "$(verdict "$int_rps" 20000 min)" \
    "$(disturbed "integrations-c$connections")"
fi
for mode in "c$connections" $paced_modes c1; do
  have "twin-$mode" || continue
  read -r _ a99 <<<"$(added "$mode")"
  read -r qn _ q99 <<<"$(added_quiet "$mode")"
  printf '  twin read adds < 1 ms at p99, %-22s %+.3f ms -> %s' "$(mode_name "$mode"):" "$a99" \
    "$(added_verdict "$a99")"
  if [ "$qn" -gt 0 ]; then
    printf '; undisturbed pairs: %+.3f ms -> %s\n' "$q99" "$(added_verdict "$q99")"
  else
    printf '; no undisturbed pair\n'
  fi
done
met_rates=""
for rate in $paced_list; do
  have "twin-paced$rate" || continue
  read -r _ a99 <<<"$(added "paced$rate")"
  awk -v v="$a99" 'BEGIN {exit !(v < 1)}' && met_rates+=" $rate"
done
[ -z "$paced_modes" ] || echo "  paced loads (req/s over $connections connections) at which the twin read adds < 1 ms at p99:${met_rates:- none}"
