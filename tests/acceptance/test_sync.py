"""`iot-manager sync-devices` (issue 4, item 7): Mender's TestSyncAzureIoTHub scenario (contract
§8.2) against the IoT Hub simulator and tests/sim/mender_sim.py, on both stores.

Two tenants register `HostName=localhost:<sim port>;SharedAccessKeyName=<tenant>;...` (the
module's simulator has one shared access policy per tenant, as Mender's mock accepts any), their
device records are written straight into the store, deviceauth's table and the hub are set to
the scenario's device matrix, and the ordered list of calls both simulators received (their
request logs merged by arrival time) must be the one the original makes."""

import base64
import contextlib
import hashlib
import json
import os
import pty
import re
import subprocess
import urllib.parse
import uuid

import pytest

from conftest import (BIN, MGMT, SIM_OWNER, IotHubSim, alarm_paused, hub_env, lifecycle_env,
                      wait_until)

T1 = "TestSyncAzureIoTHub01"
T2 = "TestSyncAzureIoTHub02"
POLICIES = {t: (t, base64.b64encode(hashlib.sha256(f"{t} primary".encode()).digest()).decode(),
                base64.b64encode(hashlib.sha256(f"{t} secondary".encode()).digest()).decode(),
                "RegistryRead,RegistryWrite,ServiceConnect") for t in (T1, T2)}

# (device id, deviceauth status or None: unknown to Mender, hub status or None: no identity)
T1_DEVICES = [
    ("44a66a7e-4b09-4665-b343-0c5d3ad9a2ed", "accepted", "enabled"),
    ("cea63fbb-0b0b-4a92-bd47-8d310a220a16", "rejected", "disabled"),
    ("8ba0bc48-a669-462e-873f-f7de2f0e04c3", "no auth", "disabled"),
    ("895a1ee2-1be0-4e78-889a-7d753f53dbd5", "accepted", "enabled"),
    ("a74ea639-8fae-4b17-ac3e-f9759dbdbfd9", "rejected", "disabled"),
    ("1424a387-3431-425b-9f44-1c8eba21812d", "accepted", "disabled"),  # must be enabled
    ("966095ec-6bdd-4a76-8498-3c0dffdb9ee2", "rejected", "enabled"),  # must be disabled: PUT 500
    ("9b2083e4-83b6-41d3-b089-4d2ec137620b", None, None),  # unknown everywhere: delete
    ("93406e21-8e3f-4435-9786-a294a70298ee", "accepted", None),  # missing in the hub: create
    ("7abb6133-ad97-44ba-a159-674242ee565e", None, "disabled"),  # unknown to Mender: delete
]
T2_DEVICES = [  # all in sync, two batches of ten
    ("1e657abe-ad58-4d20-af7a-3a3449a405e7", "no auth", "disabled"),
    ("43396b5b-ff5c-45f2-ab91-150957f037c9", "no auth", "disabled"),
    ("5a629188-f221-49b1-aece-4fc336597834", "accepted", "enabled"),
    ("653e15bc-3797-4eb0-b71e-46383096f512", "accepted", "enabled"),
    ("917ae5d9-b7ae-4ae4-970e-7b2801ba84c3", "accepted", "enabled"),
    ("9d3360c0-147e-4018-828f-4331a0e2a8ef", "rejected", "disabled"),
    ("a43eefc2-2370-468c-b614-710e16a8379f", "accepted", "enabled"),
    ("a7050cae-be5c-4ea7-87c9-d4b62253f21b", "accepted", "enabled"),
    ("aba6808c-ca58-40d5-97b7-fba13b68a42d", "rejected", "disabled"),
    ("b216b66d-c09c-4cb5-9f50-68ea45cdd6f4", "rejected", "disabled"),
    ("b5be0df7-ddb6-449f-b456-9ecf5dc54de5", "rejected", "disabled"),
    ("b7221134-6058-4f5e-9d51-ccc7d58d648b", "rejected", "disabled"),
    ("b9c488af-4c79-4b1f-b1bb-5626ace246de", "accepted", "enabled"),
    ("c650152a-e7d3-44b0-9ca7-10ec78caaff3", "accepted", "enabled"),
    ("c65d71e9-cfaf-4d5a-9155-b3b043901b8c", "accepted", "enabled"),
    ("cdfa43e7-eb2e-4fb0-81e0-93d7d8521cbf", "accepted", "enabled"),
    ("cf1baca8-49f0-4dc5-91bd-c742292ea497", "accepted", "enabled"),
    ("e1e686ae-925e-4d5b-a12a-ade8ff11b855", "accepted", "enabled"),
    ("eb8a74a6-dc6b-4930-95d2-5d1db5da1be0", "accepted", "enabled"),
    ("fd06ea0c-0ff6-4751-b7a9-44c5ce40e2fe", "rejected", "disabled"),
]
ENABLE = "1424a387-3431-425b-9f44-1c8eba21812d"
DISABLE = "966095ec-6bdd-4a76-8498-3c0dffdb9ee2"
CREATE = "93406e21-8e3f-4435-9786-a294a70298ee"
DELETE = ["7abb6133-ad97-44ba-a159-674242ee565e", "9b2083e4-83b6-41d3-b089-4d2ec137620b"]
DEVAUTH = "/api/internal/v1/devauth/tenants/{}/devices"
WORKFLOW = "/api/v1/workflow/provision_external_device"

