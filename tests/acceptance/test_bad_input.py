"""Bad input gets a clear 4xx with Mender's text where the contract gives one, and nothing stored."""

import json
import uuid

from conftest import HUB_HOST, b64, conn_str, new_tenant, random_key, sas_integration

PREFIX = "malformed request body: "
KEY = random_key()
KEY_B64 = b64(KEY)
AWS = {"access_key_id": "AKIAEXAMPLE", "secret_access_key": "aws-s3cr3t", "region": "eu-west-1",
       "device_policy_name": "policy"}


def _hub(cs):
    return sas_integration(cs=cs)


def _create_cases():
    """(name, body: str for raw / object for JSON, mode, expected text)."""
    return [
        # JSON shape
        ("truncated JSON", '{"provider": "iot-hub",', "prefix", PREFIX),
        ("garbage", "not json at all", "prefix", PREFIX),
        ("array", "[]", "prefix", PREFIX),
        ("string", '"iot-hub"', "prefix", PREFIX),
        ("number", "42", "prefix", PREFIX),
        ("null", "null", "prefix", PREFIX),
        ("deeply nested", "[" * 100000 + "]" * 100000, "prefix", PREFIX),
        ("not UTF-8", b'{"provider": "iot-hub\xff\xfe", "credentials": {}}', "prefix", PREFIX),
        ("empty body", "", "exact", PREFIX + "EOF"),
        ("provider not a string", {"provider": 1, "credentials": _hub(conn_str(KEY))["credentials"]},
         "prefix", PREFIX),
        ("credentials not an object", {"provider": "iot-hub", "credentials": "sas"}, "prefix", PREFIX),
        ("connection_string not a string",
         {"provider": "iot-hub", "credentials": {"type": "sas", "connection_string": 123}},
         "prefix", PREFIX),
        ("description not a string", dict(_hub(conn_str(KEY)), description=5), "prefix", PREFIX),
        # model rules
        ("no provider", {"credentials": _hub(conn_str(KEY))["credentials"]}, "contains",
         "provider: cannot be blank"),
        # Mender's ozzo rules: an absent credentials struct is validated as an empty one, and the
        # provider's compatibility rule may report before its own enum check.
        ("no credentials", {"provider": "iot-hub"}, "contains",
         ["credentials: cannot be blank", "credentials: (type: cannot be blank.)"]),
        ("unknown provider", sas_integration(KEY, provider="azure"), "contains",
         ["provider: must be a valid value",
          "provider: 'azure' incompatible with credential type 'sas'"]),
        ("unknown credential type", sas_integration(KEY, ctype="x509"), "contains",
         "type: must be a valid value"),
        ("credential type of another provider",
         {"provider": "iot-hub", "credentials": {"type": "aws", "aws": AWS}}, "contains",
         "provider: 'iot-hub' incompatible with credential type 'aws'"),
        ("sas without connection string", {"provider": "iot-hub", "credentials": {"type": "sas"}},
         "contains", "connection_string: cannot be blank"),
        ("description over 1024 bytes", sas_integration(KEY, description="d" * 1025), "contains",
         "description: the length must be no more than 1024"),
        ("description over 1024 bytes, 513 characters", sas_integration(KEY, description="é" * 513),
         "contains", "description: the length must be no more than 1024"),
        # connection-string rules (contract §3.1)
        ("empty connection string", _hub(""), "prefix", PREFIX),
        ("part without =", _hub(conn_str(KEY) + ";bogus"), "exact",
         PREFIX + "invalid connectionstring format"),
        ("trailing ;", _hub(conn_str(KEY) + ";"), "exact", PREFIX + "invalid connectionstring format"),
        ("unknown key", _hub(conn_str(KEY) + ";Foo=bar"), "exact",
         PREFIX + "invalid connection string key: Foo"),
        ("keys are case-sensitive",
         _hub(f"hostname={HUB_HOST};SharedAccessKeyName=iothubowner;SharedAccessKey={KEY_B64}"),
         "exact", PREFIX + "invalid connection string key: hostname"),
        ("illegal base64 character", _hub(conn_str("c2Vj!mV0")), "exact",
         PREFIX + "shared access key format: illegal base64 data at input byte 4"),
        ("unpadded base64", _hub(conn_str("c2VjcmV0MQ")), "exact",
         PREFIX + "shared access key format: illegal base64 data at input byte 8"),
        ("empty key", _hub(conn_str("")), "exact",
         PREFIX + "connection string invalid: Key: cannot be blank."),
        ("untrusted host", _hub(conn_str(KEY, host="evil.example.com")), "exact",
         PREFIX + "connection string invalid: HostName: hostname does not refer to a trusted domain."),
        ("host one label too deep", _hub(conn_str(KEY, host="a.b.azure-devices.net")), "exact",
         PREFIX + "connection string invalid: HostName: hostname does not refer to a trusted domain."),
        ("unresolvable host", _hub(conn_str(KEY, host="hub.nonexistent.invalid")), "exact",
         PREFIX + "connection string invalid: HostName: failed to lookup host with name "
                  "'hub.nonexistent.invalid'."),
        ("no HostName", _hub(conn_str(KEY, host=None)), "contains", "HostName: cannot be blank"),
        ("device connection string",
         _hub(f"HostName={HUB_HOST};DeviceId=device-1;SharedAccessKey={KEY_B64}"), "contains",
         "connection string invalid: SharedAccessKeyName is required: a device connection string "
         "cannot manage the hub's registry"),
        ("neither DeviceId nor SharedAccessKeyName", _hub(conn_str(KEY, name=None)), "prefix",
         PREFIX + "connection string invalid: "),
        ("over 4096 characters", _hub(conn_str(random_key(3100))), "contains",
         "connection string invalid: connection string can be no longer than 4096 characters"),
    ]


