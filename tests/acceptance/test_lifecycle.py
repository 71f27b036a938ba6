"""Device lifecycle pipeline end to end (issue 4): Mender's internal API calls -> NATS JetStream ->
workers -> the IoT Hub simulator, Mender Configure (tests/sim/mender_sim.py), the device records
and the event log, on both stores.

Every test uses its own tenant and devices, so the module's nats-server can be shared."""

import json
import shutil
import time
import urllib.parse
import uuid

import pytest

from conftest import (INTERNAL, MGMT, SIM_OWNER, alarm_paused, b64, create_sim_integration,
                      device_sas_token, free_port, hub_env, lifecycle_env, new_tenant, random_key,
                      wait_until)

APPLY_TIMEOUT = 20  # seconds for the pipeline to apply an event


def parse_cs(text):
    return dict(part.split("=", 1) for part in text.split(";"))


class Tenant:
    """A tenant with an iot-hub integration on the simulator, and Mender's calls for it."""

    def __init__(self, service, sim, msim, tenant=None, **integration):
        self.service = service
        self.sim = sim
        self.msim = msim
        self.id = new_tenant() if tenant is None else tenant
        self.user = service.user(self.id)
        self.iid = create_sim_integration(self.user, sim, **integration) if sim else None

    # ---- Mender's internal calls (as the workflows worker sends them)

    def provision(self, body, request_id=None):
        headers = {"X-MEN-RequestID": request_id} if request_id else None
        return self.service.api.post(f"{INTERNAL}/tenants/{self.id}/devices", body,
                                     headers=headers)

    def bulk(self, status, items):
        return self.service.api.put(f"{INTERNAL}/tenants/{self.id}/bulk/devices/status/{status}",
                                    items)

    def decommission(self, device_id):
        return self.service.api.delete(f"{INTERNAL}/tenants/{self.id}/devices/{device_id}")

    def events(self, query=""):
        r = self.service.api.get(f"{MGMT}/events{query}", token=self.user.token)
        assert r.status == 200, r
        return r.json()

    # ---- what the pipeline left behind

    def hub_device(self, device_id):
        """The identity as the hub keeps it (control API: neither logged nor faulted)."""
        r = self.sim._request("GET", f"/_sim/devices/{urllib.parse.quote(device_id, safe='')}")
        if r.status == 404:
            return None
        assert r.status == 200, r
        return r.json()["device"]

    def wait_hub(self, device_id, status, timeout=APPLY_TIMEOUT):
        def check():
            d = self.hub_device(device_id)
            return d if d is not None and d["status"] == status else None

        return wait_until(check, timeout, interval=0.1,
                          what=f"device {device_id} {status} in the hub")

    def wait_gone(self, device_id, timeout=APPLY_TIMEOUT):
        wait_until(lambda: self.hub_device(device_id) is None, timeout, interval=0.1,
                   what=f"device {device_id} deleted from the hub")

    def wait_configured(self, device_id, timeout=APPLY_TIMEOUT):
        def check():
            conf = self.msim.configuration(self.id, device_id)
            return conf if conf and conf["deployments"] >= 1 else None

        return wait_until(check, timeout, interval=0.1,
                          what=f"device {device_id}'s connection string at Configure")

    def wait_events(self, n, timeout=APPLY_TIMEOUT):
        return wait_until(lambda: (lambda e: e if len(e) >= n else None)(self.events()), timeout,
                          interval=0.1, what=f"{n} events in the event log")


def full_device(device_id, status="accepted"):
    """deviceauth v4.1.3's whole device object, as provision_device sends it."""
    return {"id": device_id, "identity_data": {"mac": "00:11:22:33:44:55"}, "status": status,
            "decommissioning": False, "created_ts": "2024-05-01T10:00:00.123Z",
            "updated_ts": "2024-05-01T10:00:01Z",
            "auth_sets": [{"id": str(uuid.uuid4()), "identity_data": {"mac": "00:11:22:33:44:55"},
                           "pubkey": "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n"
                                     "-----END PUBLIC KEY-----\n",
                           "ts": "2024-05-01T10:00:00Z", "status": status}]}


def head_event(device_id, status):
    """HEAD's DeviceAuthEvent (bulk status body item)."""
    return {"id": device_id, "status": status, "created_ts": "2024-05-01T10:00:00Z",
            "revision": 3}