# Each simulator holds every answer this long, so arrival times (ms) of a sequential client's
# calls are strictly ordered across the two simulators.
SIM_LATENCY_MS = 3


@pytest.fixture(scope="module")
def _tenant_sim(tmp_path_factory):
    """An IoT Hub simulator of the module's own, with one policy per tenant (Mender's tests
    register `SharedAccessKeyName=<tenant>`)."""
    sim = IotHubSim(tmp_path_factory.mktemp("iothub-sim-sync"),
                    policies=[SIM_OWNER, POLICIES[T1], POLICIES[T2]]).start()
    yield sim
    with alarm_paused():
        sim.stop()


@pytest.fixture
def sim(_tenant_sim):
    if _tenant_sim.proc.poll() is not None:
        pytest.fail("the module's iothub-sim died during an earlier test")
    _tenant_sim.reset()
    return _tenant_sim


def tenant_cs(sim, tenant):
    return f"HostName={sim.host};SharedAccessKeyName={tenant};SharedAccessKey={POLICIES[tenant][1]}"


def quoted(device_id):
    return urllib.parse.quote(device_id, safe="")


class Scenario:
    """The §8.2 set-up on one service: integrations, records, deviceauth and hub."""

    def __init__(self, service, sim, msim, t1=T1_DEVICES, t2=T2_DEVICES):
        self.service, self.sim, self.msim = service, sim, msim
        self.devices = {T1: t1, T2: t2}
        self.iids = {}
        for tenant, devices in self.devices.items():
            user = service.user(tenant)
            r = user.create({"provider": "iot-hub",
                             "credentials": {"type": "sas",
                                             "connection_string": tenant_cs(sim, tenant)}})
            assert r.status == 201, r
            iid = r.header("Location").rsplit("/", 1)[1]
            assert str(uuid.UUID(iid)) == iid
            self.iids[tenant] = iid
            for dev, _, _ in devices:
                service.link_device(tenant, dev, iid)
            self.set_deviceauth(tenant, [{"id": d, "status": st} for d, st, _ in devices if st])
            for dev, _, hub in devices:
                if hub:
                    r = sim.call("PUT", f"/devices/{quoted(dev)}", {"deviceId": dev, "status": hub})
                    assert r.status == 200, r

    def set_deviceauth(self, tenant, devices):
        status, body = self.msim._call("PUT", f"/_sim/deviceauth/{quoted(tenant)}", devices)
        assert status == 204, body

    def hub(self, dev):
        """{"device", "twin"} as the hub keeps them (control API), or None."""
        r = self.sim._request("GET", f"/_sim/devices/{quoted(dev)}")
        if r.status == 404:
            return None
        assert r.status == 200, r
        return r.json()

    def hub_state(self):
        """device id -> (status, tags, primary key) for every device of the scenario."""
        out = {}
        for devices in self.devices.values():
            for dev, _, _ in devices:
                got = self.hub(dev)
                out[dev] = None if got is None else (
                    got["device"]["status"], got["twin"].get("tags") or {},
                    got["device"]["authentication"]["symmetricKey"]["primaryKey"])
        return out

    def configure_state(self):
        """device id -> the connection string at Configure and its number of deployments."""
        out = {}
        for tenant, devices in self.devices.items():
            for dev, _, _ in devices:
                conf = self.msim.configuration(tenant, dev)
                if conf is not None:
                    out[dev] = (conf["configured"].get("azureConnectionString"),
                                conf["deployments"])
        return out

    def record(self, tenant, dev):
        """The integration ids the device's record lists, or None without a record."""
        svc = self.service
        if svc.backend == "mongo":
            doc = svc.db.devices.find_one({"_id": dev, "tenant_id": tenant})
            return None if doc is None else sorted(str(uuid.UUID(bytes=bytes(i)))
                                                   for i in doc.get("integration_ids") or [])
        with contextlib.closing(svc.sqlite()) as con:
            if con.execute("SELECT 1 FROM devices WHERE tenant_id = ? AND id = ?",
                           (tenant, dev)).fetchone() is None:
                return None
            return sorted(str(uuid.UUID(bytes=bytes(r[0]))) for r in con.execute(
                "SELECT integration_id FROM device_integrations WHERE tenant_id = ? AND "
                "device_id = ?", (tenant, dev)))

    def records(self):
        return {dev: self.record(tenant, dev) for tenant, devices in self.devices.items()
                for dev, _, _ in devices}

    def events(self, tenant):
        r = self.service.api.get(f"{MGMT}/events?per_page=500",
                                 token=self.service.user(tenant).token)
        assert r.status == 200, r
        return r.json()

    # ---- the calls a run makes

    def mark(self):
        return self.sim.last_seq(), len(self.msim.requests())

    def calls(self, mark):
        """Both simulators' requests since `mark`, merged by arrival time, as
        (method, "hub"|"mender", path, status, entry)."""
        hub_since, mender_since = mark
        merged = [(e["time_ms"], 0, (e["method"], "hub", e["path"], e["status"], e))
                  for e in self.sim.requests(hub_since)]
        merged += [(e["time_ms"], 1, (e["method"], "mender", e["path"], e["status"], e))
                   for e in self.msim.requests()[mender_since:]]
        merged.sort(key=lambda x: (x[0], x[1]))
        return [m[2] for m in merged]


