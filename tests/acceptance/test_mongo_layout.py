"""MongoDB layout exactly as Mender's iot-manager (contract §2), and Mender's data read by ours."""

import datetime
import re
import uuid

import pytest

from conftest import (HAVE_CRYPTOGRAPHY, MENDER_VECTOR_BLOB, OTHER_AES_KEY, TEST_AES_KEY, Binary,
                      conn_str, masked_conn_str, mender_decrypt, mender_encrypt, new_tenant, random_key,
                      sas_integration)

pytestmark = pytest.mark.mongo_only

LEGACY = "AES_256_CFB_HMAC_SHA512"
MENDER_HUB = "mender-test-hub.azure-devices.net"
MIGRATION_ERROR = re.compile(r"failed to apply migrations: db needs migration: \S+ has version "
                             r"1\.1\.1, needs version 1\.2\.0")


def _uuid_bin(value):
    return Binary(uuid.UUID(str(value)).bytes, 4)


def _assert_uuid4_binary(value, expected=None):
    assert isinstance(value, Binary) and value.subtype == 4, f"not a subtype-4 UUID: {value!r}"
    assert len(value) == 16
    if expected is not None:
        assert bytes(value) == uuid.UUID(expected).bytes


def test_integration_document_layout(service):
    tenant = new_tenant()
    ui = service.user(tenant)
    key = random_key()
    iid = ui.create_hub(key, description="lab hub")

    docs = list(service.db.integrations.find({"tenant_id": tenant}))
    assert len(docs) == 1
    doc = docs[0]
    assert set(doc) == {"_id", "provider", "credentials", "description", "tenant_id"}, doc
    _assert_uuid4_binary(doc["_id"], iid)
    assert doc["provider"] == "iot-hub"
    assert doc["description"] == "lab hub"
    assert doc["tenant_id"] == tenant
    creds = doc["credentials"]
    assert set(creds) == {"type", "connection_string"}, creds
    assert creds["type"] == "sas"
    cs = creds["connection_string"]
    assert set(cs) == {"hostname", "name", "access_key"}, cs
    assert cs["hostname"] == "localhost:8443"
    assert cs["name"] == "iothubowner"
    secret = cs["access_key"]
    assert set(secret) == {"algorithm", "key_id", "data"}, secret
    assert secret["algorithm"] == "AES_256_GCM"
    assert isinstance(secret["key_id"], int) and not isinstance(secret["key_id"], bool)
    assert isinstance(secret["data"], bytes), "data must be BinData subtype 0"
    assert len(secret["data"]) == 12 + len(key) + 16, "nonce(12) || ciphertext || tag(16)"
    assert key not in secret["data"]

    # No description -> no field (omitempty).
    other = service.user(new_tenant())
    other.create_hub(random_key())
    doc = service.db.integrations.find_one({"tenant_id": other.tenant})
    assert "description" not in doc

    # The same key in two tenants: random nonces, different ciphertexts.
    third = service.user(new_tenant())
    third.create_hub(key)
    data_a = service.db.integrations.find_one({"tenant_id": tenant})["credentials"][
        "connection_string"]["access_key"]["data"]
    data_b = service.db.integrations.find_one({"tenant_id": third.tenant})["credentials"][
        "connection_string"]["access_key"]["data"]
    assert data_a[:12] != data_b[:12], "nonces repeat"
    assert data_a[12:] != data_b[12:]


