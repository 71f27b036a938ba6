"""The Integrations API end to end, the way the Mender UI uses it, on both stores."""

import re
import threading
import uuid

from conftest import (HUB_HOST, MGMT, b64, conn_str, masked_conn_str, masked_key, new_tenant,
                      random_key, sas_integration)

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def test_ui_flow(service):
    ui = service.user(new_tenant())
    assert ui.listed() == []

    key = random_key()
    r = ui.create(sas_integration(key))
    assert r.status == 201, r
    assert r.body == b""
    location = r.header("Location")
    assert re.fullmatch(f"{MGMT}/integrations/{UUID_RE}", location or ""), location
    iid = location.rsplit("/", 1)[1]
    assert uuid.UUID(iid).version == 4

    expected = {"id": iid, "provider": "iot-hub",
                "credentials": {"type": "sas", "connection_string": masked_conn_str(key)}}
    assert ui.listed() == [expected]
    assert ui.get(iid).json() == expected
    # Query parameters the OpenAPI documents are accepted (and ignored); ids in any case.
    r = service.api.get(f"{MGMT}/integrations?page=1&per_page=20", token=ui.token)
    assert r.status == 200 and r.json() == [expected], r
    r = ui.get(iid.upper())
    assert r.status == 200 and r.json() == expected, r

    # The UI offers "Add" only without an integration; the server enforces one per tenant.
    r = ui.create(sas_integration(random_key()))
    assert r.status == 409, r
    assert r.error == "integration already exists"
    assert ui.listed() == [expected]

    # Edit: the UI sends the credentials object only.
    key2 = random_key()
    r = ui.set_credentials(iid, {"type": "sas", "connection_string": conn_str(key2)})
    assert r.status == 204, r
    assert r.body == b""
    shown = ui.listed()[0]["credentials"]["connection_string"]
    assert shown == masked_conn_str(key2)

    # Saving without retyping sends the masked string back: the stored key is kept.
    r = ui.set_credentials(iid, {"type": "sas", "connection_string": shown})
    assert r.status == 204, r
    assert ui.listed()[0]["credentials"]["connection_string"] == masked_conn_str(key2)

    # Delete: the UI sends a {} body.
    r = ui.delete(iid, {})
    assert r.status == 204, r
    assert r.body == b""
    assert ui.listed() == []
    r = ui.get(iid)
    assert r.status == 404 and r.error == "integration not found", r

    # A new integration gets a new id.
    assert ui.create_hub(random_key()) != iid
    service.assert_secret_absent(b64(key), b64(key2), conn_str(key), conn_str(key2))


def test_masked_key_with_other_fields_changed_keeps_the_key(service):
    ui = service.user(new_tenant())
    key = random_key()
    iid = ui.create_hub(key)
    cs = f"HostName={HUB_HOST};SharedAccessKeyName=registryReadWrite;SharedAccessKey={masked_key(key)}"
    r = ui.set_credentials(iid, {"type": "sas", "connection_string": cs})
    assert r.status == 204, r
    assert ui.listed()[0]["credentials"]["connection_string"] == masked_conn_str(
        key, name="registryReadWrite")


def test_a_mask_that_is_not_ours_is_rejected(service):
    ui = service.user(new_tenant())
    key = b"\x00\x00\x00" + random_key(29)
    iid = ui.create_hub(key)
    before = ui.listed()
    cs = conn_str(b64(b"\xff\xff\xff") + "...<omitted>")
    r = ui.set_credentials(iid, {"type": "sas", "connection_string": cs})
    assert r.status == 400, r
    assert r.error.startswith("malformed request body: "), r
    assert ui.listed() == before


def test_credentials_type_must_match_the_provider(service):
    ui = service.user(new_tenant())
    iid = ui.create_hub(random_key())
    before = service.snapshot()
    bodies = [{"type": "aws", "aws": {"access_key_id": "AKIAEXAMPLE", "secret_access_key": "s3cr3t",
                                      "region": "eu-west-1", "device_policy_name": "policy"}},
              {"type": "http", "http": {"url": "https://hooks.example.com/mender"}}]
    for body in bodies:
        r = ui.set_credentials(iid, body)
        assert r.status == 400, (body["type"], r)
    assert service.snapshot() == before
    service.assert_secret_absent("s3cr3t")


def test_unknown_ids_are_404(service):
    ui = service.user(new_tenant())
    unknown = str(uuid.uuid4())
    for r in (ui.get(unknown), ui.delete(unknown, {}),
              ui.set_credentials(unknown, sas_integration(random_key())["credentials"])):
        assert r.status == 404 and r.error == "integration not found", r

    # Unlike Mender's service, GET by id looks the id up even when the tenant has one.
    ui.create_hub(random_key())
    for r in (ui.get(unknown), ui.delete(unknown, {}),
              ui.set_credentials(unknown, sas_integration(random_key())["credentials"])):
        assert r.status == 404 and r.error == "integration not found", r
    assert len(ui.listed()) == 1