@pytest.fixture
def lc_env(nats_server, mender_sim, iothub_sim):
    env = hub_env(iothub_sim)
    env.update(lifecycle_env(nats_server, mender_sim))
    return env


def wait_ready(service, timeout=10):
    """Until /health is 204: NATS connected and the streams in place (a publish before the first
    connection fails fast by design)."""
    wait_until(lambda: service.api.get(f"{INTERNAL}/health").status == 204, timeout,
               interval=0.05, what="the service's health (NATS connected)")
    return service


@pytest.fixture
def lc_service(service_factory, lc_env):
    svc = wait_ready(service_factory(env=lc_env))
    yield svc
    # SIGTERM, not SIGKILL: the events in hand finish and are acknowledged, so none is left for
    # the next test's service to receive only after the ack wait.
    with alarm_paused():
        svc.stop()


@pytest.mark.time_limit(60)
def test_full_lifecycle_of_one_device(lc_service, iothub_sim, mender_sim):
    t = Tenant(lc_service, iothub_sim, mender_sim)
    dev = str(uuid.uuid4())

    # accept: provision_device -> identity, enabled, tagged, connection string at Configure
    r = t.provision(full_device(dev), request_id="req-provision-1")
    assert r.status == 202, r
    assert r.body == b""
    identity = t.wait_hub(dev, "enabled")
    conf = t.wait_configured(dev)
    primary = identity["authentication"]["symmetricKey"]["primaryKey"]
    cs_text = conf["configured"]["azureConnectionString"]
    cs = parse_cs(cs_text)
    assert cs == {"HostName": iothub_sim.host, "DeviceId": dev, "SharedAccessKey": primary}
    assert cs_text.startswith(f"HostName={iothub_sim.host};DeviceId={dev};SharedAccessKey=")
    twin = iothub_sim.twin(dev)
    assert twin["tags"] == {"mender": True}
    wf = mender_sim.workflow_requests()
    assert len(wf) == 1
    sent = wf[0]["body"] if isinstance(wf[0]["body"], dict) else json.loads(wf[0]["body"])
    assert sent["tenant_id"] == t.id and sent["device_id"] == dev
    assert sent["provider"] == "Azure" and sent["request_id"] == "req-provision-1"

    # the delivered string authenticates as the device at the hub's device endpoint
    token = device_sas_token(cs["HostName"], dev, cs["SharedAccessKey"])
    r = iothub_sim._request("POST", f"/devices/{dev}/messages/events?api-version=2020-03-13",
                            {"temperature": 21.5}, {"Authorization": token})
    assert r.status == 204, r

    # linked in the store: the twin API knows the device
    r = lc_service.api.get(f"{MGMT}/devices/{dev}/state", token=t.user.token)
    assert r.status == 200, r
    assert list(r.json()) == [t.iid]

    # reject (v4.1.3 bulk body) -> disabled
    assert t.bulk("rejected", [{"id": dev, "revision": 2}]).status == 202
    t.wait_hub(dev, "disabled")

    # re-accept (HEAD body) -> enabled, same keys, no second deployment
    assert t.bulk("accepted", [head_event(dev, "accepted")]).status == 202
    again = t.wait_hub(dev, "enabled")
    assert again["authentication"]["symmetricKey"]["primaryKey"] == primary

    # dismiss -> noauth -> disabled
    assert t.bulk("noauth", [head_event(dev, "noauth")]).status == 202
    t.wait_hub(dev, "disabled")

    # decommission -> identity deleted, device record gone
    assert t.decommission(dev).status == 202
    t.wait_gone(dev)
    wait_until(lambda: lc_service.api.get(f"{MGMT}/devices/{dev}/state",
                                          token=t.user.token).status == 404,
               APPLY_TIMEOUT, interval=0.1, what="the device record removed")
    assert mender_sim.configuration(t.id, dev)["deployments"] == 1
    assert len(mender_sim.workflow_requests()) == 1

    # the event log, newest first, in Mender's shapes
    events = t.wait_events(5)
    assert [e["type"] for e in events] == ["device-decommissioned", "device-status-changed",
                                           "device-status-changed", "device-status-changed",
                                           "device-provisioned"]
    for e in events:
        uuid.UUID(e["id"])
        assert e["delivery_statuses"] == [{"integration_id": t.iid, "success": True}]
        assert e["time"].endswith("Z")
    assert events[0]["data"] == {"id": dev}
    assert [e["data"] for e in events[1:4]] == [{"id": dev, "status": "noauth"},
                                                {"id": dev, "status": "accepted"},
                                                {"id": dev, "status": "rejected"}]
    provisioned = events[4]["data"]
    assert provisioned["id"] == dev and provisioned["status"] == "accepted"
    assert provisioned["auth_sets"][0]["pubkey"].startswith("-----BEGIN PUBLIC KEY-----")
    assert "identity_data" not in provisioned  # not part of Mender's DeviceEvent
    assert len(t.events(f"?integration_id={t.iid}")) == 5
    assert t.events(f"?integration_id={uuid.uuid4()}") == []
    assert [e["type"] for e in t.events("?page=2&per_page=2")] == ["device-status-changed",
                                                                   "device-status-changed"]
    lc_service.assert_secret_absent(primary, cs_text, SIM_OWNER[1])
    assert lc_service.stop() == 0  # SIGTERM: HTTP, workers, queue and store shut down cleanly