def test_mender_secrets_format(service_factory):
    svc = service_factory(env={"IOT_MANAGER_SECRETS_FORMAT": "mender"})
    ui = svc.user(new_tenant())
    key = random_key()
    iid = ui.create_hub(key)

    def stored():
        doc = svc.db.integrations.find_one({"tenant_id": ui.tenant})
        secret = doc["credentials"]["connection_string"]["access_key"]
        assert set(secret) == {"algorithm", "data"}, secret
        assert secret["algorithm"] == LEGACY
        data = secret["data"]
        assert isinstance(data, bytes)
        assert data[0] == 0x01 and len(data) >= 81
        assert len(data) == 1 + 16 + len(key) + 64
        return data

    assert mender_decrypt(TEST_AES_KEY, stored()) == key

    # The masked string sent back keeps exactly the stored key.
    shown = ui.listed()[0]["credentials"]["connection_string"]
    assert ui.set_credentials(iid, {"type": "sas", "connection_string": shown}).status == 204
    assert mender_decrypt(TEST_AES_KEY, stored()) == key

    key2 = random_key()
    r = ui.set_credentials(iid, {"type": "sas", "connection_string": conn_str(key2)})
    assert r.status == 204, r
    assert mender_decrypt(TEST_AES_KEY, stored()) == key2


def test_indexes_and_migration_info(service):
    db = service.db
    names = set(db.list_collection_names())
    assert {"integrations", "devices", "log", "migration_info"} <= names, names

    def indexes(coll):
        return {ix["name"]: ix for ix in db[coll].list_indexes()}

    ix = indexes("integrations")
    assert list(ix["tenant_id_provider__id"]["key"].items()) == [("tenant_id", 1), ("provider", 1),
                                                                  ("_id", 1)]
    assert list(ix["integration_one_per_tenant"]["key"].items()) == [("tenant_id", 1)]
    assert ix["integration_one_per_tenant"].get("unique") is True
    ix = indexes("devices")
    assert list(ix["tenant_id_integration_ids__id"]["key"].items()) == [
        ("tenant_id", 1), ("integration_ids", 1), ("_id", 1)]
    ix = indexes("log")
    assert list(ix["tenant_id__id"]["key"].items()) == [("tenant_id", 1), ("event_ts", -1)]
    if "log_TTL" in ix:
        assert list(ix["log_TTL"]["key"].items()) == [("expire_ts", 1)]
        assert ix["log_TTL"]["expireAfterSeconds"] == 0
    else:
        assert service.mongo.is_ferretdb(), "log_TTL may only be missing where TTL is unsupported"

    versions = []
    for doc in db.migration_info.find():
        v = doc["version"]
        assert all(isinstance(v[k], int) for k in ("major", "minor", "patch")), doc
        assert isinstance(doc["timestamp"], datetime.datetime), doc
        versions.append((v["major"], v["minor"], v["patch"]))
    assert max(versions) == (1, 2, 0), versions

    # The unique index really holds: a second integration of the tenant cannot be inserted.
    tenant = new_tenant()
    service.user(tenant).create_hub(random_key())
    from pymongo.errors import DuplicateKeyError
    with pytest.raises(DuplicateKeyError):
        db.integrations.insert_one({"_id": _uuid_bin(uuid.uuid4()), "provider": "iot-hub",
                                    "tenant_id": tenant, "credentials": {"type": "sas"}})


def _mender_hub_doc(tenant, data, name="iothubowner", device_id=None, iid=None):
    cs = {"hostname": MENDER_HUB, "access_key": {"algorithm": LEGACY, "data": data}}
    if name:
        cs["name"] = name
    if device_id:
        cs["device_id"] = device_id
    return {"_id": _uuid_bin(iid or uuid.uuid4()), "provider": "iot-hub",
            "credentials": {"type": "sas", "connection_string": cs}, "tenant_id": tenant}


def _plain_key():
    key = random_key()
    return (b"\x02" + key[1:]) if key[0] == 1 else key


