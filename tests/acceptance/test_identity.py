"""Identity in Mender's gateway-trust mode: where the JWT comes from, 401 texts, 403 for non-users."""

import json
import uuid

from conftest import (MGMT, INTERNAL, b64url, device_token, make_jwt, new_tenant, random_key,
                      sas_integration, user_claims, user_token)

REALM = 'Bearer realm="ManagementJWT"'
HEADER = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())


def _claims_without(name):
    claims = user_claims(new_tenant())
    claims.pop(name, None)
    return claims


def _unauthorized_cases():
    good = user_token(new_tenant())
    return [
        ("no header, no cookie", {}, "exact", "Authorization not present in header"),
        ("scheme only", {"Authorization": "Bearer"}, "exact", "malformed Authorization header"),
        ("three parts", {"Authorization": f"Bearer {good} extra"}, "exact",
         "malformed Authorization header"),
        ("basic auth", {"Authorization": "Basic dXNlcjpwYXNz"}, "exact",
         "unknown Authorization method Basic"),
        ("one segment", {"Authorization": "Bearer abc"}, "exact", "identity: incorrect token format"),
        ("two segments", {"Authorization": f"Bearer {HEADER}.abc"}, "exact",
         "identity: incorrect token format"),
        ("four segments", {"Authorization": f"Bearer {good}.x"}, "exact",
         "identity: incorrect token format"),
        ("claims not base64", {"Authorization": f"Bearer {HEADER}.!!!.sig"}, "prefix",
         "identity: failed to decode base64 JWT claims: "),
        ("claims not JSON", {"Authorization": f"Bearer {HEADER}.{b64url(b'not json')}.sig"},
         "prefix", "identity: failed to decode JSON JWT claims: "),
        ("tenant claim not a string",
         {"Authorization": f"Bearer {user_token('', **{'mender.tenant': 42})}"}, "prefix",
         "identity: failed to decode JSON JWT claims: "),
        ("user claim not a boolean",
         {"Authorization": f"Bearer {user_token(new_tenant(), **{'mender.user': 'true'})}"},
         "prefix", "identity: failed to decode JSON JWT claims: "),
        ("claims a JSON array", {"Authorization": f"Bearer {HEADER}.{b64url(b'[]')}.sig"},
         "prefix", "identity: failed to decode JSON JWT claims: "),
        ("no sub", {"Authorization": f"Bearer {make_jwt(_claims_without('sub'))}"}, "exact",
         'identity: claim "sub" is required'),
        ("empty sub", {"Authorization": f"Bearer {user_token(new_tenant(), sub='')}"}, "exact",
         'identity: claim "sub" is required'),
        ("malformed cookie", {"Cookie": "JWT=abc"}, "exact", "identity: incorrect token format"),
        ("header wins over cookie", {"Authorization": "Bearer abc", "Cookie": f"JWT={good}"},
         "exact", "identity: incorrect token format"),
    ]


def _check_401(r, name, mode, text):
    problems = []
    if r.status != 401:
        return [f"{name}: status {r.status} {r.body[:200]!r}"]
    if r.header("WWW-Authenticate") != REALM:
        problems.append(f"{name}: WWW-Authenticate {r.header('WWW-Authenticate')!r}")
    error = r.json().get("error", "")
    if (mode == "exact" and error != text) or (mode == "prefix" and not error.startswith(text)):
        problems.append(f"{name}: error {error!r}, expected {mode} {text!r}")
    return problems


def test_every_401_text(service):
    problems = []
    for name, headers, mode, text in _unauthorized_cases():
        r = service.api.get(f"{MGMT}/integrations", headers=headers)
        problems += _check_401(r, name, mode, text)
    assert not problems, "\n".join(problems)


def test_every_management_endpoint_requires_a_token(service):
    iid = str(uuid.uuid4())
    calls = [("GET", f"{MGMT}/integrations", None),
             ("POST", f"{MGMT}/integrations", sas_integration(random_key())),
             ("GET", f"{MGMT}/integrations/{iid}", None),
             ("DELETE", f"{MGMT}/integrations/{iid}", {}),
             ("PUT", f"{MGMT}/integrations/{iid}/credentials",
              sas_integration(random_key())["credentials"])]
    problems = []
    for method, path, body in calls:
        kwargs = {"json_body": body} if body is not None else {}
        r = service.api.request(method, path, **kwargs)
        problems += _check_401(r, f"{method} {path}", "exact", "Authorization not present in header")
    assert not problems, "\n".join(problems)
    service.assert_nothing_stored()


def test_non_user_tokens_are_403(service):
    tenant = new_tenant()
    tokens = {"device token": device_token(tenant),
              "mender.user false": user_token(tenant, **{"mender.user": False}),
              "no mender.user": make_jwt(_claims_without("mender.user"))}
    problems = []
    for name, token in tokens.items():
        for method, path, body in [("GET", f"{MGMT}/integrations", None),
                                   ("POST", f"{MGMT}/integrations", sas_integration(random_key()))]:
            kwargs = {"json_body": body} if body is not None else {}
            r = service.api.request(method, path, token=token, **kwargs)
            if r.status != 403 or r.error != "user identity missing from authorization token":
                problems.append(f"{name} {method}: {r}")
    assert not problems, "\n".join(problems)
    service.assert_nothing_stored()


def test_token_from_cookie_and_case_insensitive_scheme(service):
    tenant = new_tenant()
    owner = service.user(tenant)
    iid = owner.create_hub(random_key())
    token = user_token(tenant)

    r = service.api.get(f"{MGMT}/integrations", headers={"Cookie": f"JWT={token}"})
    assert r.status == 200, r
    assert [i["id"] for i in r.json()] == [iid]

    r = service.api.get(f"{MGMT}/integrations",
                        headers={"Cookie": f"theme=dark; JWT={token}; lang=en"})
    assert r.status == 200, r
    assert [i["id"] for i in r.json()] == [iid]

    r = service.api.get(f"{MGMT}/integrations", headers={"Authorization": f"bearer {token}"})
    assert r.status == 200, r
    assert [i["id"] for i in r.json()] == [iid]


def test_signature_is_not_checked_in_gateway_mode(service):
    tenant = new_tenant()
    iid = service.user(tenant).create_hub(random_key())
    token = make_jwt(user_claims(tenant), key=b"some other key")
    r = service.api.get(f"{MGMT}/integrations", token=token)
    assert r.status == 200, r
    assert [i["id"] for i in r.json()] == [iid]


def test_internal_api_needs_no_token(service):
    assert service.api.get(f"{INTERNAL}/alive").status == 204
    assert service.api.get(f"{INTERNAL}/health").status == 204