def collapse_retries(calls):
    """Our hub client repeats a call the hub answered with 429/5xx once within the call (its
    documented retry policy; the original never retries): such an immediate repeat is folded
    into one call. Returns the folded list and the number of repeats folded."""
    out, folded = [], 0
    for c in calls:
        prev = out[-1] if out else None
        if prev and prev[:3] == c[:3] and prev[1] == "hub" and (prev[3] == 429 or prev[3] >= 500):
            out[-1] = c
            folded += 1
        else:
            out.append(c)
    return out, folded


def expected_calls(through_failed_put=False):
    t1 = [
        ("GET", "mender", DEVAUTH.format(T1)),
        ("DELETE", "hub", f"/devices/{DELETE[0]}"),
        ("DELETE", "hub", f"/devices/{DELETE[1]}"),
        ("POST", "hub", "/devices/query"),
        ("GET", "hub", f"/devices/{ENABLE}"),
        ("PUT", "hub", f"/devices/{ENABLE}"),
        ("GET", "hub", f"/devices/{DISABLE}"),
        ("PUT", "hub", f"/devices/{DISABLE}"),
    ]
    if through_failed_put:
        return t1
    return t1 + [
        ("PUT", "hub", f"/devices/{CREATE}"),
        ("POST", "mender", WORKFLOW),
        ("PATCH", "hub", f"/twins/{CREATE}"),
        ("GET", "mender", DEVAUTH.format(T2)),
        ("POST", "hub", "/devices/query"),
        ("GET", "mender", DEVAUTH.format(T2)),
        ("POST", "hub", "/devices/query"),
    ]


@pytest.fixture
def sync_env(nats_server, mender_sim, sim):
    env = hub_env(sim)
    env.update(lifecycle_env(nats_server, mender_sim))
    return env


@pytest.fixture
def scenario_service(service_factory, sync_env):
    svc = service_factory(env=sync_env)
    yield svc
    with alarm_paused():
        svc.stop()


def slow_sims(sim, msim):
    sim.control("POST", "config", {"latency_ms": SIM_LATENCY_MS})
    msim.fault(match="* /", latency_ms=SIM_LATENCY_MS, count=-1)