def test_reads_data_written_by_mender(service):
    db = service.db
    cases = []  # (tenant, doc, expected listing)

    def add(doc, expected_cs=None, expected_creds=None, provider="iot-hub"):
        db.integrations.insert_one(doc)
        iid = str(uuid.UUID(bytes=bytes(doc["_id"])))
        creds = expected_creds or {"type": "sas", "connection_string": expected_cs}
        cases.append((doc["tenant_id"], {"id": iid, "provider": provider, "credentials": creds}))

    # Mender's fixed-IV vector (plaintext "secret") under the acceptance key.
    add(_mender_hub_doc(new_tenant(), MENDER_VECTOR_BLOB),
        f"HostName={MENDER_HUB};SharedAccessKeyName=iothubowner;SharedAccessKey=c2Vj...<omitted>")
    # A random key encrypted as Mender does.
    if HAVE_CRYPTOGRAPHY:
        key = random_key()
        add(_mender_hub_doc(new_tenant(), mender_encrypt(TEST_AES_KEY, key)),
            masked_conn_str(key, host=MENDER_HUB))
    # Mender without an encryption key: plaintext under the same label.
    key = _plain_key()
    add(_mender_hub_doc(new_tenant(), key), masked_conn_str(key, host=MENDER_HUB))
    # A legacy device connection string (DeviceId, no SharedAccessKeyName).
    key = _plain_key()
    add(_mender_hub_doc(new_tenant(), key, name=None, device_id="7b478313-de33-4735-bf00-0ebc31851faf"),
        masked_conn_str(key, host=MENDER_HUB, name=None,
                        device_id="7b478313-de33-4735-bf00-0ebc31851faf"))
    # Providers not served yet are listed, secrets masked (note Mender's bson tag typo for AWS).
    add({"_id": _uuid_bin(uuid.uuid4()), "provider": "webhook", "tenant_id": new_tenant(),
         "description": "hooks",
         "credentials": {"type": "http", "http": {"url": "https://hooks.example.com/mender",
                                                  "secret": {"algorithm": LEGACY,
                                                             "data": bytes.fromhex("deadbeef")}}}},
        expected_creds={"type": "http", "http": {"url": "https://hooks.example.com/mender",
                                                 "secret": "<omitted>"}}, provider="webhook")
    cases[-1][1]["description"] = "hooks"
    add({"_id": _uuid_bin(uuid.uuid4()), "provider": "iot-core", "tenant_id": new_tenant(),
         "credentials": {"type": "aws", "aws": {
             "access_key_id": "AKIAEXAMPLE", "region": "eu-west-1",
             "secret_access_key": {"algorithm": LEGACY, "data": b"aws-secret-access-key"},
             "device_policydevice_policy_name": "mender-policy"}}},
        expected_creds={"type": "aws", "aws": {"access_key_id": "AKIAEXAMPLE",
                                               "secret_access_key": "<omitted>",
                                               "region": "eu-west-1",
                                               "device_policy_name": "mender-policy"}},
        provider="iot-core")

    before = sorted(repr(sorted(d.items())) for d in db.integrations.find())
    problems = []
    for tenant, expected in cases:
        ui = service.user(tenant)
        r = ui.list()
        if r.status != 200 or r.json() != [expected]:
            problems.append(f"list {expected['provider']}: {r.status} {r.body[:300]!r}")
            continue
        r = ui.get(expected["id"])
        if r.status != 200 or r.json() != expected:
            problems.append(f"get {expected['provider']}: {r.status} {r.body[:300]!r}")
    assert not problems, "\n".join(problems)
    assert sorted(repr(sorted(d.items())) for d in db.integrations.find()) == before, \
        "listing changed stored documents"
    service.assert_secret_absent("aws-secret-access-key")


def test_mender_blob_under_fallback_key(service_factory):
    svc = service_factory(env={"IOT_MANAGER_AES_ENCRYPTION_KEY": OTHER_AES_KEY,
                               "IOT_MANAGER_AES_ENCRYPTION_FALLBACK_KEY": TEST_AES_KEY})
    tenant = new_tenant()
    svc.db.integrations.insert_one(_mender_hub_doc(tenant, MENDER_VECTOR_BLOB))
    listed = svc.user(tenant).listed()
    assert listed[0]["credentials"]["connection_string"].endswith("SharedAccessKey=c2Vj...<omitted>")

    svc.restart(env={"IOT_MANAGER_AES_ENCRYPTION_FALLBACK_KEY": None})
    r = svc.user(tenant).list()
    assert r.status == 500, f"a blob no key opens must be an error, not plaintext: {r}"