def last_seq(nats, stream="IOT_MANAGER_EVENTS"):
    return (nats.streams().get(stream) or {}).get("last_seq", 0)


def test_bad_bodies_are_400_with_menders_texts(lc_service, nats_server, iothub_sim, mender_sim):
    t = Tenant(lc_service, None, mender_sim)
    before = last_seq(nats_server)
    api = lc_service.api
    devices = f"{INTERNAL}/tenants/{t.id}/devices"
    bulk = f"{INTERNAL}/tenants/{t.id}/bulk/devices/status"
    cases = [
        (api.post(devices, body=b""), "malformed request body: EOF"),
        (api.post(devices, {}), "missing device ID"),
        (api.post(devices, {"id": ""}), "missing device ID"),
        (api.post(devices, {"device_id": "", "id": ""}), "missing device ID"),
        (api.put(f"{bulk}/foo", [{"id": "a"}]), "invalid status 'foo'"),
        (api.put(f"{bulk}/no%20auth", [{"id": "a"}]), "invalid status 'no auth'"),
        (api.put(f"{bulk}/accepted", body=b""), "invalid request body: EOF"),
        (api.put(f"{bulk}/accepted", [{"id": str(i)} for i in range(101)]),
         "too many bulk items: max 100 items per request"),
    ]
    for r, text in cases:
        assert r.status == 400, r
        assert r.error == text
    prefixed = [
        (api.post(devices, body=b"{\"id\":"), "malformed request body: "),
        (api.post(devices, [{"id": "a"}]), "malformed request body: "),
        (api.post(devices, {"id": 42}), "malformed request body: "),
        (api.put(f"{bulk}/rejected", body=b"[{"), "invalid request body: "),
        (api.put(f"{bulk}/rejected", {"id": "a"}), "invalid request body: "),
        (api.put(f"{bulk}/rejected", [{"id": 1}]), "invalid request body: "),
    ]
    for r, prefix in prefixed:
        assert r.status == 400, r
        assert r.error.startswith(prefix), r.error
    # nothing reached the stream; 100 items are fine and stored as 100 events
    assert last_seq(nats_server) == before
    r = api.put(f"{bulk}/rejected", [{"id": f"dev-{i}", "revision": 1} for i in range(100)])
    assert r.status == 202, r
    assert last_seq(nats_server) == before + 100


def test_empty_tenant_in_deviceconfig_mode(service_factory, lc_env, iothub_sim, mender_sim):
    env = dict(lc_env, IOT_MANAGER_CONFIGURE_MODE="deviceconfig")
    svc = wait_ready(service_factory(env=env))
    t = Tenant(svc, iothub_sim, mender_sim, tenant="")
    dev = str(uuid.uuid4())
    r = svc.api.post(f"{INTERNAL}/tenants//devices", {"device_id": dev, "status": "accepted"})
    assert r.status == 202, r
    identity = t.wait_hub(dev, "enabled")
    conf = t.wait_configured(dev)
    assert conf["deployments"] == 1
    assert conf["configured"]["azureConnectionString"] == (
        f"HostName={iothub_sim.host};DeviceId={dev};"
        f"SharedAccessKey={identity['authentication']['symmetricKey']['primaryKey']}")
    assert mender_sim.workflow_requests() == []  # straight to deviceconfig
    assert [e["type"] for e in t.wait_events(1)] == ["device-provisioned"]
    assert svc.api.put(f"{INTERNAL}/tenants//bulk/devices/status/rejected",
                       [{"id": dev}]).status == 202
    t.wait_hub(dev, "disabled")
    assert svc.api.delete(f"{INTERNAL}/tenants//devices/{dev}").status == 202
    t.wait_gone(dev)