def sync(service, *args, timeout=40):
    return service.cli("sync-devices", *args, timeout=timeout)


@pytest.mark.time_limit(90)
def test_menders_sync_scenario_same_calls_same_order(scenario_service, sim, mender_sim):
    sc = Scenario(scenario_service, sim, mender_sim)
    sim.fault(match=f"PUT /devices/{DISABLE}", status=500)
    slow_sims(sim, mender_sim)
    mark = sc.mark()
    out = sync(scenario_service, "--batch-size", "10")
    assert out.returncode == 0, out.stdout + out.stderr
    calls, folded = collapse_retries(sc.calls(mark))
    assert [c[:3] for c in calls] == expected_calls(), "\n".join(map(str, (c[:4] for c in calls)))
    assert folded <= 1  # the failing PUT, repeated once by the client's in-call retry
    by_call = {c[:3]: c for c in calls}
    assert by_call[("PUT", "hub", f"/devices/{DISABLE}")][3] == 500
    assert all(c[3] in (200, 201, 204) for c in calls if c[2] != f"/devices/{DISABLE}"
               and c[0] != "DELETE"), calls
    assert by_call[("DELETE", "hub", f"/devices/{DELETE[0]}")][3] == 204
    assert by_call[("DELETE", "hub", f"/devices/{DELETE[1]}")][3] == 404  # no identity: fine

    # deviceauth asked about each batch: 10 ids and per_page=10
    devauth = [c[4] for c in calls if c[1] == "mender" and c[0] == "GET"]
    batches = [[d for d, _, _ in T1_DEVICES], [d for d, _, _ in T2_DEVICES[:10]],
               [d for d, _, _ in T2_DEVICES[10:]]]
    for entry, batch in zip(devauth, batches):
        params = entry["query_params"]
        assert sorted(v for k, v in params if k == "id") == sorted(batch)
        assert [v for k, v in params if k == "per_page"] == ["10"]

    # the connection string reached Configure, for the key the hub generated
    identity = sc.hub(CREATE)
    key = identity["device"]["authentication"]["symmetricKey"]["primaryKey"]
    (wf,) = mender_sim.workflow_requests()
    body = json.loads(wf["body"])
    cs = body["configuration"]["azureConnectionString"]
    assert re.fullmatch(rf"HostName=localhost:{sim.port};DeviceId={CREATE};SharedAccessKey=.+", cs)
    assert cs == f"HostName={sim.host};DeviceId={CREATE};SharedAccessKey={key}"
    assert body["tenant_id"] == T1 and body["device_id"] == CREATE and body["provider"] == "Azure"
    assert mender_sim.configuration(T1, CREATE)["deployments"] == 1

    # the end state
    assert identity["device"]["status"] == "enabled"
    assert identity["twin"]["tags"] == {"mender": True}
    assert sc.hub(ENABLE)["device"]["status"] == "enabled"
    assert sc.hub(DISABLE)["device"]["status"] == "enabled"  # its PUT failed; sync went on
    for dev in DELETE:
        assert sc.hub(dev) is None
        assert sc.record(T1, dev) is None
    for dev, _, hub in T2_DEVICES:
        assert sc.hub(dev)["device"]["status"] == hub
        assert sc.record(T2, dev) == [sc.iids[T2]]
    assert sc.record(T1, CREATE) == [sc.iids[T1]]
    assert "1 created, 1 enabled, 0 disabled, 2 deleted, 0 unlinked, 0 skipped, 1 failed" \
        in out.stdout, out.stdout
    assert "30 devices checked" in out.stdout
    assert DISABLE in out.stderr  # the failure is logged
    assert "\r" not in out.stderr  # no progress line when stderr is not a terminal

    # the event log says what was done, and what failed
    events = sc.events(T1)
    kinds = sorted((e["type"], e["data"]["id"], e["delivery_statuses"][0]["success"])
                   for e in events)
    assert kinds == sorted([("device-decommissioned", DELETE[0], True),
                            ("device-decommissioned", DELETE[1], True),
                            ("device-status-changed", ENABLE, True),
                            ("device-status-changed", DISABLE, False),
                            ("device-provisioned", CREATE, True)])
    failed = [e for e in events if not e["delivery_statuses"][0]["success"]][0]
    assert failed["delivery_statuses"][0]["status_code"] == 500
    assert sc.events(T2) == []
    scenario_service.assert_secret_absent(key, cs, POLICIES[T1][1], POLICIES[T2][1])
    assert key not in out.stdout + out.stderr and POLICIES[T1][1] not in out.stdout + out.stderr

    # a second run finds only the device whose update failed
    sim.clear_faults()
    mark = sc.mark()
    again = sync(scenario_service, "--batch-size", "10")
    assert again.returncode == 0, again.stderr
    assert "0 created, 0 enabled, 1 disabled, 0 deleted" in again.stdout
    writes = [c[:3] for c in sc.calls(mark) if c[0] in ("PUT", "PATCH", "DELETE")
              or c[2] == WORKFLOW]
    assert writes == [("PUT", "hub", f"/devices/{DISABLE}")]
    assert sc.hub(DISABLE)["device"]["status"] == "disabled"
    assert mender_sim.configuration(T1, CREATE)["deployments"] == 1


