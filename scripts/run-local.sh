#!/usr/bin/env bash
# Runs the whole flow locally, on loopback: nats-server (JetStream), the IoT Hub simulator, a
# simulator of Mender's workflows/deviceconfig (Configure) and iot-manager on its embedded SQLite
# store. Prints the addresses, a ready-to-use user token and how to walk through the demo.
# Ctrl-C stops everything it started.
#
#   scripts/run-local.sh          start the stack
#   scripts/run-local.sh --demo   start it, then run scripts/demo.py once
#
# IOT_MANAGER_PORT (default 8080) sets the API port; state lives in .local/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
port=${IOT_MANAGER_PORT:-8080}
state="$root/.local"
run_demo=false
[ "${1:-}" = "--demo" ] && run_demo=true

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

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
wait_file() { for _ in $(seq 1 200); do [ -s "$1" ] && return 0; sleep 0.05; done; return 1; }

# A stable policy key for the simulated hub, generated once.
[ -s "$state/hub-policy-key" ] || head -c 32 /dev/urandom | base64 > "$state/hub-policy-key"
policy_key=$(cat "$state/hub-policy-key")

nats_port=$(free_port)
mkdir -p "$state/nats"
/usr/sbin/nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$state/nats" >"$state/nats.log" 2>&1 &
pids+=($!)

rm -f "$state/sim.port" "$state/mender.port"
"$root/build/iothub-sim" --listen 127.0.0.1:0 --port-file "$state/sim.port" \
  --cert "$state/certs/server.pem" --key "$state/certs/server.key" \
  --policy "iothubowner:$policy_key:$policy_key:RegistryRead,RegistryWrite,ServiceConnect" \
  >"$state/iothub-sim.log" 2>&1 &
pids+=($!)
/usr/bin/python3 tests/sim/mender_sim.py --listen 127.0.0.1:0 --port-file "$state/mender.port" --quiet \
  >"$state/mender-sim.log" 2>&1 &
pids+=($!)
wait_file "$state/sim.port" && wait_file "$state/mender.port" || { echo "simulators did not start" >&2; exit 1; }
sim_port=$(head -n1 "$state/sim.port")
mender_port=$(head -n1 "$state/mender.port")

MONGOC_DISABLE_SHM=1 \
IOT_MANAGER_LISTEN="127.0.0.1:$port" \
IOT_MANAGER_SQLITE_PATH="$state/iot-manager.db" \
IOT_MANAGER_DOMAIN_WHITELIST="*.azure-devices.net localhost" \
IOT_MANAGER_HUB_CA_FILE="$state/certs/ca.pem" \
IOT_MANAGER_HUB_ALLOW_PRIVATE_ADDRESSES=true \
IOT_MANAGER_HUB_TIER=S3 \
IOT_MANAGER_NATS_URI="nats://127.0.0.1:$nats_port" \
IOT_MANAGER_WORKFLOWS_URL="http://127.0.0.1:$mender_port" \
IOT_MANAGER_DEVICEAUTH_URL="http://127.0.0.1:$mender_port" \
  "$root/build/iot-manager" server --automigrate 2>>"$state/iot-manager.log" &
pids+=($!)
for _ in $(seq 1 200); do
  curl -sf "http://127.0.0.1:$port/api/internal/v1/iot-manager/health" >/dev/null && break
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
cat > "$state/stack.json" <<JSON
{"api": "http://127.0.0.1:$port", "token": "$token",
 "hub_host": "localhost:$sim_port", "hub_policy": "iothubowner", "hub_key": "$policy_key",
 "hub_ca": "$state/certs/ca.pem", "mender_sim": "http://127.0.0.1:$mender_port",
 "nats": "nats://127.0.0.1:$nats_port"}
JSON
chmod 600 "$state/stack.json"

api="http://127.0.0.1:$port/api/management/v1/iot-manager"
cat <<INFO

iot-manager         http://127.0.0.1:$port    (metrics: /metrics; logs: $state/iot-manager.log)
IoT Hub simulator   https://localhost:$sim_port  (CA: $state/certs/ca.pem)
Configure simulator http://127.0.0.1:$mender_port  (workflows + deviceconfig + deviceauth)
NATS JetStream      nats://127.0.0.1:$nats_port

User token (gateway mode, as behind Mender's gateway):
  export TOKEN='$token'
  curl -s -H "Authorization: Bearer \$TOKEN" $api/integrations

Walk through the whole story (register the hub, accept devices, reject, edit a twin,
decommission) in another terminal:
  scripts/demo.py

Press Ctrl-C to stop.
INFO
if $run_demo; then
  /usr/bin/python3 scripts/demo.py
fi
wait -n "${pids[@]}" || true