def test_delete_is_refused_while_devices_are_linked(service):
    tenant = new_tenant()
    ui = service.user(tenant)
    iid = ui.create_hub(random_key())
    listed = ui.listed()

    # A device linked to some other integration id does not block the removal check.
    service.link_device(tenant, "device-elsewhere", str(uuid.uuid4()))
    service.link_device(tenant, "device-1", iid)
    r = ui.delete(iid, {})
    assert r.status == 409, r
    assert r.error == "cannot remove integration in use by devices"
    assert ui.listed() == listed
    assert ui.get(iid).status == 200

    service.unlink_device(tenant, "device-1")
    r = ui.delete(iid, {})
    assert r.status == 204, r
    assert ui.listed() == []


def test_delete_without_body(service):
    ui = service.user(new_tenant())
    iid = ui.create_hub(random_key())
    r = ui.delete(iid)
    assert r.status == 204, r
    assert ui.listed() == []


def test_tenant_isolation(service):
    alice, bob = service.user(new_tenant()), service.user(new_tenant())
    key_a = random_key()
    iid_a = alice.create_hub(key_a)
    listed_a = alice.listed()

    assert bob.listed() == []
    assert bob.get(iid_a).status == 404
    r = bob.set_credentials(iid_a, sas_integration(random_key())["credentials"])
    assert r.status == 404, r
    r = bob.delete(iid_a, {})
    assert r.status == 404, r
    assert alice.listed() == listed_a

    # One integration per tenant, not per installation.
    key_b = random_key()
    iid_b = bob.create_hub(key_b)
    assert iid_b != iid_a
    assert [i["id"] for i in bob.listed()] == [iid_b]
    assert bob.listed()[0]["credentials"]["connection_string"] == masked_conn_str(key_b)
    assert alice.listed() == listed_a
    assert alice.get(iid_b).status == 404

    # The open-source tenant ("": no mender.tenant claim) is a tenant of its own.
    oss = service.user("")
    assert oss.listed() == []
    iid_o = oss.create_hub(random_key())
    assert [i["id"] for i in oss.listed()] == [iid_o]
    assert alice.listed() == listed_a


def test_description_is_kept(service):
    ui = service.user(new_tenant())
    description = "Lab hub — building 2 ✓"
    iid = ui.create_hub(random_key(), description=description)
    item = ui.get(iid).json()
    assert item["description"] == description
    assert ui.listed() == [item]

    # An empty description is not stored, and not listed (Mender: omitempty).
    empty = service.user(new_tenant())
    iid = empty.create_hub(random_key(), description="")
    assert "description" not in empty.get(iid).json()

    # Exactly 1024 bytes (512 two-byte characters) is the maximum.
    other = service.user(new_tenant())
    long_description = "é" * 512
    iid = other.create_hub(random_key(), description=long_description)
    assert other.get(iid).json()["description"] == long_description


def test_connection_string_is_listed_in_canonical_order(service):
    ui = service.user(new_tenant())
    key = random_key()
    cs = f"SharedAccessKey={b64(key)};SharedAccessKeyName=service;HostName={HUB_HOST}"
    r = ui.create(sas_integration(cs=cs))
    assert r.status == 201, r
    assert ui.listed()[0]["credentials"]["connection_string"] == masked_conn_str(key, name="service")


def test_azure_devices_hostname_and_duplicate_keys(service):
    """A real hub hostname pattern is trusted; with duplicate keys the last one wins."""
    ui = service.user(new_tenant())
    key = random_key()
    cs = f"HostName=evil.example.com;HostName={HUB_HOST};SharedAccessKeyName=iothubowner;" \
         f"SharedAccessKey={b64(key)}"
    r = ui.create(sas_integration(cs=cs))
    assert r.status == 201, r
    assert ui.listed()[0]["credentials"]["connection_string"] == masked_conn_str(key)


def test_short_keys_never_crash(service):
    for n in (1, 2, 3):
        ui = service.user(new_tenant())
        key = random_key(n)
        r = ui.create(sas_integration(key))
        assert r.status in (201, 400), r
        if r.status == 201:
            shown = ui.listed()[0]["credentials"]["connection_string"]
            assert shown.startswith(f"HostName={HUB_HOST};") and shown.endswith("...<omitted>")
    assert service.proc.poll() is None


def test_concurrent_creates_store_exactly_one(service):
    ui = service.user(new_tenant())
    results = []
    barrier = threading.Barrier(6)

    def create():
        barrier.wait(5)
        results.append(ui.create(sas_integration(random_key())).status)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(results) == [201] + [409] * 5, results
    assert len(ui.listed()) == 1