@pytest.mark.time_limit(60)
def test_fail_early_stops_at_the_failed_put(scenario_service, sim, mender_sim):
    sc = Scenario(scenario_service, sim, mender_sim)
    sim.fault(match=f"PUT /devices/{DISABLE}", status=500)
    slow_sims(sim, mender_sim)
    mark = sc.mark()
    out = sync(scenario_service, "--batch-size", "10", "--fail-early")
    assert out.returncode == 1, out.stdout + out.stderr
    calls, _ = collapse_retries(sc.calls(mark))
    assert [c[:3] for c in calls] == expected_calls(through_failed_put=True)
    assert sc.hub(CREATE) is None
    assert mender_sim.workflow_requests() == []
    assert DISABLE in out.stderr and "stopped" in out.stderr
    assert "1 failed" in out.stdout


@pytest.mark.time_limit(60)
def test_dry_run_prints_the_plan_and_changes_nothing(scenario_service, sim, mender_sim):
    sc = Scenario(scenario_service, sim, mender_sim)
    # a link to an integration that no longer exists is reported, not removed
    gone = str(uuid.uuid4())
    scenario_service.link_device(T2, T2_DEVICES[0][0], gone)
    hub_before, records_before = sc.hub_state(), sc.records()
    snapshot = scenario_service.snapshot()
    mark = sc.mark()
    out = sync(scenario_service, "--batch-size", "10", "--dry-run")
    assert out.returncode == 0, out.stderr
    plan = sorted(line for line in out.stdout.splitlines() if line.startswith("plan: "))
    expected = sorted([
        f"plan: tenant={T1} device={DELETE[0]} action=delete",
        f"plan: tenant={T1} device={DELETE[1]} action=delete",
        f"plan: tenant={T1} device={ENABLE} action=enable",
        f"plan: tenant={T1} device={DISABLE} action=disable",
        f"plan: tenant={T1} device={CREATE} action=create",
        f"plan: tenant={T2} device={T2_DEVICES[0][0]} action=unlink",
    ])
    assert [p.split(" (")[0] for p in plan] == expected, out.stdout
    assert f"integration {gone} no longer exists" in out.stdout
    assert "dry run, nothing changed" in out.stdout
    assert "1 created, 1 enabled, 1 disabled, 2 deleted, 1 unlinked" in out.stdout
    # reads only: deviceauth and twin queries; no hub write, no Configure call, no store write
    calls = sc.calls(mark)
    assert {(c[0], c[1]) for c in calls} == {("GET", "mender"), ("POST", "hub")}, calls
    assert all(c[2] == "/devices/query" for c in calls if c[1] == "hub")
    assert sc.hub_state() == hub_before
    assert sc.records() == records_before
    assert scenario_service.snapshot() == snapshot


