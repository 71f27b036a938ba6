#!/usr/bin/env bash
# Runs iot-manager on its embedded defaults (SQLite store) next to a local IoT Hub simulator, on
# loopback, and prints what you need to try it: the API address, a user token, a connection
# string for the simulated hub and example requests. Ctrl-C stops everything it started.
#
#   scripts/run-local.sh            (IOT_MANAGER_PORT=8080 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
port=${IOT_MANAGER_PORT:-8080}
state="$root/.local"

bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j2 --target iot-manager iothub-sim

mkdir -p "$state"
bash scripts/gen-test-certs.sh "$state/certs" >/dev/null

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo
  echo "stopped (state kept in $state)"
}
trap cleanup INT TERM EXIT

# A stable policy key for the simulated hub, generated once.
if [ ! -s "$state/hub-policy-key" ]; then
  head -c 32 /dev/urandom | base64 > "$state/hub-policy-key"
fi
policy_key=$(cat "$state/hub-policy-key")

rm -f "$state/sim.port"
"$root/build/iothub-sim" --listen 127.0.0.1:0 --port-file "$state/sim.port" \
  --cert "$state/certs/server.pem" --key "$state/certs/server.key" \
  --policy "iothubowner:$policy_key:$policy_key:RegistryRead,RegistryWrite,ServiceConnect" \
  >"$state/iothub-sim.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$state/sim.port" ] && break; sleep 0.05; done
sim_port=$(head -n1 "$state/sim.port")

IOT_MANAGER_LISTEN="127.0.0.1:$port" \
IOT_MANAGER_SQLITE_PATH="$state/iot-manager.db" \
IOT_MANAGER_DOMAIN_WHITELIST="*.azure-devices.net localhost" \
  "$root/build/iot-manager" server --automigrate 2> >(tee -a "$state/iot-manager.log" >&2) &
pids+=($!)
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/api/internal/v1/iot-manager/alive" >/dev/null && break
  sleep 0.05
done

token=$(python3 - <<'PY'
import base64, json
b = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
print(b({"alg": "HS256", "typ": "JWT"}) + "." +
      b({"sub": "00000000-0000-0000-0000-000000000001", "mender.tenant": "",
         "mender.user": True}) + ".local-demo")
PY
)
api="http://127.0.0.1:$port/api/management/v1/iot-manager"
cs="HostName=localhost:$sim_port;SharedAccessKeyName=iothubowner;SharedAccessKey=$policy_key"

cat <<INFO

iot-manager        http://127.0.0.1:$port   (logs: $state/iot-manager.log)
IoT Hub simulator  https://localhost:$sim_port (CA: $state/certs/ca.pem, logs: $state/iothub-sim.log)

User token (gateway mode: the signature is not checked, as behind Mender's gateway):
  export TOKEN='$token'

Register the simulated hub and list integrations:
  curl -i -H "Authorization: Bearer \$TOKEN" -d '{"provider":"iot-hub","credentials":{"type":"sas","connection_string":"$cs"}}' $api/integrations
  curl -s -H "Authorization: Bearer \$TOKEN" $api/integrations

Talk to the simulated hub directly:
  curl --cacert $state/certs/ca.pem -H "Authorization: \$(build/iot-manager sas-token --connection-string '$cs')" 'https://localhost:$sim_port/statistics/devices?api-version=2021-04-12'

Press Ctrl-C to stop.
INFO
wait -n "${pids[@]}" || true
