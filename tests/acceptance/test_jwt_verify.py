"""IOT_MANAGER_AUTH_MODE=verify: the service checks useradm's signature itself (docs/rbac.md).

Tokens are made as useradm makes them (mender-clients.md §5.1): RS256 or EdDSA, an integer `kid`,
iss "mender.useradm". Every forgery must be 401 with Mender's WWW-Authenticate header, and must
not reach any data.
"""

import hashlib
import hmac
import json
import time

import pytest

from conftest import (MGMT, b64url, make_jwt, new_tenant, random_key, sas_integration,
                      useradm_claims, user_claims)

REALM = 'Bearer realm="ManagementJWT"'


@pytest.fixture
def verify_service(service_factory, jwt_keys):
    return service_factory(env=jwt_keys.env())


def _list(service, token=None, headers=None):
    return service.api.get(f"{MGMT}/integrations", token=token, headers=headers)


def _seed(service, jwt_keys, tenant):
    """Gives the tenant an integration (through the API, with a valid token); returns its id."""
    r = service.api.post(f"{MGMT}/integrations", sas_integration(random_key()),
                         token=jwt_keys.rs256(useradm_claims(tenant)))
    assert r.status == 201, r
    return r.header("Location").rsplit("/", 1)[1]


def test_valid_rs256_and_eddsa_tokens_are_accepted(verify_service, jwt_keys):
    tenant = new_tenant()
    iid = _seed(verify_service, jwt_keys, tenant)
    claims = useradm_claims(tenant)
    tokens = {"RS256 kid 0": jwt_keys.rs256(claims),
              "EdDSA kid 1": jwt_keys.eddsa(claims),
              # useradm's exact header order and a token without nbf (PATs)
              "RS256 without nbf": jwt_keys.rs256({k: v for k, v in claims.items() if k != "nbf"}),
              "EdDSA without typ": jwt_keys.eddsa(claims, header={"alg": "EdDSA", "kid": 1})}
    for name, token in tokens.items():
        r = _list(verify_service, token)
        assert r.status == 200, (name, r)
        assert [i["id"] for i in r.json()] == [iid], name
        # The JWT cookie is verified the same way.
        r = _list(verify_service, headers={"Cookie": f"JWT={token}"})
        assert r.status == 200, (name, "cookie", r)

    # The verified tenant is the one used: another tenant sees nothing.
    other = jwt_keys.eddsa(useradm_claims(new_tenant()))
    assert _list(verify_service, other).json() == []


def _forgeries(jwt_keys, tenant):
    now = int(time.time())
    good = useradm_claims(tenant)

    def with_claims(**changes):
        c = dict(good)
        for k, v in changes.items():
            if v is None:
                c.pop(k, None)
            else:
                c[k] = v
        return c

    def unsigned(header, claims):
        return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}."

    def hs256_with_public_key():
        return jwt_keys.assemble({"alg": "HS256", "kid": 0, "typ": "JWT"}, good,
                                 lambda data: hmac.new(jwt_keys.rsa_public_pem, data,
                                                       hashlib.sha256).digest())

    def tampered():
        head, _, sig = jwt_keys.rs256(good).split(".")
        evil = dict(good, **{"mender.tenant": new_tenant()})
        return f"{head}.{b64url(json.dumps(evil).encode())}.{sig}"

    def resigned_header():
        # A valid signature, header swapped afterwards (kid 0 -> kid 1).
        _, body, sig = jwt_keys.rs256(good).split(".")
        head = b64url(json.dumps({"alg": "RS256", "kid": 1, "typ": "JWT"}).encode())
        return f"{head}.{body}.{sig}"

    return {
        "alg none": unsigned({"alg": "none", "kid": 0, "typ": "JWT"}, good),
        "alg none, no kid": unsigned({"alg": "none", "typ": "JWT"}, good),
        "alg None with a signature": jwt_keys.assemble({"alg": "None", "kid": 0}, good,
                                                       lambda d: b"x" * 256),
        "HS256 keyed with the RSA public key PEM": hs256_with_public_key(),
        "HS256 with Mender's test key": make_jwt(good),
        "RS256 under the EdDSA key's kid": jwt_keys.rs256(good, kid=1),
        "EdDSA under the RSA key's kid": jwt_keys.eddsa(good, kid=0),
        "EdDSA alg, RSA signature": jwt_keys.assemble({"alg": "EdDSA", "kid": 0, "typ": "JWT"},
                                                      good, jwt_keys.rsa_signer(jwt_keys.rsa)),
        "RS384 alg": jwt_keys.assemble({"alg": "RS384", "kid": 0, "typ": "JWT"}, good,
                                       jwt_keys.rsa_signer(jwt_keys.rsa)),
        "unknown kid": jwt_keys.rs256(good, kid=7),
        "negative kid": jwt_keys.rs256(good, kid=-1),
        "no kid with two keys": jwt_keys.rs256(good, header={"alg": "RS256", "typ": "JWT"}),
        "RSA signature from another key": jwt_keys.rs256(good, key=jwt_keys.other_rsa),
        "Ed25519 signature from another key": jwt_keys.eddsa(good, key=jwt_keys.other_ed),
        "tampered payload": tampered(),
        "header swapped after signing": resigned_header(),
        "signature truncated": jwt_keys.rs256(good)[:-8],
        "signature removed": jwt_keys.rs256(good).rsplit(".", 1)[0] + ".",
        "expired beyond the leeway": jwt_keys.rs256(with_claims(exp=now - 120, iat=now - 4000,
                                                                nbf=now - 4000)),
        "no exp": jwt_keys.rs256(with_claims(exp=None)),
        "exp not a number": jwt_keys.rs256(with_claims(exp="tomorrow")),
        "nbf in the future": jwt_keys.rs256(with_claims(nbf=now + 600)),
        "iat in the future": jwt_keys.eddsa(with_claims(iat=now + 600, nbf=None)),
        "wrong iss": jwt_keys.rs256(with_claims(iss="Mender")),
        "no iss": jwt_keys.eddsa(with_claims(iss=None)),
        "iss with a suffix": jwt_keys.rs256(with_claims(iss="mender.useradm.evil")),
    }


