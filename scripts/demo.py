#!/usr/bin/env python3
"""Walks through iot-manager's story against the stack of scripts/run-local.sh:
register the IoT Hub integration, accept three devices (created and enabled in the hub, their
connection strings delivered to Configure), reject one (disabled), edit a device twin,
decommission one (deleted), and show the event log. Prints every step and its result;
connection strings and keys are shown masked."""
import base64
import hashlib
import hmac
import http.client
import json
import pathlib
import ssl
import sys
import time
import urllib.parse
import uuid

ROOT = pathlib.Path(__file__).resolve().parent.parent
STACK = json.loads((ROOT / ".local/stack.json").read_text())
API = urllib.parse.urlsplit(STACK["api"])
MGMT = "/api/management/v1/iot-manager"
INTERNAL = "/api/internal/v1/iot-manager"
TENANT = ""  # open-source Mender: the empty tenant, as in /tenants//devices
HUB_HOST, HUB_PORT = STACK["hub_host"].split(":")
CTX = ssl.create_default_context(cafile=STACK["hub_ca"])


def call(method, path, body=None, token=True, host=None, port=None, tls=False, headers=None):
    cls = http.client.HTTPSConnection if tls else http.client.HTTPConnection
    kw = {"context": CTX} if tls else {}
    conn = cls(host or API.hostname, port or API.port, timeout=15, **kw)
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {STACK['token']}"
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        h["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=h)
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    try:
        return r.status, json.loads(raw) if raw else None
    except ValueError:
        return r.status, raw.decode(errors="replace")


def sim(path):
    return call("GET", path, token=False, host=HUB_HOST, port=int(HUB_PORT), tls=True)


def configure(device):
    sim_url = urllib.parse.urlsplit(STACK["mender_sim"])
    return call("GET", f"/_sim/configurations/{TENANT}/{device}", token=False,
                host=sim_url.hostname, port=sim_url.port)


def mask(cs):
    """The connection string with its key shown as Mender masks it."""
    return ";".join("SharedAccessKey=" + p[16:20] + "...<omitted>" if p.startswith("SharedAccessKey=")
                    else p for p in (cs or "").split(";"))


def step(n, text):
    print(f"\n\033[1m{n}. {text}\033[0m")


def wait_for(what, predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    sys.exit(f"   timed out waiting for {what}")


def hub_device(device):
    status, body = sim(f"/_sim/devices/{device}")
    return body["device"] if status == 200 else None


def main():
    step(1, "Register the tenant's Azure IoT Hub (Settings -> Integrations)")
    status, integrations = call("GET", f"{MGMT}/integrations")
    cs = f"HostName={STACK['hub_host']};SharedAccessKeyName={STACK['hub_policy']};SharedAccessKey={STACK['hub_key']}"
    credentials = {"type": "sas", "connection_string": cs}
    if integrations:
        # kept from an earlier run (.local): the simulated hub listens on a new port each start
        integration_id = integrations[0]["id"]
        status, _ = call("PUT", f"{MGMT}/integrations/{integration_id}/credentials", credentials)
        print(f"   already registered: {integration_id}; PUT its credentials for this run's hub "
              f"-> {status}")
        _, integrations = call("GET", f"{MGMT}/integrations")
    else:
        status, _ = call("POST", f"{MGMT}/integrations",
                         {"provider": "iot-hub", "credentials": credentials})
        print(f"   POST /integrations -> {status}")
        _, integrations = call("GET", f"{MGMT}/integrations")
        integration_id = integrations[0]["id"]
    print(f"   GET /integrations -> {json.dumps(integrations[0]['credentials'])}")

    devices = [str(uuid.uuid4()) for _ in range(3)]
    step(2, "Accept three devices in Mender (workflows call the internal API)")
    for d in devices:
        status, _ = call("POST", f"{INTERNAL}/tenants/{TENANT}/devices",
                         {"id": d, "status": "accepted"}, token=False)
        print(f"   POST /tenants//devices {d} -> {status}")
    for d in devices:
        dev = wait_for(f"{d} in the hub", lambda d=d: hub_device(d))
        conf = wait_for(f"{d} at Configure", lambda d=d: configure(d)[0] == 200 and configure(d)[1])
        cs = conf["configured"]["azureConnectionString"]
        print(f"   hub: {d} status={dev['status']}; Configure: azureConnectionString={mask(cs)} "
              f"(deployments: {conf['deployments']})")

    step(3, f"Reject device {devices[0]}")
    status, _ = call("PUT", f"{INTERNAL}/tenants/{TENANT}/bulk/devices/status/rejected",
                     [{"id": devices[0]}], token=False)
    print(f"   PUT /bulk/devices/status/rejected -> {status}")
    dev = wait_for("disabled", lambda: (hub_device(devices[0]) or {}).get("status") == "disabled" and hub_device(devices[0]))
    print(f"   hub: {devices[0]} status={dev['status']}")

    step(4, f"Edit the device twin of {devices[1]} (Device Twin tab)")
    status, state = call("PUT", f"{MGMT}/devices/{devices[1]}/state/{integration_id}",
                         {"desired": {"telemetryInterval": 30, "mode": "demo"}})
    print(f"   PUT /devices/{{id}}/state/{{integration}} -> {status}: {json.dumps(state)}")
    status, states = call("GET", f"{MGMT}/devices/{devices[1]}/state")
    print(f"   GET /devices/{{id}}/state -> {status}: {json.dumps(states)}")

    step(5, f"Decommission device {devices[2]}")
    status, _ = call("DELETE", f"{INTERNAL}/tenants/{TENANT}/devices/{devices[2]}", token=False)
    print(f"   DELETE /tenants//devices/{{id}} -> {status}")
    wait_for("deleted", lambda: hub_device(devices[2]) is None)
    print(f"   hub: {devices[2]} is gone")

    step(6, "Event log")
    time.sleep(0.5)
    status, events = call("GET", f"{MGMT}/events?per_page=10")
    for ev in events:
        print(f"   {ev['time']} {ev['type']:<22} {ev['data'].get('id')}")
    print("\nDone.")


if __name__ == "__main__":
    main()