def test_without_nats_the_internal_api_is_503(service_factory, mender_sim):
    svc = service_factory(env=lifecycle_env(None, mender_sim))
    t = Tenant(svc, None, mender_sim)
    for r in (t.provision({"id": "d1"}), t.bulk("accepted", [{"id": "d1"}]),
              t.decommission("d1")):
        assert r.status == 503, r
        assert r.error == "lifecycle events need IOT_MANAGER_NATS_URI"
        assert r.json()["request_id"]
    # bad bodies are still 400, and health does not depend on NATS then
    assert t.provision({}).status == 400
    r = svc.api.get(f"{INTERNAL}/health")
    assert r.status == 204, r
    assert "IOT_MANAGER_NATS_URI is not set" in svc.log_text()


@pytest.mark.time_limit(60)
def test_nats_down_is_503_within_the_publish_timeout(service_factory, dedicated_nats, iothub_sim,
                                                     mender_sim):
    env = hub_env(iothub_sim)
    env.update(lifecycle_env(dedicated_nats, mender_sim, IOT_MANAGER_PUBLISH_TIMEOUT_MS="1000"))
    svc = wait_ready(service_factory(env=env))
    t = Tenant(svc, iothub_sim, mender_sim)
    dedicated_nats.stop()

    def health_names_nats():
        r = svc.api.get(f"{INTERNAL}/health")
        return r if r.status == 503 else None

    r = wait_until(health_names_nats, 10, interval=0.1, what="health 503 with NATS down")
    assert r.json()["checks"]["store"] == "ok"
    assert r.json()["checks"]["nats"] != "ok"
    assert r.error.startswith("nats: ")
    dev = str(uuid.uuid4())
    for call in (lambda: t.provision({"id": dev}), lambda: t.bulk("rejected", [{"id": dev}]),
                 lambda: t.decommission(dev)):
        t0 = time.monotonic()
        r = call()
        elapsed = time.monotonic() - t0
        assert r.status == 503, r
        assert r.header("Retry-After") == "5"
        assert "event queue" in r.error
        assert 0.5 <= elapsed < 3.0, elapsed  # kept trying for about the publish timeout

    # NATS back (same store): accepted again and applied
    dedicated_nats.start()
    wait_ready(svc, timeout=15)
    assert t.provision({"id": dev}).status == 202
    t.wait_hub(dev, "enabled")
    t.wait_configured(dev)


@pytest.mark.time_limit(60)
def test_events_in_flight_survive_a_kill(service_factory, dedicated_nats, iothub_sim, mender_sim):
    env = hub_env(iothub_sim)
    env.update(lifecycle_env(dedicated_nats, mender_sim, IOT_MANAGER_NATS_ACK_WAIT_MS="2000",
                             IOT_MANAGER_LEASE_TTL_MS="2000", IOT_MANAGER_FETCH_BATCH="1"))
    svc = wait_ready(service_factory(env=env))
    t = Tenant(svc, iothub_sim, mender_sim)
    devices = [str(uuid.uuid4()) for _ in range(6)]
    # Every identity creation hangs for a while: the workers are mid-call when killed, the other
    # events wait in the stream.
    iothub_sim.fault(match="PUT /devices", latency_ms=1500)
    for dev in devices:
        assert t.provision(full_device(dev)).status == 202
    time.sleep(0.3)
    svc.kill()
    iothub_sim.clear_faults()
    svc.start()
    for dev in devices:
        identity = t.wait_hub(dev, "enabled", timeout=30)
        conf = t.wait_configured(dev, timeout=30)
        key = identity["authentication"]["symmetricKey"]["primaryKey"]
        assert parse_cs(conf["configured"]["azureConnectionString"])["SharedAccessKey"] == key
    wait_until(lambda: dedicated_nats.stream_messages("IOT_MANAGER_EVENTS") == 0, 15,
               interval=0.1, what="the stream drained")
    for dev in devices:
        # the killed calls never reached Configure: exactly one deployment each
        assert mender_sim.configuration(t.id, dev)["deployments"] == 1
    assert len(t.events()) == 6