def test_forgeries_are_401(verify_service, jwt_keys):
    tenant = new_tenant()
    _seed(verify_service, jwt_keys, tenant)
    before = verify_service.snapshot()
    problems = []
    for name, token in _forgeries(jwt_keys, tenant).items():
        for method, path, body in [("GET", f"{MGMT}/integrations", None),
                                   ("POST", f"{MGMT}/integrations",
                                    {"provider": "iot-hub", "credentials": {
                                        "type": "sas", "connection_string":
                                            "HostName=localhost:8443;SharedAccessKeyName=x;"
                                            "SharedAccessKey=" + "A" * 44}})]:
            kwargs = {"json_body": body} if body is not None else {}
            r = verify_service.api.request(method, path, token=token, **kwargs)
            if r.status != 401:
                problems.append(f"{name} {method}: {r}")
            elif r.header("WWW-Authenticate") != REALM:
                problems.append(f"{name} {method}: WWW-Authenticate "
                                f"{r.header('WWW-Authenticate')!r}")
            elif not r.error.startswith("identity: "):
                problems.append(f"{name} {method}: error {r.error!r}")
        r = _list(verify_service, headers={"Cookie": f"JWT={token}"})
        if r.status != 401:
            problems.append(f"{name} as a cookie: {r}")
    assert not problems, "\n".join(problems)
    assert verify_service.snapshot() == before


def test_leeway(service_factory, jwt_keys):
    now = int(time.time())
    # Within the default 60 s of clock skew: accepted.
    svc = service_factory(env=jwt_keys.env())
    tenant = new_tenant()
    for claims in (useradm_claims(tenant, exp=now - 20),
                   useradm_claims(tenant, nbf=now + 20, iat=now + 20)):
        assert _list(svc, jwt_keys.rs256(claims)).status == 200, claims
    # IOT_MANAGER_JWT_LEEWAY=0: the same tokens are refused.
    strict = service_factory(env=jwt_keys.env(IOT_MANAGER_JWT_LEEWAY="0"))
    for claims in (useradm_claims(tenant, exp=now - 20),
                   useradm_claims(tenant, nbf=now + 20, iat=now + 20)):
        r = _list(strict, jwt_keys.rs256(claims))
        assert r.status == 401 and r.header("WWW-Authenticate") == REALM, (claims, r)


def _issuer_unchecked(service_factory, jwt_keys, tmp_path):
    """A verify-mode service with an empty jwt_issuer. An empty environment variable counts as
    unset (as viper), so the empty value comes from the YAML file."""
    config = tmp_path / "issuer.yaml"
    config.write_text('jwt_issuer: ""\n')
    return service_factory(env=jwt_keys.env(), args=["--config", str(config), "server"])


