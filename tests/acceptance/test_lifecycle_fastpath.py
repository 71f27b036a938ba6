"""The worker's short paths (docs/lifecycle-design.md §4, "Order of recording and leasing"): a first
delivery takes the device's lease before recording its event, a provision creates the device's
record without reading it first, and the lease is released without waiting for the stream's
answer. Each test drives a case where the short path could go wrong: a record that already
exists, two first deliveries for one device at once, and the next event for a device right after
a release."""

import time
import uuid

import pytest

from conftest import wait_until
from test_lifecycle import (APPLY_TIMEOUT, Tenant, full_device, head_event, lc_env,  # noqa: F401
                            lc_service, parse_cs)


def hub_key(t, dev):
    return t.hub_device(dev)["authentication"]["symmetricKey"]["primaryKey"]


@pytest.mark.time_limit(60)
def test_reprovision_after_decommission_finds_the_record_and_delivers_new_keys(
        lc_service, iothub_sim, mender_sim):
    # The second provision's first delivery meets an existing record (exists = false): the
    # create-without-read fails and the read-modify-write must follow, or nothing happens.
    t = Tenant(lc_service, iothub_sim, mender_sim)
    dev = str(uuid.uuid4())
    assert t.provision(full_device(dev)).status == 202
    t.wait_hub(dev, "enabled")
    first = parse_cs(t.wait_configured(dev)["configured"]["azureConnectionString"])
    assert t.decommission(dev).status == 202
    t.wait_gone(dev)

    assert t.provision(full_device(dev)).status == 202
    t.wait_hub(dev, "enabled")
    key = hub_key(t, dev)
    assert key != first["SharedAccessKey"]  # a new identity, new keys
    conf = wait_until(lambda: (lambda c: c if c and c["deployments"] == 2 else None)(
        mender_sim.configuration(t.id, dev)), APPLY_TIMEOUT, interval=0.1,
        what="the new connection string delivered")
    assert parse_cs(conf["configured"]["azureConnectionString"])["SharedAccessKey"] == key
    events = t.wait_events(3)
    assert [e["type"] for e in events] == ["device-provisioned", "device-decommissioned",
                                           "device-provisioned"]


@pytest.mark.time_limit(60)
def test_simultaneous_first_deliveries_for_one_device_deploy_once(lc_service, iothub_sim,
                                                                  mender_sim):
    # Several provisions of the same devices, posted back to back, reach the two workers as
    # first deliveries at about the same time: one takes the lease, the others record their
    # event (one of them by creating the record, the rest after a failed create) and wait.
    t = Tenant(lc_service, iothub_sim, mender_sim)
    devs = [str(uuid.uuid4()) for _ in range(10)]
    for dev in devs:
        for _ in range(3):
            assert t.provision(full_device(dev)).status == 202
    for dev in devs:
        t.wait_hub(dev, "enabled")
        conf = t.wait_configured(dev)
        assert parse_cs(conf["configured"]["azureConnectionString"])["SharedAccessKey"] == \
            hub_key(t, dev)
    time.sleep(1)  # redeliveries of the later copies, if any, come within the lease retry delay
    for dev in devs:
        assert mender_sim.configuration(t.id, dev)["deployments"] == 1
        creates = [e for e in iothub_sim.requests()
                   if e["method"] == "PUT" and e["path"] == f"/devices/{dev}"]
        # one identity, created once (a 409 would be libcurl re-sending on a stale connection)
        assert [e["status"] for e in creates if e["status"] != 409] == [200]
    assert len(mender_sim.workflow_requests()) == len(devs)


@pytest.mark.time_limit(60)
def test_the_next_event_after_a_release_is_applied_at_once(lc_service, iothub_sim, mender_sim):
    # The release is published without waiting for the stream's answer. Were it lost or refused,
    # the next event of the device would wait for the lease to expire (30 s here): each status
    # change must instead follow within a few seconds of its request.
    t = Tenant(lc_service, iothub_sim, mender_sim)
    dev = str(uuid.uuid4())
    assert t.provision(full_device(dev)).status == 202
    t.wait_hub(dev, "enabled")
    t.wait_configured(dev)
    for status, hub_status in (("rejected", "disabled"), ("accepted", "enabled"),
                               ("noauth", "disabled"), ("accepted", "enabled")):
        t0 = time.monotonic()
        assert t.bulk(status, [head_event(dev, status)]).status == 202
        t.wait_hub(dev, hub_status, timeout=5)
        assert time.monotonic() - t0 < 5
    assert mender_sim.configuration(t.id, dev)["deployments"] == 1