@pytest.mark.time_limit(60)
def test_hub_throttling_and_outage_are_retried(lc_service, iothub_sim, mender_sim):
    t = Tenant(lc_service, iothub_sim, mender_sim)
    iothub_sim.fault(match="PUT /devices", status=429, retry_after=1, count=3)
    iothub_sim.fault(match="PATCH /twins", status=503, count=4)
    devices = [str(uuid.uuid4()) for _ in range(3)]
    for dev in devices:
        assert t.provision({"id": dev, "status": "accepted"}).status == 202
    for dev in devices:
        t.wait_hub(dev, "enabled", timeout=30)
        t.wait_configured(dev, timeout=30)
        assert iothub_sim.twin(dev)["tags"] == {"mender": True}
    # a status change during an outage of the registry
    iothub_sim.fault(match="GET /devices", status=503, duration_ms=1500)
    assert t.bulk("rejected", [{"id": d} for d in devices]).status == 202
    for dev in devices:
        t.wait_hub(dev, "disabled", timeout=30)
    for dev in devices:
        assert mender_sim.configuration(t.id, dev)["deployments"] == 1
    log = [e for e in iothub_sim.requests() if e["status"] in (429, 503)]
    assert len(log) >= 7, log  # the faults were really hit
    statuses = [e["delivery_statuses"][0]["success"] for e in t.wait_events(6)]
    assert all(statuses), t.events()


@pytest.mark.time_limit(60)
def test_configure_failing_for_a_while_is_retried_and_delivered_once(lc_service, iothub_sim,
                                                                     mender_sim):
    t = Tenant(lc_service, iothub_sim, mender_sim)
    mender_sim.fault(match="POST /api/v1/workflow", status=503, count=3)
    dev = str(uuid.uuid4())
    assert t.provision({"id": dev}).status == 202
    conf = t.wait_configured(dev, timeout=30)
    assert conf["deployments"] == 1
    assert len(mender_sim.jobs()) == 1
    assert len(mender_sim.workflow_requests()) == 4  # three refused, one accepted
    # the identity was created once; the retries found it and reused its keys
    creates = [e for e in iothub_sim.requests()
               if e["method"] == "PUT" and e["path"] == f"/devices/{dev}"]
    assert [e["status"] for e in creates][0] == 200
    assert all(e["status"] in (200, 409) for e in creates)
    key = t.hub_device(dev)["authentication"]["symmetricKey"]["primaryKey"]
    assert parse_cs(conf["configured"]["azureConnectionString"])["SharedAccessKey"] == key
    events = t.wait_events(1)
    assert [(e["type"], e["delivery_statuses"][0]["success"]) for e in events] == [
        ("device-provisioned", True)]


def dlq_listing(service):
    """`iot-manager dlq list` output when that command exists (another part of issue 4)."""
    help_text = service.cli("--help").stdout
    if "dlq list" not in help_text:
        return None
    out = service.cli("dlq", "list", timeout=20)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


@pytest.mark.time_limit(60)
def test_wrong_integration_key_is_logged_and_dead_lettered(lc_service, nats_server, iothub_sim,
                                                          mender_sim):
    wrong_key = b64(random_key())
    t = Tenant(lc_service, iothub_sim, mender_sim, key=wrong_key)
    dlq_before = nats_server.stream_messages("IOT_MANAGER_DLQ")
    dev = str(uuid.uuid4())
    assert t.provision(full_device(dev)).status == 202
    events = t.wait_events(1)
    assert len(events) == 1
    e = events[0]
    assert e["type"] == "device-provisioned"
    assert e["data"]["id"] == dev
    (st,) = e["delivery_statuses"]
    assert st["integration_id"] == t.iid and st["success"] is False
    assert st["status_code"] == 401
    assert "credentials" in st["error"], st["error"]
    wait_until(lambda: nats_server.stream_messages("IOT_MANAGER_DLQ") == dlq_before + 1, 10,
               interval=0.1, what="the event in the dead-letter stream")
    listing = dlq_listing(lc_service)
    if listing is not None:
        assert dev in listing
    # a permanent failure is not retried, and nothing reached the hub or Configure
    assert t.hub_device(dev) is None
    assert mender_sim.configuration(t.id, dev) is None
    time.sleep(1)
    assert len(t.events()) == 1
    lc_service.assert_secret_absent(wrong_key)