def test_corrupt_mender_blob_is_an_error_for_its_tenant_only(service):
    bad, good = new_tenant(), new_tenant()
    blob = bytearray(MENDER_VECTOR_BLOB)
    blob[20] ^= 0xFF
    service.db.integrations.insert_one(_mender_hub_doc(bad, bytes(blob)))
    service.db.integrations.insert_one(_mender_hub_doc(good, MENDER_VECTOR_BLOB))
    r = service.user(bad).list()
    assert r.status == 500, r
    assert service.user(good).list().status == 200


def _make_outdated(db):
    """The database as Mender's iot-manager 1.3 leaves it: migrations up to 1.1.1, data present."""
    now = datetime.datetime.utcnow()
    for major, minor, patch in [(1, 0, 0), (1, 1, 0), (1, 1, 1)]:
        db.migration_info.insert_one({"version": {"major": major, "minor": minor, "patch": patch},
                                      "timestamp": now})
    db.integrations.create_index([("tenant_id", 1), ("provider", 1), ("_id", 1)],
                                 name="tenant_id_provider__id")
    db.devices.create_index([("tenant_id", 1), ("integration_ids", 1), ("_id", 1)],
                            name="tenant_id_integration_ids__id")
    db.log.create_index([("tenant_id", 1), ("event_ts", -1)], name="tenant_id__id")
    tenant = new_tenant()
    key = _plain_key()
    doc = _mender_hub_doc(tenant, key)
    db.integrations.insert_one(doc)
    return tenant, key, str(uuid.UUID(bytes=bytes(doc["_id"])))


def test_outdated_database_refused_then_migrated(service_factory):
    svc = service_factory(start=False)
    tenant, key, iid = _make_outdated(svc.db)

    svc.start(wait=False)
    code = svc.wait_exit(15)
    assert code != 0
    assert MIGRATION_ERROR.search(svc.log_text()), svc.log_tail()

    out = svc.cli("migrate")
    assert out.returncode == 0, out.stderr[-3000:]
    versions = [(d["version"]["major"], d["version"]["minor"], d["version"]["patch"])
                for d in svc.db.migration_info.find()]
    assert max(versions) == (1, 2, 0)
    ix = {i["name"]: i for i in svc.db.integrations.list_indexes()}
    assert ix["integration_one_per_tenant"].get("unique") is True

    svc.start()
    listed = svc.user(tenant).listed()
    assert listed == [{"id": iid, "provider": "iot-hub", "credentials": {
        "type": "sas", "connection_string": masked_conn_str(key, host=MENDER_HUB)}}]


def test_outdated_database_with_automigrate(service_factory):
    svc = service_factory(start=False)
    tenant, key, iid = _make_outdated(svc.db)
    svc.start(args=["server", "--automigrate"])
    assert [i["id"] for i in svc.user(tenant).listed()] == [iid]
    ix = {i["name"]: i for i in svc.db.integrations.list_indexes()}
    assert ix["integration_one_per_tenant"].get("unique") is True
    r = svc.user(tenant).create(sas_integration(random_key()))
    assert r.status == 409 and r.error == "integration already exists", r


def test_default_database_name_is_iot_manager(service_factory, mongo_server):
    client = mongo_server.client()
    client.drop_database("iot_manager")
    svc = None
    try:
        svc = service_factory(env={"IOT_MANAGER_MONGO_DBNAME": None})
        tenant = new_tenant()
        iid = svc.user(tenant).create_hub(random_key())
        doc = client["iot_manager"].integrations.find_one({"tenant_id": tenant})
        assert doc is not None, "not stored in database iot_manager"
        _assert_uuid4_binary(doc["_id"], iid)
    finally:
        if svc is not None:
            svc.kill()
        client.drop_database("iot_manager")


