"""The Device Twin API (/devices/{id}/state...) against the IoT Hub simulator, on both stores.

What the Mender UI does (mender-clients.md §1.3): GET /devices/{id}/state every 10 s, and PUT
{"desired": {...}} without If-Match. Beyond Mender: PATCH (merge), ETag/If-Match, and hub errors
mapped to statuses an operator can act on (404/502/503) instead of Mender's blanket 500.
"""

import threading
import uuid

import pytest

from conftest import (SIM_READ_ONLY, b64, create_sim_integration, free_port, new_device_id,
                      new_tenant, provision_twin_device, random_key)

CONFLICT = "conflict when updating the device state"


def nested(levels):
    """An object with `levels` objects nested below it, the innermost holding a leaf: the
    simulator's (and Azure's devguide "one".."ten") way of counting, valid up to 10."""
    value = {"property": "value"}
    for i in range(levels):
        value = {f"l{levels - i}": value}
    return value


class Tenant:
    """A tenant with an iot-hub integration on the simulator, and helpers for its devices."""

    def __init__(self, service, sim, **integration):
        self.service = service
        self.sim = sim
        self.id = new_tenant()
        self.user = service.user(self.id)
        self.iid = create_sim_integration(self.user, sim, **integration)

    def device(self, **kw):
        return provision_twin_device(self.service, self.sim, self.id, self.iid, **kw)


@pytest.fixture
def tenant(hub_service, iothub_sim):
    return Tenant(hub_service, iothub_sim)


def _etag(sim, device_id):
    return f'"{sim.twin(device_id)["etag"]}"'


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def test_state_map_is_empty_without_links(tenant, hub_service, iothub_sim):
    device = new_device_id()
    hub_service.add_device(tenant.id, device)
    r = tenant.user.states(device)
    assert r.status == 200, r
    assert r.json() == {}

    # A link to an integration that no longer exists is skipped, as Mender does.
    other = new_device_id()
    hub_service.link_device(tenant.id, other, str(uuid.uuid4()))
    r = tenant.user.states(other)
    assert r.status == 200, r
    assert r.json() == {}
    assert iothub_sim.requests() == []  # nothing to ask the hub


def test_state_map_shows_desired_and_reported_without_metadata(tenant, iothub_sim):
    device = tenant.device()
    iothub_sim.set_desired(device, {"fw": {"version": "2.0", "channel": "stable"}, "interval": 30})
    iothub_sim.set_reported(device, {"fw": {"version": "1.0", "sensors": {"temp": 21.5}},
                                     "online": True})
    desired = {"fw": {"version": "2.0", "channel": "stable"}, "interval": 30}
    reported = {"fw": {"version": "1.0", "sensors": {"temp": 21.5}}, "online": True}

    r = tenant.user.states(device)
    assert r.status == 200, r
    # Top-level $metadata/$version removed, nested objects kept as they are.
    assert r.json() == {tenant.iid: {"desired": desired, "reported": reported}}

    r = tenant.user.state(device, tenant.iid)
    assert r.status == 200, r
    assert r.json() == {"desired": desired, "reported": reported}
    assert r.header("ETag") == _etag(iothub_sim, device)
    # Integration ids in any case, as the integration endpoints accept them.
    r = tenant.user.state(device, tenant.iid.upper())
    assert r.status == 200 and r.json()["desired"] == desired, r


def test_fresh_twin_has_empty_properties(tenant):
    device = tenant.device()
    r = tenant.user.states(device)
    assert r.status == 200, r
    assert r.json() == {tenant.iid: {"desired": {}, "reported": {}}}


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def test_put_replaces_desired_and_keeps_tags(tenant, iothub_sim):
    device = tenant.device()
    iothub_sim.set_desired(device, {"a": 1, "b": {"c": 2, "keep": True}, "gone": "x"})
    iothub_sim.set_reported(device, {"fw": "1.0"})
    before_reported = iothub_sim.twin(device)["properties"]["reported"]["fw"]

    # Exactly what the UI sends: the whole edited document, no If-Match. `reported` is ignored.
    new = {"b": {"d": 3}, "e": "text", "n": 1.5, "flag": False}
    r = tenant.user.put_state(device, tenant.iid, {"desired": new, "reported": {"fw": "forged"}})
    assert r.status == 200, r
    assert r.json() == {"desired": new, "reported": {"fw": "1.0"}}
    assert r.header("ETag") == _etag(iothub_sim, device)

    assert iothub_sim.desired(device) == new  # removed keys are gone in the hub
    twin = iothub_sim.twin(device)
    assert twin["tags"] == {"mender": True}
    assert twin["properties"]["reported"]["fw"] == before_reported
    assert tenant.user.state(device, tenant.iid).json() == {"desired": new,
                                                            "reported": {"fw": "1.0"}}

    # An empty document clears desired, tags still kept.
    r = tenant.user.put_state(device, tenant.iid, {"desired": {}})
    assert r.status == 200 and r.json()["desired"] == {}, r
    assert iothub_sim.desired(device) == {}
    assert iothub_sim.twin(device)["tags"] == {"mender": True}