def test_devices_unknown_to_us_are_left_alone(service_factory, dedicated_nats, iothub_sim,
                                              mender_sim):
    # a server of its own: "the stream is empty" then means "our events are processed"
    env = hub_env(iothub_sim)
    env.update(lifecycle_env(dedicated_nats, mender_sim))
    lc_service = wait_ready(service_factory(env=env))
    nats_server = dedicated_nats
    # a tenant without an integration: accepted, nothing to do, no error and no event
    lonely = Tenant(lc_service, None, mender_sim)
    d0 = str(uuid.uuid4())
    assert lonely.provision({"id": d0}).status == 202
    # a device that was in the hub before the integration: status events do not touch it
    t = Tenant(lc_service, iothub_sim, mender_sim)
    d1 = str(uuid.uuid4())
    iothub_sim.create_device(d1)
    assert t.bulk("rejected", [{"id": d1}]).status == 202
    assert t.decommission(d1).status == 202
    # a device an operator unlinked after we provisioned it (management DELETE /devices/{id})
    d2 = str(uuid.uuid4())
    assert t.provision({"id": d2}).status == 202
    t.wait_configured(d2)
    r = lc_service.api.delete(f"{MGMT}/devices/{d2}", token=t.user.token)
    assert r.status == 204, r
    assert t.bulk("rejected", [{"id": d2}]).status == 202
    wait_until(lambda: nats_server.stream_messages("IOT_MANAGER_EVENTS") == 0, 15, interval=0.1,
               what="the events processed")
    assert t.hub_device(d1)["status"] == "enabled"
    assert t.hub_device(d2)["status"] == "enabled"
    assert [e["type"] for e in t.events()] == ["device-provisioned"]
    assert t.hub_device(d0) is None
    assert mender_sim.configuration(lonely.id, d0) is None
    assert lonely.events() == []


def requeued_total(service):
    r = service.api.get("/metrics")
    assert r.status == 200, r
    return sum(float(line.rsplit(" ", 1)[1]) for line in r.body.decode().splitlines()
               if line.startswith("iot_manager_events_requeued_total{"))


@pytest.mark.time_limit(120)
def test_a_busy_hub_drains_at_its_pace_and_dead_letters_nothing(service_factory, dedicated_nats,
                                                                iothub_sim, mender_sim):
    """More events than a small hub quota and the delivery budget can take: every event whose
    budget runs out while the hub is only busy is requeued (keeping its place in its device's
    order), none is dead-lettered, and every device ends in the state of its latest event."""
    env = hub_env(iothub_sim)
    # 30 registry operations a minute (one every 2 s), 2 deliveries per budget, 8 workers taking
    # one event at a time: the fourth reservation in line would wait longer than the limiter's
    # 5 s and is refused
    env.update(lifecycle_env(dedicated_nats, mender_sim, IOT_MANAGER_HUB_RATELIMIT="true",
                             IOT_MANAGER_HUB_REGISTRY_PER_MIN="30", IOT_MANAGER_WORKERS="8",
                             IOT_MANAGER_FETCH_BATCH="1", IOT_MANAGER_NATS_MAX_DELIVER="2"))
    svc = wait_ready(service_factory(env=env))
    t = Tenant(svc, iothub_sim, mender_sim)
    devices = [str(uuid.uuid4()) for _ in range(8)]
    for dev in devices:
        assert t.provision({"id": dev, "status": "accepted"}).status == 202
    # decommissioned while the provisioning waits: a requeued provision must not bring it back
    gone = devices[-1]
    assert t.decommission(gone).status == 202
    for dev in devices[:-1]:
        t.wait_hub(dev, "enabled", timeout=90)
        t.wait_configured(dev, timeout=30)
    wait_until(lambda: dedicated_nats.stream_messages("IOT_MANAGER_EVENTS") == 0, 60,
               interval=0.2, what="every event processed")
    assert t.hub_device(gone) is None
    assert dedicated_nats.stream_messages("IOT_MANAGER_DLQ") == 0
    assert requeued_total(svc) >= 1  # the budget really ran out on a busy hub
    assert "moved to the dead-letter stream" not in svc.log_text()
    with alarm_paused():
        svc.stop()