def test_issuer_setting(service_factory, jwt_keys, tmp_path):
    tenant = new_tenant()
    custom = service_factory(env=jwt_keys.env(IOT_MANAGER_JWT_ISSUER="useradm.example.com"))
    assert _list(custom, jwt_keys.rs256(useradm_claims(tenant,
                                                       iss="useradm.example.com"))).status == 200
    assert _list(custom, jwt_keys.rs256(useradm_claims(tenant))).status == 401

    # An empty environment variable is "unset": the default issuer is still required.
    env_empty = service_factory(env=jwt_keys.env(IOT_MANAGER_JWT_ISSUER=""))
    assert _list(env_empty, jwt_keys.rs256(useradm_claims(tenant))).status == 200
    assert _list(env_empty, jwt_keys.rs256(useradm_claims(tenant, iss="Mender"))).status == 401

    unchecked = _issuer_unchecked(service_factory, jwt_keys, tmp_path)
    for iss in ("Mender", "mender.useradm", None):
        claims = useradm_claims(tenant)
        if iss is None:
            claims.pop("iss")
        else:
            claims["iss"] = iss
        assert _list(unchecked, jwt_keys.eddsa(claims)).status == 200, iss


def test_device_tokens_are_403(service_factory, verify_service, jwt_keys, tmp_path):
    tenant = new_tenant()
    claims = useradm_claims(tenant)
    claims.pop("mender.user")
    claims["mender.device"] = True
    for token in (jwt_keys.rs256(claims), jwt_keys.eddsa(claims)):
        r = _list(verify_service, token)
        assert r.status == 403, r
        assert r.error == "user identity missing from authorization token"
    # deviceauth's own issuer ("Mender") where the issuer is not checked.
    unchecked = _issuer_unchecked(service_factory, jwt_keys, tmp_path)
    r = _list(unchecked, jwt_keys.rs256(dict(claims, iss="Mender")))
    assert r.status == 403 and r.error == "user identity missing from authorization token", r


def test_gateway_mode_accepts_unsigned_tokens(service, jwt_keys):
    """As Mender's services: the gateway verified the token, the claims are only decoded."""
    tenant = new_tenant()
    claims = user_claims(tenant)
    head = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    unsigned = f"{head}.{b64url(json.dumps(claims).encode())}."
    r = service.api.post(f"{MGMT}/integrations",
                         {"provider": "iot-hub", "credentials": {
                             "type": "sas", "connection_string":
                                 "HostName=localhost:8443;SharedAccessKeyName=x;SharedAccessKey="
                                 + "A" * 44}}, token=unsigned)
    assert r.status == 201, r
    for token in (unsigned, jwt_keys.rs256(claims, key=jwt_keys.other_rsa),
                  jwt_keys.eddsa(useradm_claims(tenant, exp=int(time.time()) - 7200))):
        r = _list(service, token)
        assert r.status == 200 and len(r.json()) == 1, r


def test_single_key_without_kid(service_factory, jwt_keys):
    """IOT_MANAGER_JWT_KEYS may be one PEM path: that key verifies tokens of any kid."""
    svc = service_factory(env=jwt_keys.env(IOT_MANAGER_JWT_KEYS=str(jwt_keys.ed_pem)))
    claims = useradm_claims(new_tenant())
    assert _list(svc, jwt_keys.eddsa(claims)).status == 200
    assert _list(svc, jwt_keys.eddsa(claims, kid=0)).status == 200
    r = _list(svc, jwt_keys.rs256(claims))  # the RSA key is not configured here
    assert r.status == 401 and r.header("WWW-Authenticate") == REALM, r


@pytest.mark.parametrize("keys", [None, "", "0=/nonexistent/useradm.pem", "notapem"])
def test_verify_mode_without_usable_keys_does_not_start(service_factory, tmp_path, keys):
    if keys == "notapem":
        garbage = tmp_path / "garbage.pem"
        garbage.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
        keys = f"0={garbage}"
    svc = service_factory(env={"IOT_MANAGER_AUTH_MODE": "verify", "IOT_MANAGER_JWT_KEYS": keys},
                          start=False)
    try:
        out = svc.cli("server", timeout=15)
    except Exception as e:  # still running: it started without keys
        pytest.fail(f"iot-manager started in verify mode with IOT_MANAGER_JWT_KEYS={keys!r}: {e}")
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "IOT_MANAGER_JWT_KEYS" in out.stderr, out.stderr[-2000:]