@pytest.mark.time_limit(90)
def test_bulk_reaches_the_same_end_state(service_factory, sync_env, sim, mender_sim):
    def run(args):
        svc = service_factory(env=sync_env)
        sim.reset()
        mender_sim.reset()
        sc = Scenario(svc, sim, mender_sim)
        mark = sc.mark()
        out = sync(svc, "--batch-size", "10", *args)
        assert out.returncode == 0, out.stdout + out.stderr
        calls = sc.calls(mark)
        hub = sc.hub_state()
        conf = sc.configure_state()
        names = {iid: tenant for tenant, iid in sc.iids.items()}
        state = {"records": {d: v and [names.get(i, i) for i in v]
                             for d, v in sc.records().items()},
                 "hub": {d: v and v[:2] for d, v in hub.items()},
                 # the delivered string carries the key the hub has
                 "configure": {d: (c == f"HostName={sim.host};DeviceId={d};SharedAccessKey="
                                        f"{hub[d][2]}", n) for d, (c, n) in conf.items()},
                 "events": sorted((e["type"], e["data"]["id"])
                                  for t in (T1, T2) for e in sc.events(t))}
        svc.stop()
        return out, calls, state

    _, default_calls, default_state = run([])
    out, bulk_calls, bulk_state = run(["--bulk"])
    assert bulk_state == default_state
    assert default_state["configure"] == {CREATE: (True, 1)}
    assert default_state["hub"][DISABLE][0] == "disabled" and default_state["hub"][CREATE] == (
        "enabled", {"mender": True})
    assert "1 created, 1 enabled, 1 disabled, 2 deleted" in out.stdout
    # bulk registry calls instead of one call per device
    hub_writes = [c[:2] for c in bulk_calls if c[1] == "hub" and c[0] in ("PUT", "DELETE")]
    assert hub_writes == [], bulk_calls
    assert [c[:3] for c in bulk_calls if c[0] == "POST" and c[2] == "/devices"] == [
        ("POST", "hub", "/devices")] * 3  # delete, status, create
    assert len([c for c in default_calls if c[0] in ("PUT", "DELETE")]) == 5


@pytest.mark.parametrize("mode", ["default", "bulk"])
@pytest.mark.time_limit(60)
def test_provision_existing_provisions_accepted_devices_without_a_record(
        scenario_service, sim, mender_sim, mode):
    svc = scenario_service
    sc = Scenario(svc, sim, mender_sim, t1=[], t2=[])
    fleet = [str(uuid.uuid4()) for _ in range(5)]
    pending, present = str(uuid.uuid4()), str(uuid.uuid4())
    # 7 accepted devices over pages of 3: five new, the one already in the hub, one pending
    sc.set_deviceauth(T1, [{"id": d, "status": "accepted"} for d in fleet]
                      + [{"id": pending, "status": "pending"},
                         {"id": present, "status": "accepted"}])
    r = sim.call("PUT", f"/devices/{present}", {"deviceId": present})
    assert r.status == 200, r
    args = ["--batch-size", "3"] + (["--bulk"] if mode == "bulk" else [])

    # without the flag, devices we have no record of are left alone
    out = sync(svc, *args)
    assert out.returncode == 0, out.stderr
    assert "0 devices checked" in out.stdout
    assert all(sc.hub(d) is None for d in fleet)

    out = sync(svc, *args, "--provision-existing")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "5 created" in out.stdout and "6 devices checked" in out.stdout, out.stdout + out.stderr
    for dev in fleet:
        got = sc.hub(dev)
        assert got["device"]["status"] == "enabled" and got["twin"]["tags"] == {"mender": True}
        key = got["device"]["authentication"]["symmetricKey"]["primaryKey"]
        conf = mender_sim.configuration(T1, dev)
        assert conf["deployments"] == 1
        assert conf["configured"]["azureConnectionString"] == (
            f"HostName={sim.host};DeviceId={dev};SharedAccessKey={key}")
        assert sc.record(T1, dev) == [sc.iids[T1]]  # linked: lifecycle events now reach it
    assert sc.hub(pending) is None and sc.record(T1, pending) is None
    assert mender_sim.configuration(T1, present) is None and sc.record(T1, present) is None
    pages = [dict(map(tuple, e["query_params"])) for e in mender_sim.requests()
             if e["method"] == "GET" and e["path"] == DEVAUTH.format(T1)
             and ("status", "accepted") in map(tuple, e["query_params"])]
    assert [(p["page"], p["per_page"]) for p in pages] == [("1", "3"), ("2", "3"), ("3", "3")]

    # the records now exist: the next run checks them and changes nothing
    again = sync(svc, *args, "--provision-existing")
    assert again.returncode == 0
    assert "0 created, 0 enabled, 0 disabled, 0 deleted" in again.stdout
    assert all(mender_sim.configuration(T1, d)["deployments"] == 1 for d in fleet)