@pytest.mark.time_limit(90)
def test_a_lost_events_stream_restarts_the_order_but_loses_no_later_event(
        service_factory, dedicated_nats, iothub_sim, mender_sim):
    """The events stream is lost while the device records survive (a server that lost part of
    its store, or an operator who removed the stream): the re-created stream counts from 1 again,
    and its events must still count as newer than what the records hold."""
    env = hub_env(iothub_sim)
    env.update(lifecycle_env(dedicated_nats, mender_sim))
    svc = wait_ready(service_factory(env=env))
    t = Tenant(svc, iothub_sim, mender_sim)
    dev, other = str(uuid.uuid4()), str(uuid.uuid4())
    assert t.provision({"id": dev}).status == 202
    assert t.provision({"id": other}).status == 202
    t.wait_hub(dev, "enabled")
    t.wait_hub(other, "enabled")
    assert t.bulk("rejected", [{"id": dev}]).status == 202  # the record now holds sequence 3
    t.wait_hub(dev, "disabled")
    wait_until(lambda: dedicated_nats.stream_messages("IOT_MANAGER_EVENTS") == 0, 10,
               interval=0.1, what="the events processed")

    with alarm_paused():
        dedicated_nats.stop()
    streams = list(dedicated_nats.store.glob("jetstream/*/streams/IOT_MANAGER_EVENTS"))
    assert len(streams) == 1, list(dedicated_nats.store.rglob("*"))[:20]
    shutil.rmtree(streams[0])
    dedicated_nats.start()
    wait_ready(svc, timeout=20)

    # sequences 1 and 2 of the new stream
    assert t.bulk("accepted", [{"id": dev}]).status == 202
    assert t.decommission(other).status == 202
    t.wait_hub(dev, "enabled", timeout=30)
    t.wait_gone(other, timeout=30)
    assert "was re-created" in svc.log_text()
    with alarm_paused():
        svc.stop()


@pytest.mark.time_limit(90)
def test_a_write_from_a_worker_whose_lease_expired_is_undone(service_factory, dedicated_nats,
                                                             iothub_sim, mender_sim):
    """A hub call slower than the lease: another worker takes the device over and applies the
    newer event, then the slow worker's older write lands. The device must still end in the
    state of its latest event."""
    env = hub_env(iothub_sim)
    env.update(lifecycle_env(dedicated_nats, mender_sim, IOT_MANAGER_LEASE_TTL_MS="1000",
                             IOT_MANAGER_FETCH_BATCH="1"))
    svc = wait_ready(service_factory(env=env))
    t = Tenant(svc, iothub_sim, mender_sim)
    dev = str(uuid.uuid4())
    assert t.provision({"id": dev}).status == 202
    t.wait_hub(dev, "enabled")
    t.wait_configured(dev)
    # the worker that takes "rejected" reads the identity, and the answer takes 5 s: its lease
    # (1 s) expires meanwhile and the other worker applies "accepted"
    iothub_sim.fault(match=f"GET /devices/{dev}", latency_ms=5000, count=1)
    assert t.bulk("rejected", [{"id": dev}]).status == 202
    time.sleep(1.5)
    assert t.bulk("accepted", [{"id": dev}]).status == 202
    wait_until(lambda: "reconciling it again" in svc.log_text(), 20, interval=0.2,
               what="the slow worker noticing that a newer state was applied meanwhile")
    wait_until(lambda: dedicated_nats.stream_messages("IOT_MANAGER_EVENTS") == 0, 20,
               interval=0.2, what="every event processed")
    assert t.hub_device(dev)["status"] == "enabled"
    with alarm_paused():
        svc.stop()


@pytest.mark.time_limit(60)
def test_worker_command_processes_events_without_http(service_factory, lc_env, iothub_sim,
                                                      mender_sim, backend, tmp_path):
    api = wait_ready(service_factory(env=dict(lc_env, IOT_MANAGER_WORKERS="0")))
    shared = {"IOT_MANAGER_SQLITE_PATH": str(api.sqlite_path)} if backend == "sqlite" else {}
    worker = service_factory(env=dict(lc_env, **shared), start=False, workdir=tmp_path / "worker",
                             dbname=api.dbname)
    worker.start(args=["worker"], wait=False)
    wait_until(lambda: "worker ready" in worker.log_text(), 10, interval=0.05,
               what="the worker's readiness line")
    t = Tenant(api, iothub_sim, mender_sim)
    dev = str(uuid.uuid4())
    assert t.provision({"id": dev}).status == 202
    t.wait_hub(dev, "enabled")
    t.wait_configured(dev)
    assert worker.stop() == 0  # SIGTERM: clean exit
    assert "stopped" in worker.log_text()
    # no NATS: the worker command refuses to start
    out = worker.cli("worker", env={"IOT_MANAGER_NATS_URI": None}, timeout=15)
    assert out.returncode == 2
    assert "IOT_MANAGER_NATS_URI" in out.stderr
    assert "worker" in api.cli("--help").stdout