def test_patch_merges_and_null_deletes(tenant, iothub_sim):
    device = tenant.device()
    iothub_sim.set_desired(device, {"a": 1, "b": {"c": 2, "keep": True}, "s": "x"})
    r = tenant.user.patch_state(device, tenant.iid,
                                {"desired": {"a": None, "b": {"c": None, "d": 4}, "n": "new"}})
    assert r.status == 200, r
    expected = {"b": {"keep": True, "d": 4}, "s": "x", "n": "new"}
    assert r.json()["desired"] == expected
    assert r.header("ETag") == _etag(iothub_sim, device)
    assert iothub_sim.desired(device) == expected
    assert iothub_sim.twin(device)["tags"] == {"mender": True}


def test_if_match(tenant, iothub_sim):
    device = tenant.device()
    iothub_sim.set_desired(device, {"v": 1})
    first = tenant.user.state(device, tenant.iid)
    etag = first.header("ETag")
    assert etag and etag == _etag(iothub_sim, device), first

    r = tenant.user.put_state(device, tenant.iid, {"desired": {"v": 2}}, if_match=etag)
    assert r.status == 200, r
    new_etag = r.header("ETag")
    assert new_etag and new_etag != etag
    assert iothub_sim.desired(device) == {"v": 2}

    # The etag we handed out first is stale now: 412, and the hub is not written.
    twin_before = iothub_sim.twin(device)
    seq = iothub_sim.last_seq()
    for call in (tenant.user.put_state, tenant.user.patch_state):
        r = call(device, tenant.iid, {"desired": {"v": 3}}, if_match=etag)
        assert r.status == 412, (call.__name__, r)
    assert iothub_sim.twin(device) == twin_before
    assert all(e["status"] != 200 for e in iothub_sim.twin_writes(seq)), iothub_sim.requests(seq)

    # The current one works for PATCH too, also unquoted and weak; "*" matches any twin.
    r = tenant.user.patch_state(device, tenant.iid, {"desired": {"w": 1}}, if_match=new_etag)
    assert r.status == 200, r
    assert iothub_sim.desired(device) == {"v": 2, "w": 1}
    current = r.header("ETag")
    r = tenant.user.patch_state(device, tenant.iid, {"desired": {"x": 1}},
                                if_match=current.strip('"'))
    assert r.status == 200, r
    r = tenant.user.put_state(device, tenant.iid, {"desired": {"y": 1}},
                              if_match="W/" + r.header("ETag"))
    assert r.status == 200, r
    r = tenant.user.put_state(device, tenant.iid, {"desired": {"z": 1}}, if_match="*")
    assert r.status == 200, r
    assert iothub_sim.desired(device) == {"z": 1}
    assert iothub_sim.twin(device)["tags"] == {"mender": True}