@pytest.mark.time_limit(60)
def test_a_device_a_worker_holds_is_skipped(scenario_service, sim, mender_sim):
    svc = scenario_service
    sc = Scenario(svc, sim, mender_sim, t1=[], t2=[])
    dev = str(uuid.uuid4())
    # Mender rejected the device meanwhile, so sync has something to change.
    sc.set_deviceauth(T1, [{"id": dev, "status": "rejected"}])
    # The worker provisioning the device links it first, then hangs in the identity PUT while
    # holding the device's lease.
    sim.fault(match=f"PUT /devices/{dev}", latency_ms=4000, count=1)
    wait_until(lambda: svc.api.get("/api/internal/v1/iot-manager/health").status == 204, 10,
               interval=0.05, what="NATS connected")
    r = svc.api.post(f"/api/internal/v1/iot-manager/tenants/{T1}/devices", {"id": dev})
    assert r.status == 202, r
    wait_until(lambda: sc.record(T1, dev) == [sc.iids[T1]], 10, interval=0.02,
               what="the worker linking the device")
    mark = sc.mark()
    out = sync(svc, "--batch-size", "10")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 created, 0 enabled, 0 disabled" in out.stdout, out.stdout
    assert "1 skipped, 0 failed" in out.stdout, out.stdout
    assert dev in out.stderr and "lease" in out.stderr
    assert [c for c in sc.calls(mark) if c[1] == "hub" and c[0] != "POST"
            and c[2] != f"/devices/{dev}"] == []
    # the worker finishes its event: one identity, one deployment
    wait_until(lambda: (sc.hub(dev) or {}).get("device", {}).get("status") == "enabled", 15,
               interval=0.1, what="the worker's provisioning")
    wait_until(lambda: mender_sim.configuration(T1, dev) is not None, 10, interval=0.1,
               what="the connection string at Configure")
    puts = [e for e in sim.requests() if e["method"] == "PUT" and e["path"] == f"/devices/{dev}"]
    assert len(puts) == 1, puts
    # with the lease free again, the next run applies Mender's status
    wait_until(lambda: sync(svc, "--batch-size", "10").stdout.find("1 disabled") >= 0, 15,
               interval=0.5, what="a run that disables the device")
    assert sc.hub(dev)["device"]["status"] == "disabled"
    assert mender_sim.configuration(T1, dev)["deployments"] == 1


@pytest.mark.time_limit(60)
def test_progress_line_on_a_terminal(scenario_service, sim, mender_sim):
    Scenario(scenario_service, sim, mender_sim)
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([BIN, "sync-devices", "--batch-size", "10", "--dry-run"],
                              env=scenario_service.env, stdout=subprocess.PIPE, stderr=slave,
                              stdin=subprocess.DEVNULL, timeout=30)
        os.close(slave)
        slave = None
        tty = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other end is closed and everything was read
                break
            if not chunk:
                break
            tty += chunk
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0
    text = tty.decode(errors="replace")
    updates = re.findall(r"\rsync-devices: (\d+) checked, (\d+) changed", text)
    assert updates, text
    assert updates[-1] == ("30", "5")  # the final line: every record, five planned changes
    assert text.rstrip().endswith("failed")
    assert "sync-devices (dry run, nothing changed): 30 devices checked" in proc.stdout.decode()


def test_batch_size_is_validated_with_menders_texts(service_factory, mender_sim, sim):
    svc = service_factory(env=dict(hub_env(sim), **lifecycle_env(None, mender_sim)))
    for value, text in (("0", "must be a positive integer"), ("-3", "must be a positive integer"),
                        ("ten", "must be a positive integer"), ("", "must be a positive integer"),
                        ("501", "must be less than 500"), ("100000", "must be less than 500")):
        out = sync(svc, "--batch-size", value)
        assert out.returncode == 2, (value, out.stderr)
        assert f"invalid flag 'batch-size': {text}" in out.stderr, (value, out.stderr)
    out = sync(svc, "--batch-size=501")
    assert "invalid flag 'batch-size': must be less than 500" in out.stderr
    for ok in ("500", "1"):
        out = sync(svc, "--batch-size", ok)
        assert out.returncode == 0, (ok, out.stderr)
        assert "0 devices checked" in out.stdout
    out = sync(svc, "--frobnicate")
    assert out.returncode == 2 and "unknown option" in out.stderr
    assert "sync-devices" in svc.cli("--help").stdout