def test_events_query_validation(service):
    user = service.user(new_tenant())
    cases = {
        "?page=0": "invalid page query: value must be a non-zero positive integer",
        "?page=-2": "invalid page query: value must be a non-zero positive integer",
        "?page=abc": 'invalid page query: "abc"',
        "?page=": 'invalid page query: ""',
        "?per_page=0": "invalid per_page query: value must be a non-zero positive integer",
        "?per_page=1.5": 'invalid per_page query: "1.5"',
        "?per_page=501": 'parameter "per_page" above limit (max: 500)',
        "?integration_id=nope": "integration ID is not a valid UUID",
    }
    for query, text in cases.items():
        r = service.api.get(f"{MGMT}/events{query}", token=user.token)
        assert r.status == 400, (query, r)
        assert r.error == text
    r = service.api.get(f"{MGMT}/events?page=3&per_page=500", token=user.token)
    assert r.status == 200 and r.json() == []
    assert service.api.get(f"{MGMT}/events").status == 401


def test_startup_does_not_wait_for_nats(service_factory, mender_sim):
    env = lifecycle_env(None, mender_sim, IOT_MANAGER_NATS_URI=f"nats://127.0.0.1:{free_port()}",
                        IOT_MANAGER_PUBLISH_TIMEOUT_MS="1000")
    t0 = time.monotonic()
    svc = service_factory(env=env)  # waits for /alive
    assert time.monotonic() - t0 < 5
    r = svc.api.get(f"{INTERNAL}/health")
    assert r.status == 503, r
    assert r.json()["checks"]["store"] == "ok" and r.json()["checks"]["nats"] != "ok"
    t0 = time.monotonic()
    r = Tenant(svc, None, mender_sim).provision({"id": "d1"})
    assert r.status == 503, r  # kept trying for IOT_MANAGER_PUBLISH_TIMEOUT_MS, then gave up
    assert 0.9 <= time.monotonic() - t0 < 3
    assert svc.stop() == 0


def test_a_stream_setting_nats_cannot_change_stops_startup(service_factory, dedicated_nats,
                                                           mender_sim):
    env = lifecycle_env(dedicated_nats, mender_sim, IOT_MANAGER_NATS_STORAGE="memory")
    first = wait_ready(service_factory(env=env))
    assert first.stop() == 0
    second = service_factory(env=lifecycle_env(dedicated_nats, mender_sim), start=False)
    second.start(wait=False)
    code = second.wait_exit(timeout=15)
    assert code == 2, second.log_tail()
    assert "IOT_MANAGER_EVENTS" in second.log_text() and "storage" in second.log_text()


def test_a_device_id_azure_refuses_is_logged_and_dead_lettered(lc_service, nats_server,
                                                                iothub_sim, mender_sim):
    t = Tenant(lc_service, iothub_sim, mender_sim)
    dlq_before = nats_server.stream_messages("IOT_MANAGER_DLQ")
    bad = "not a valid/azure id"
    assert t.provision({"id": bad}).status == 202
    (e,) = t.wait_events(1)
    assert e["type"] == "device-provisioned" and e["data"]["id"] == bad
    (st,) = e["delivery_statuses"]
    assert st["success"] is False and "status_code" not in st  # refused before any call
    assert st["error"].startswith("invalid device ID")
    wait_until(lambda: nats_server.stream_messages("IOT_MANAGER_DLQ") == dlq_before + 1, 10,
               interval=0.1, what="the event in the dead-letter stream")
    assert [r for r in iothub_sim.requests() if r["method"] == "PUT"] == []
    assert lc_service.api.get(f"{MGMT}/devices/{urllib.parse.quote(bad, safe='')}/state",
                              token=t.user.token).status == 404  # never linked