def _race(calls):
    """Runs the calls at the same moment; returns their responses in order."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(i, call):
        barrier.wait(5)
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert all(r is not None for r in results), "a racing request did not finish"
    return results


def _hold_twin_reads(sim):
    """Delays the answers to both racers' twin reads (the simulator applies a request at once
    and delays its answer): both read the same etag before either writes."""
    sim.fault(match="GET /twins", latency_ms=400, count=2)


def test_concurrent_writers_with_the_same_if_match(tenant, iothub_sim):
    device = tenant.device()
    etag = tenant.user.state(device, tenant.iid).header("ETag")
    _hold_twin_reads(iothub_sim)
    bodies = [{"desired": {"writer": "one"}}, {"desired": {"writer": "two"}}]
    results = _race([lambda b=b: tenant.user.put_state(device, tenant.iid, b, if_match=etag)
                     for b in bodies])
    statuses = sorted(r.status for r in results)
    assert statuses == [200, 412], results
    winner = bodies[[r.status for r in results].index(200)]
    assert iothub_sim.desired(device) == winner["desired"]


def test_concurrent_writers_without_if_match_report_the_conflict(tenant, iothub_sim):
    """The UI sends no If-Match: a lost update must not go unreported (Mender: 409)."""
    device = tenant.device()
    iothub_sim.set_desired(device, {"base": 1})
    _hold_twin_reads(iothub_sim)
    bodies = [{"desired": {"writer": "one"}}, {"desired": {"writer": "two"}}]
    results = _race([lambda b=b: tenant.user.put_state(device, tenant.iid, b) for b in bodies])
    assert sorted(r.status for r in results) == [200, 409], results
    loser = [r for r in results if r.status == 409][0]
    assert loser.error == CONFLICT
    winner = bodies[[r.status for r in results].index(200)]
    assert iothub_sim.desired(device) == winner["desired"]
    assert iothub_sim.twin(device)["tags"] == {"mender": True}


# --------------------------------------------------------------------------------------------
# Validation: Azure's twin rules are checked before any hub call
# --------------------------------------------------------------------------------------------

INVALID_DESIRED = [
    ("'$' key at the top", {"$version": 5}),
    ("'$' key nested", {"a": {"$inner": 1}}),
    ("depth 11", nested(11)),
    ("33 KB", {f"k{i}": "x" * 3700 for i in range(9)}),
    ("key with '.'", {"a.b": 1}),
    ("key with a space", {"a b": 1}),
    ("empty key", {"": 1}),
    ("key with a control character", {"a\u0001": 1}),
    ("string over 4 KB", {"s": "x" * 4097}),
    ("integer beyond 2^52", {"big": 2 ** 52}),
    ("not an object", "text"),
    ("an array", [1, 2]),
]


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_invalid_desired_is_400_and_never_written(tenant, iothub_sim, method):
    device = tenant.device()
    iothub_sim.set_desired(device, {"keep": 1})
    twin_before = iothub_sim.twin(device)
    seq = iothub_sim.last_seq()
    call = tenant.user.put_state if method == "PUT" else tenant.user.patch_state
    problems = []
    cases = INVALID_DESIRED + ([("null outside PATCH", {"a": None})] if method == "PUT" else [])
    for name, desired in cases:
        r = call(device, tenant.iid, {"desired": desired})
        if r.status != 400 or not r.error.startswith("malformed request body: "):
            problems.append(f"{name}: {r}")
    for name, raw in [("missing desired", "{}"), ("not JSON", "{\"desired\": {")]:
        r = tenant.service.api.request(method, f"/api/management/v1/iot-manager/devices/{device}"
                                       f"/state/{tenant.iid}", body=raw, token=tenant.user.token,
                                       headers={"Content-Type": "application/json"})
        if r.status != 400 or not r.error.startswith("malformed request body: "):
            problems.append(f"{name}: {r}")
    assert not problems, "\n".join(problems)
    writes = iothub_sim.twin_writes(seq)
    assert writes == [], f"invalid documents reached the hub: {writes}"
    # Checked before any hub call at all, not even the read that precedes a replacement.
    assert iothub_sim.requests(seq) == []
    assert iothub_sim.twin(device) == twin_before


def test_documented_depth_limit_is_accepted(tenant, iothub_sim):
    """Azure's devguide example of the deepest valid object, {"one": {... {"ten": {"property":
    "value"}}}}, which the hub (and the simulator) accept, must not be refused here."""
    device = tenant.device()
    r = tenant.user.put_state(device, tenant.iid, {"desired": nested(10)})
    assert r.status == 200, r
    assert iothub_sim.desired(device) == nested(10)


def test_azure_size_limits_themselves_are_accepted(tenant, iothub_sim):
    """The documented maxima are valid: 4 KB strings, +-2^52, just under 32 KB, depth 9."""
    device = tenant.device()
    for desired in (nested(9), {"s": "x" * 4096, "big": 2 ** 52 - 1, "small": -2 ** 52},
                    {f"k{i}": "x" * 3700 for i in range(8)}):
        r = tenant.user.put_state(device, tenant.iid, {"desired": desired})
        assert r.status == 200, (str(desired)[:80], r)
        assert iothub_sim.desired(device) == desired


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

def _state_calls(user, device, iid):
    return [("GET", lambda: user.state(device, iid)),
            ("PUT", lambda: user.put_state(device, iid, {"desired": {"a": 1}})),
            ("PATCH", lambda: user.patch_state(device, iid, {"desired": {"a": 1}}))]


def test_unknown_device_unlinked_device_and_unknown_integration_are_404(tenant, hub_service,
                                                                         iothub_sim):
    problems = []
    # Unknown device.
    unknown = new_device_id()
    r = tenant.user.states(unknown)
    if r.status != 404 or r.error != "device not found":
        problems.append(f"GET state of an unknown device: {r}")
    for name, call in _state_calls(tenant.user, unknown, tenant.iid):
        r = call()
        if r.status != 404:
            problems.append(f"{name} state/{{iid}} of an unknown device: {r}")

    # A device the hub knows, with a record here, but not linked to this integration.
    unlinked = new_device_id()
    iothub_sim.create_device(unlinked)
    hub_service.link_device(tenant.id, unlinked, str(uuid.uuid4()))
    for name, call in _state_calls(tenant.user, unlinked, tenant.iid):
        r = call()
        if r.status != 404:
            problems.append(f"{name} state/{{iid}} of a device not linked to it: {r}")

    # A linked integration id that does not exist (any more).
    ghost = str(uuid.uuid4())
    device = new_device_id()
    iothub_sim.create_device(device)
    hub_service.link_device(tenant.id, device, ghost)
    for name, call in _state_calls(tenant.user, device, ghost):
        r = call()
        if r.status != 404 or r.error != "integration not found":
            problems.append(f"{name} state/{{unknown integration}}: {r}")

    # Not a UUID.
    for bad in ("not-a-uuid", "1234", tenant.iid + "0"):
        for name, call in _state_calls(tenant.user, device, bad):
            r = call()
            if r.status != 400 or r.error != "integration ID is not a valid UUID":
                problems.append(f"{name} state/{bad}: {r}")
    assert not problems, "\n".join(problems)
    assert iothub_sim.twin_writes() == []
    assert iothub_sim.desired(unlinked) == {} and iothub_sim.desired(device) == {}


def test_identity_missing_in_the_hub_is_404(tenant, hub_service, iothub_sim):
    device = new_device_id()
    hub_service.link_device(tenant.id, device, tenant.iid)  # never created in the hub
    problems = []
    for name, call in _state_calls(tenant.user, device, tenant.iid):
        r = call()
        if r.status != 404 or device not in r.error or "does not exist" not in r.error:
            problems.append(f"{name}: {r}")
    r = tenant.user.states(device)
    if r.status != 404 or device not in r.error:
        problems.append(f"GET state map: {r}")
    assert not problems, "\n".join(problems)
    assert not iothub_sim.device_exists(device), "the identity must not be created by a twin call"


@pytest.mark.parametrize("method,match", [("GET", "GET /twins"),
                                          ("PUT", "GET /twins"),  # PUT reads the twin first
                                          ("PUT", "PUT /twins"),
                                          ("PATCH", "PATCH /twins")])
def test_hub_throttling_is_503_with_retry_after(tenant, iothub_sim, method, match):
    device = tenant.device()
    iothub_sim.set_desired(device, {"keep": 1})
    iothub_sim.fault(match=match, status=429, retry_after=7)
    call = dict(_state_calls(tenant.user, device, tenant.iid))[method]
    r = call()
    assert r.status == 503, r
    assert r.header("Retry-After") == "7", r.headers
    assert "throttl" in r.error, r
    assert iothub_sim.desired(device) == {"keep": 1}
    if match == "GET /twins":
        r = tenant.user.states(device)
        assert r.status == 503 and r.header("Retry-After"), r
    iothub_sim.clear_faults()
    assert call().status == 200


def test_hub_unreachable_is_502(hub_service, iothub_sim):
    # An integration pointing at a closed port on a whitelisted host.
    closed = Tenant(hub_service, iothub_sim, host=f"localhost:{free_port()}")
    device = new_device_id()
    hub_service.link_device(closed.id, device, closed.iid)
    problems = []
    for name, call in _state_calls(closed.user, device, closed.iid):
        r = call()
        if r.status != 502 or closed.iid not in r.error:
            problems.append(f"{name}: {r}")
    r = closed.user.states(device)
    if r.status != 502:
        problems.append(f"GET state map: {r}")

    # A hub that hangs up on every twin read.
    live = Tenant(hub_service, iothub_sim)
    device = live.device()
    seq = iothub_sim.last_seq()
    iothub_sim.fault(match="GET /twins", drop=True)
    for name, call in _state_calls(live.user, device, live.iid)[:2]:
        r = call()
        if r.status != 502:
            problems.append(f"{name} with a dropped connection: {r}")
    assert not problems, "\n".join(problems)
    assert iothub_sim.twin_writes(seq) == []


def test_rejected_credentials_are_502_naming_the_connection_string(hub_service, iothub_sim):
    wrong_key = b64(random_key())
    wrong = Tenant(hub_service, iothub_sim, key=wrong_key)
    device = wrong.device()
    # A policy without ServiceConnect is rejected by the hub the same way.
    reader = Tenant(hub_service, iothub_sim, policy=SIM_READ_ONLY)
    reader_device = reader.device()
    problems = []
    for t, dev in ((wrong, device), (reader, reader_device)):
        for name, call in _state_calls(t.user, dev, t.iid):
            r = call()
            if r.status != 502 or "credentials" not in r.error or \
                    "connection string" not in r.error:
                problems.append(f"{name}: {r}")
        r = t.user.states(dev)
        if r.status != 502:
            problems.append(f"GET state map: {r}")
    assert not problems, "\n".join(problems)
    assert iothub_sim.desired(device) == {} and iothub_sim.desired(reader_device) == {}
    hub_service.assert_secret_absent(wrong_key, SIM_READ_ONLY[1])


def test_delete_device_unlinks_without_touching_the_hub(tenant, iothub_sim):
    device = tenant.device()
    iothub_sim.set_desired(device, {"keep": 1})
    twin_before = iothub_sim.twin(device)
    seq = iothub_sim.last_seq()

    r = tenant.user.delete_device(device)
    assert r.status == 204, r
    assert r.body == b""
    r = tenant.user.states(device)
    assert r.status == 404 and r.error == "device not found", r
    assert tenant.user.state(device, tenant.iid).status == 404
    r = tenant.user.delete_device(device)
    assert r.status == 404 and r.error == "device not found", r

    assert iothub_sim.requests(seq) == []  # the hub identity is untouched
    assert iothub_sim.twin(device) == twin_before
    # The integration is no longer in use: it can be removed now.
    assert tenant.user.delete(tenant.iid, {}).status == 204


def test_tenant_isolation(hub_service, iothub_sim):
    alice = Tenant(hub_service, iothub_sim)
    device = alice.device()
    iothub_sim.set_desired(device, {"owner": "alice"})
    twin_before = iothub_sim.twin(device)
    seq = iothub_sim.last_seq()

    bob = Tenant(hub_service, iothub_sim)
    problems = []
    for iid in (alice.iid, bob.iid, str(uuid.uuid4())):
        for name, call in _state_calls(bob.user, device, iid):
            r = call()
            if r.status != 404:
                problems.append(f"bob {name} state/{iid}: {r}")
    r = bob.user.states(device)
    if r.status != 404 or r.error != "device not found":
        problems.append(f"bob GET state map: {r}")
    r = bob.user.get(alice.iid)
    if r.status != 404:
        problems.append(f"bob GET alice's integration: {r}")
    r = bob.user.delete_device(device)
    if r.status != 404:
        problems.append(f"bob DELETE alice's device: {r}")
    # Even a device record of his own that names alice's integration id (which the API never
    # creates) does not lead to alice's hub: integrations are looked up within the tenant.
    bobs = new_device_id()
    iothub_sim.create_device(bobs)
    hub_service.link_device(bob.id, bobs, alice.iid)
    for name, call in _state_calls(bob.user, bobs, alice.iid):
        r = call()
        if r.status != 404 or r.error != "integration not found":
            problems.append(f"bob {name} state/alice's iid via his own record: {r}")
    r = bob.user.states(bobs)
    if r.status != 200 or r.json() != {}:
        problems.append(f"bob GET state map of his record naming alice's iid: {r}")
    assert not problems, "\n".join(problems)

    assert [e for e in iothub_sim.requests(seq) if "/twins/" in e["path"]] == []
    assert iothub_sim.twin(device) == twin_before
    r = alice.user.states(device)
    assert r.status == 200 and r.json()[alice.iid]["desired"] == {"owner": "alice"}, r
