#!/usr/bin/env bash
# Throughput of the IoT Hub simulator: GET /devices/{id} with a valid SAS token over HTTPS
# keep-alive on loopback, measured with wrk (Debian package `wrk`).
#
#   bench/sim_bench.sh [path/to/iothub-sim]
#
# Environment: IOTHUB_SIM (binary, default build/iothub-sim), RUNS (3), DURATION (10s),
# CONNECTIONS (32), WRK_THREADS (2), SIM_THREADS (2).
# Prints req/s of every run and the median; exits non-zero on any non-2xx answer or socket
# error. wrk does not verify certificates, so the throwaway CA is not needed here.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
sim=${1:-${IOTHUB_SIM:-$repo/build/iothub-sim}}
runs=${RUNS:-3}
duration=${DURATION:-10s}
connections=${CONNECTIONS:-32}
wrk_threads=${WRK_THREADS:-2}
sim_threads=${SIM_THREADS:-2}
bench_name=sim_bench
# shellcheck source=bench/lib/common.sh
. "$here/lib/common.sh"

for tool in wrk openssl curl base64 od; do
  command -v "$tool" >/dev/null || { echo "sim_bench: $tool is required (apt-get install $tool)" >&2; exit 2; }
done
[ -x "$sim" ] || { echo "sim_bench: no simulator at $sim (build target iothub-sim)" >&2; exit 2; }

work=$(mktemp -d)
sim_pid=""
cleanup() {
  stop_pid "$sim_pid"
  rm -rf "$work"
}
trap cleanup EXIT

"$repo/scripts/gen-test-certs.sh" "$work/certs"
policy_key=$(openssl rand -base64 32)
policy_key2=$(openssl rand -base64 32)
start_iothub_sim "$work/port" "$work/sim.out"
wait_port_file "$work/port" "$sim_pid" 100 0.05 ||
  { echo "sim_bench: simulator did not start" >&2; cat "$work/sim.out" >&2; exit 1; }
port=$(cat "$work/port")
host="localhost:$port"

# SAS token (azure-iothub.md §1.3): sr = the host, HMAC-SHA256 with the decoded key.
se=$(( $(date +%s) + 3600 ))
hexkey=$(printf '%s' "$policy_key" | base64 -d | od -An -v -tx1 | tr -d ' \n')
sig=$(printf '%s\n%s' "$host" "$se" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$hexkey" -binary | base64)
sig=$(printf '%s' "$sig" | sed -e 's/+/%2B/g' -e 's/\//%2F/g' -e 's/=/%3D/g')
token="SharedAccessSignature sr=$host&sig=$sig&se=$se&skn=iothubowner"

url="https://$host/devices/bench-device-1?api-version=2021-04-12"
code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$work/certs/ca.pem" -X PUT \
  -H "Authorization: $token" -H 'Content-Type: application/json' \
  -d '{"deviceId":"bench-device-1"}' "$url")
[ "$code" = 200 ] || { echo "sim_bench: device create answered $code" >&2; exit 1; }
code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$work/certs/ca.pem" \
  -H "Authorization: $token" "$url")
[ "$code" = 200 ] || { echo "sim_bench: device get answered $code" >&2; exit 1; }

echo "iothub-sim $sim; GET /devices/{id}, HTTPS keep-alive, wrk -t$wrk_threads -c$connections -d$duration, $runs runs"
results=()
for i in $(seq "$runs"); do
  out=$(wrk -t"$wrk_threads" -c"$connections" -d"$duration" -H "Authorization: $token" "$url")
  if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
    echo "$out" >&2
    echo "sim_bench: errors during run $i" >&2
    exit 1
  fi
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  lat=$(awk '/^    Latency/ {print $2}' <<<"$out")
  echo "run $i: $rps req/s (avg latency $lat)"
  results+=("$rps")
done
median=$(printf '%s\n' "${results[@]}" | median)
echo "median: $median req/s"