def _webhook_doc(tenant, secret=b"\xde\xad\xbe\xef"):
    return {"_id": _uuid_bin(uuid.uuid4()), "provider": "webhook", "tenant_id": tenant,
            "credentials": {"type": "http", "http": {"url": "https://hooks.example.com/mender",
                                                     "secret": {"algorithm": LEGACY,
                                                                "data": secret}}}}


def test_legacy_webhook_integration_rules(service):
    """A Mender webhook integration counts as the tenant's one integration and is not blocked by devices."""
    tenant = new_tenant()
    doc = _webhook_doc(tenant)
    service.db.integrations.insert_one(doc)
    iid = str(uuid.UUID(bytes=bytes(doc["_id"])))
    ui = service.user(tenant)

    r = ui.create(sas_integration(random_key()))
    assert r.status == 409 and r.error == "integration already exists", r

    service.link_device(tenant, "device-1", iid)
    r = ui.delete(iid, {})
    assert r.status == 204, r
    assert ui.listed() == []


def _all_secrets(db):
    out = {}
    for doc in db.integrations.find():
        creds = doc["credentials"]
        if creds["type"] == "sas":
            out[doc["tenant_id"]] = creds["connection_string"]["access_key"]
        elif creds["type"] == "http":
            out[doc["tenant_id"]] = creds["http"]["secret"]
        else:
            out[doc["tenant_id"]] = creds["aws"]["secret_access_key"]
    return out


@pytest.mark.parametrize("fmt", ["aes-256-gcm", "mender"])
def test_reencrypt_covers_every_tenant_and_provider(service_factory, fmt):
    svc = service_factory(env={"IOT_MANAGER_SECRETS_FORMAT": fmt})
    db = svc.db
    hub_tenant, plain_tenant, hook_tenant, aws_tenant = (new_tenant() for _ in range(4))
    plain_key = _plain_key()
    db.integrations.insert_one(_mender_hub_doc(hub_tenant, MENDER_VECTOR_BLOB))
    db.integrations.insert_one(_mender_hub_doc(plain_tenant, plain_key))
    db.integrations.insert_one(_webhook_doc(hook_tenant))
    db.integrations.insert_one(
        {"_id": _uuid_bin(uuid.uuid4()), "provider": "iot-core", "tenant_id": aws_tenant,
         "credentials": {"type": "aws", "aws": {
             "access_key_id": "AKIAEXAMPLE", "region": "eu-west-1",
             "secret_access_key": {"algorithm": LEGACY, "data": b"aws-secret-access-key"},
             "device_policydevice_policy_name": "mender-policy"}}})
    api_tenant, api_key = new_tenant(), random_key()
    svc.user(api_tenant).create_hub(api_key)
    listings = {t: svc.user(t).listed() for t in (hub_tenant, plain_tenant, hook_tenant,
                                                   aws_tenant, api_tenant)}
    assert svc.stop() == 0

    out = svc.cli("re-encrypt", env={"IOT_MANAGER_AES_ENCRYPTION_KEY": OTHER_AES_KEY,
                                      "IOT_MANAGER_AES_ENCRYPTION_FALLBACK_KEY": TEST_AES_KEY})
    assert out.returncode == 0, out.stderr[-3000:]

    secrets = _all_secrets(db)
    expected_plain = {hub_tenant: b"secret", plain_tenant: plain_key,
                      hook_tenant: b"\xde\xad\xbe\xef", aws_tenant: b"aws-secret-access-key",
                      api_tenant: api_key}
    for tenant, plain in expected_plain.items():
        secret = secrets[tenant]
        if fmt == "mender":
            assert secret["algorithm"] == LEGACY, secret
            assert mender_decrypt(OTHER_AES_KEY, secret["data"]) == plain
        else:
            assert secret["algorithm"] == "AES_256_GCM", (tenant, secret)
            assert plain not in secret["data"]

    svc.start(env={"IOT_MANAGER_AES_ENCRYPTION_KEY": OTHER_AES_KEY})
    for tenant, listed in listings.items():
        assert svc.user(tenant).listed() == listed