def _matches(error, mode, text):
    if isinstance(text, list):
        return any(_matches(error, mode, t) for t in text)
    if mode == "exact":
        return error == text
    if mode == "prefix":
        return error.startswith(text)
    return error.startswith(PREFIX) and text in error


def _send(user, body):
    if isinstance(body, (str, bytes)):
        return user.create_raw(body)
    return user.create(body)


def test_bad_create_bodies(service):
    ui = service.user(new_tenant())
    problems = []
    for name, body, mode, text in _create_cases():
        r = _send(ui, body)
        if r.status != 400:
            problems.append(f"{name}: status {r.status} {r.body[:300]!r}")
        elif not _matches(r.error, mode, text):
            problems.append(f"{name}: error {r.error!r}, expected {mode} {text!r}")
    assert not problems, "\n".join(problems)
    assert ui.listed() == []
    service.assert_nothing_stored()
    service.assert_secret_absent(KEY_B64, "aws-s3cr3t")
    assert service.proc.poll() is None


def test_bad_credentials_bodies_change_nothing(service):
    ui = service.user(new_tenant())
    iid = ui.create_hub(KEY)
    listed = ui.listed()
    before = service.snapshot()
    cases = [("truncated JSON", '{"type": "sas",', "prefix", PREFIX),
             ("array", "[]", "prefix", PREFIX),
             ("empty body", "", "exact", PREFIX + "EOF"),
             ("no type", {"connection_string": conn_str(random_key())}, "prefix", PREFIX),
             ("unknown type", {"type": "x509", "connection_string": conn_str(random_key())},
              "contains", "type: must be a valid value"),
             ("sas without connection string", {"type": "sas"}, "contains",
              "connection_string: cannot be blank"),
             ("empty connection string", {"type": "sas", "connection_string": ""}, "prefix", PREFIX)]
    cases += [(name, body["credentials"], mode, text) for name, body, mode, text in _create_cases()
              if isinstance(body, dict) and "connection_string" in body.get("credentials", {})
              and isinstance(body["credentials"]["connection_string"], str)
              and body.get("provider") == "iot-hub" and "description" not in body
              and body["credentials"].get("type") == "sas"]
    problems = []
    for name, body, mode, text in cases:
        if isinstance(body, (str, bytes)):
            r = ui.set_credentials_raw(iid, body)
        else:
            r = ui.set_credentials(iid, body)
        if r.status != 400:
            problems.append(f"{name}: status {r.status} {r.body[:300]!r}")
        elif not _matches(r.error, mode, text):
            problems.append(f"{name}: error {r.error!r}, expected {mode} {text!r}")
    assert not problems, "\n".join(problems)
    assert ui.listed() == listed
    assert service.snapshot() == before
    service.assert_secret_absent(KEY_B64)


def test_invalid_uuid_in_path(service):
    ui = service.user(new_tenant())
    ui.create_hub(KEY)
    before = service.snapshot()
    creds = sas_integration(random_key())["credentials"]
    for bad, mode, text in [("abc", "exact", "integration ID must be a valid UUID: invalid UUID length: 3"),
                            ("zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz", "prefix",
                             "integration ID must be a valid UUID: ")]:
        for r in (ui.get(bad), ui.delete(bad, {}), ui.set_credentials(bad, creds)):
            assert r.status == 400, (bad, r)
            error = r.error
            assert error == text if mode == "exact" else error.startswith(text), (bad, error)
    assert service.snapshot() == before


def test_nothing_stored_after_409(service):
    ui = service.user(new_tenant())
    iid = ui.create_hub(KEY)
    before = service.snapshot()
    r = ui.create(sas_integration(random_key(), description="second"))
    assert r.status == 409, r
    assert service.snapshot() == before
    assert [i["id"] for i in ui.listed()] == [iid]


def test_valid_json_with_unknown_fields_and_an_id_is_accepted(service):
    """Unknown fields are ignored and a client-chosen id is overwritten, as in Mender."""
    ui = service.user(new_tenant())
    chosen = str(uuid.uuid4())
    body = dict(sas_integration(random_key()), id=chosen, scopes=["deviceauth"], extra={"a": 1})
    r = ui.create_raw(json.dumps(body))
    assert r.status == 201, r
    assert ui.listed()[0]["id"] != chosen
