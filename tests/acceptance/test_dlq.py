"""Dead letters (issue 4, item 3): an event that fails permanently lands in the dead-letter
stream; `iot-manager dlq list` shows it without secrets; once the cause is fixed,
`iot-manager dlq replay` applies it. On both stores, each test with a nats-server of its own (the
listing then holds only the test's dead letters)."""

import json
import time
import uuid

import pytest

from conftest import (INTERNAL, b64, create_sim_integration, hub_env, lifecycle_env, new_tenant,
                      random_key, wait_until)

DLQ = "IOT_MANAGER_DLQ"


@pytest.fixture
def dlq_service(service_factory, dedicated_nats, iothub_sim, mender_sim):
    env = hub_env(iothub_sim)
    env.update(lifecycle_env(dedicated_nats, mender_sim))
    svc = service_factory(env=env)
    wait_until(lambda: svc.api.get(f"{INTERNAL}/health").status == 204, 10, interval=0.05,
               what="NATS connected")
    return svc


def provision(svc, tenant, device_id):
    r = svc.api.post(f"{INTERNAL}/tenants/{tenant}/devices",
                     {"id": device_id, "status": "accepted"})
    assert r.status == 202, r


def hub_status(sim, device_id):
    twin = sim.twin(device_id)
    return None if twin is None else twin["status"]


def dlq(svc, *args, **kw):
    return svc.cli("dlq", *args, timeout=30, **kw)


def listed(svc):
    out = dlq(svc, "list", "--output", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.time_limit(60)
def test_dead_letter_listed_then_replayed_after_the_fix(dlq_service, dedicated_nats, iothub_sim,
                                                        mender_sim):
    svc = dlq_service
    tenant = new_tenant()
    user = svc.user(tenant)
    wrong_key = b64(random_key())
    iid = create_sim_integration(user, iothub_sim, key=wrong_key)
    dev = str(uuid.uuid4())
    provision(svc, tenant, dev)
    # the hub refuses the credentials: permanent, dead-lettered after one delivery
    wait_until(lambda: dedicated_nats.stream_messages(DLQ) == 1, 15, interval=0.1,
               what="the event in the dead-letter stream")
    assert hub_status(iothub_sim, dev) is None

    (entry,) = listed(svc)
    assert entry["kind"] == "provision" and entry["tenant_id"] == tenant
    assert entry["device_id"] == dev and entry["deliveries"] == 1
    assert entry["seq"] >= 1 and entry["original_seq"] >= 1
    assert "credentials" in entry["reason"], entry
    assert entry["time"].endswith("Z")
    text = dlq(svc, "list")
    assert text.returncode == 0, text.stderr
    header, row = text.stdout.strip().splitlines()
    assert header.split("\t") == ["SEQ", "ORIGINAL_SEQ", "KIND", "TENANT", "DEVICE",
                                  "DELIVERIES", "TIME", "REASON"]
    cols = row.split("\t")
    assert cols[:6] == [str(entry["seq"]), str(entry["original_seq"]), "provision", tenant, dev,
                        "1"]
    for out in (text.stdout + text.stderr, json.dumps(entry)):
        assert wrong_key not in out

    # an unknown sequence: a clear message, nothing replayed
    bad = dlq(svc, "replay", str(entry["seq"] + 1000))
    assert bad.returncode == 1
    assert f"dead letter {entry['seq'] + 1000} not found" in bad.stderr
    assert dedicated_nats.stream_messages(DLQ) == 1

    # fix the cause, then replay: applied as the device's newest event
    r = user.set_credentials(iid, {"type": "sas", "connection_string": iothub_sim.conn_str()})
    assert r.status == 204, r
    out = dlq(svc, "replay", str(entry["seq"]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "replayed 1 dead letter"
    wait_until(lambda: hub_status(iothub_sim, dev) == "enabled", 15, interval=0.1,
               what="the replayed event applied")
    wait_until(lambda: mender_sim.configuration(tenant, dev) is not None, 10, interval=0.1,
               what="the connection string at Configure")
    assert dedicated_nats.stream_messages(DLQ) == 0
    assert listed(svc) == []
    assert dlq(svc, "list").stdout.strip() == "no dead letters"
    # replaying the same sequence again finds nothing
    again = dlq(svc, "replay", str(entry["seq"]))
    assert again.returncode == 1 and "not found" in again.stderr
    svc.assert_secret_absent(wrong_key)


@pytest.mark.time_limit(60)
def test_replay_all(dlq_service, dedicated_nats, iothub_sim, mender_sim):
    svc = dlq_service
    tenant = new_tenant()
    user = svc.user(tenant)
    iid = create_sim_integration(user, iothub_sim, key=b64(random_key()))
    devices = [str(uuid.uuid4()) for _ in range(3)]
    for dev in devices:
        provision(svc, tenant, dev)
    wait_until(lambda: dedicated_nats.stream_messages(DLQ) == 3, 15, interval=0.1,
               what="three dead letters")
    assert sorted(e["device_id"] for e in listed(svc)) == sorted(devices)
    r = user.set_credentials(iid, {"type": "sas", "connection_string": iothub_sim.conn_str()})
    assert r.status == 204, r
    out = dlq(svc, "replay", "--all")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "replayed 3 dead letters"
    for dev in devices:
        wait_until(lambda: hub_status(iothub_sim, dev) == "enabled", 15, interval=0.1,
                   what=f"device {dev} provisioned")
    assert dedicated_nats.stream_messages(DLQ) == 0
    time.sleep(0.5)
    assert dedicated_nats.stream_messages(DLQ) == 0  # nothing failed again


def test_usage_and_configuration_errors(service_factory, mender_sim):
    svc = service_factory(env=lifecycle_env(None, mender_sim))
    out = dlq(svc, "list")
    assert out.returncode == 2 and "IOT_MANAGER_NATS_URI" in out.stderr
    for args, text in ((["replay"], "either --all or the sequence numbers"),
                       (["replay", "--all", "3"], "either --all or the sequence numbers"),
                       (["replay", "x1"], "unknown option"),
                       (["replay", "0"], "not a dead-letter sequence number"),
                       (["list", "--output", "xml"], "--output must be text or json"),
                       (["purge"], "dlq list"),
                       ([], "dlq list")):
        out = dlq(svc, *args)
        assert out.returncode == 2, (args, out.stderr)
        assert text in out.stderr, (args, out.stderr)
    help_text = svc.cli("--help").stdout
    assert "dlq list" in help_text and "dlq replay" in help_text
