"""Acceptance-test harness for iot-manager.

Runs the real binary (env IOT_MANAGER_BIN, default <repo>/build/iot-manager) on a free loopback
port, once per test, against a fresh SQLite file or a fresh database on a MongoDB-wire server:
IOT_MANAGER_TEST_MONGO_URL when set, else `mongod` from PATH, else FerretDB built and cached by
scripts/build-ferretdb.sh. Every API test runs on both backends through the `backend` fixture.

Every HTTP response a test receives is checked against our openapi/ specs (path, method, status,
headers, body schema) and, where Mender's own OpenAPI file documents that status, against
Mender's schema too. A test that hits a status our spec does not document fails.

Device-twin tests talk to one IoT Hub simulator per session (tests/sim, env IOTHUB_SIM, default
next to the binary), reset before each test; verify-mode tests sign tokens with RSA/Ed25519 keys
generated once per session (python3-cryptography).
"""

import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import time
import urllib.parse
import uuid

import jsonschema
import pytest
import yaml

try:  # Debian python3-pymongo; only the mongo backend needs it
    import pymongo
    from bson.binary import Binary
except ImportError:  # pragma: no cover - reported by the mongo fixtures
    pymongo = None
    Binary = None

try:  # Debian python3-cryptography; only needed to forge Mender's encrypted blobs
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    HAVE_CRYPTOGRAPHY = True
except ImportError:  # pragma: no cover
    HAVE_CRYPTOGRAPHY = False

try:  # signing JWTs as useradm does (verify mode)
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
except ImportError:  # pragma: no cover - reported by the jwt_keys fixture
    ed25519 = None

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
BIN = os.environ.get("IOT_MANAGER_BIN", str(REPO / "build" / "iot-manager"))
OUR_SPECS = [REPO / "openapi" / "management_v1.yaml", REPO / "openapi" / "internal_v1.yaml"]


def _mender_openapi_dir():
    candidates = [os.environ.get("IOT_MANAGER_MENDER_OPENAPI"),
                  str(REPO.parent / "shared" / "spec" / "mender-openapi"),
                  "/work/shared/spec/mender-openapi"]
    for c in candidates:
        if c and (pathlib.Path(c) / "iot-manager").is_dir():
            return pathlib.Path(c)
    return None


MENDER_OPENAPI = _mender_openapi_dir()

MGMT = "/api/management/v1/iot-manager"
INTERNAL = "/api/internal/v1/iot-manager"

# The acceptance-test key of Mender's own suite, and two more for rotation / wrong-key tests.
TEST_AES_KEY = "+mg+KXQM8/7A+uqs1bJzfH0KW9NclMEVRjkmqhfpjDg="
OTHER_AES_KEY = base64.b64encode(hashlib.sha256(b"iot-manager other key").digest()).decode()
THIRD_AES_KEY = base64.b64encode(hashlib.sha256(b"iot-manager third key").digest()).decode()
# Contract §6: Mender's fixed-IV blob of plaintext "secret" under TEST_AES_KEY.
MENDER_VECTOR_BLOB = bytes.fromhex(
    "01000102030405060708090a0b0c0d0e0f9df17603c2952a9fe6930794aa97ff5bdabed06d7fb41a388320d2"
    "c4d5634d488e5f1ee0e8681ebb09fa2b13f3fdc2a9031646a24cca008d7ff2c7d06b50828249c7722bb3f2")

WHITELIST = "localhost *.azure-devices.net *.invalid *.nonexistent.invalid"
HUB_HOST = "localhost:8443"  # resolvable through /etc/hosts; the sandbox has no DNS
JWT_KEY = b"secretJWTkey"  # Mender's test key; the signature is not checked in gateway mode

DEFAULT_TIME_LIMIT = float(os.environ.get("IOT_MANAGER_TEST_TIMEOUT", "60"))
ALIVE_TIMEOUT = 15.0

ERROR_TOO_LARGE = "http: request body too large"


# --------------------------------------------------------------------------------------------
# Per-test time limit (SIGALRM; pytest-timeout is not available everywhere)
# --------------------------------------------------------------------------------------------

class TestTimeout(Exception):
    """Raised in the main thread when a test exceeds its time limit."""


def pytest_configure(config):
    config.addinivalue_line("markers", "time_limit(seconds): per-test time limit override")
    config.addinivalue_line("markers", "mongo_only: runs on the mongo backend only")
    config.addinivalue_line("markers", "sqlite_only: runs on the sqlite backend only")


def pytest_collection_modifyitems(config, items):
    """Drops the backend variants a test does not apply to (instead of reporting skips)."""
    keep, drop = [], []
    for item in items:
        backend = getattr(item, "callspec", None) and item.callspec.params.get("backend")
        if (backend == "sqlite" and item.get_closest_marker("mongo_only")) or (
                backend == "mongo" and item.get_closest_marker("sqlite_only")):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def _time_limit(request):
    marker = request.node.get_closest_marker("time_limit")
    limit = float(marker.args[0]) if marker else DEFAULT_TIME_LIMIT

    def on_alarm(signum, frame):
        raise TestTimeout(f"test exceeded its time limit of {limit:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def alarm_paused():
    """Suspends the test's time limit (one-off builds, bounded process teardown)."""
    remaining, _ = signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        yield
    finally:
        if remaining:
            signal.setitimer(signal.ITIMER_REAL, remaining)


# --------------------------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------------------------

_PROCESSES = []  # every Popen we started, killed at session end whatever happened


def _register(proc):
    _PROCESSES.append(proc)
    return proc


def _spawn(argv, log, err=None, env=None):
    """Starts `argv` in a session of its own (a signal to the test run does not reach it), its
    stdout appended to `log` and its stderr to `err` (default: `log` too); killed at session
    end whatever happened."""
    out = open(log, "ab")
    errf = open(err, "ab") if err is not None else out
    try:
        return _register(subprocess.Popen(argv, env=env, stdout=out, stderr=errf,
                                          stdin=subprocess.DEVNULL, start_new_session=True))
    finally:
        out.close()
        errf.close()


def _stop_process(proc, grace=5, sig=signal.SIGTERM):
    """Sends `sig` to `proc` if it still runs and waits up to `grace` s for it, then SIGKILLs it.
    False when it had to be killed."""
    if proc is None or proc.poll() is not None:
        return True
    proc.send_signal(sig)
    try:
        proc.wait(grace)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return False


# Secrets must never reach the service's logs. Every log file of the run is scanned at the end
# for the secrets the run handed to the service (keys in connection strings, encryption keys,
# bearer tokens) and for anything shaped like a connection string, SAS token or signature.
_SERVICE_LOGS = []
_SECRETS = set()
_LEAK_PATTERNS = [
    re.compile(r"SharedAccessKey=(?![A-Za-z0-9+/=]{0,8}\.\.\.<omitted>)[A-Za-z0-9+/]{8,}"),
    re.compile(r"SharedAccessSignature sr="),
    re.compile(r"[?&]sig=[A-Za-z0-9%]{20,}"),
]


def remember_secrets(text):
    """Registers the secrets in a request body or header value (connection-string keys, JWTs)."""
    if not text:
        return
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    for m in re.finditer(r"SharedAccessKey=([A-Za-z0-9+/=]{12,})", text):
        _SECRETS.add(m.group(1))
    for m in re.finditer(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", text):
        _SECRETS.add(m.group(0))


def scan_logs_for_secrets():
    leaks = []
    for path in _SERVICE_LOGS:
        if not path.exists():
            continue
        text = path.read_text(errors="replace")
        for pattern in _LEAK_PATTERNS:
            m = pattern.search(text)
            if m:
                leaks.append(f"{path}: looks like a secret: {m.group(0)[:40]}...")
        for secret in _SECRETS:
            if len(secret) >= 12 and secret in text:
                leaks.append(f"{path}: contains a secret the tests sent ({secret[:6]}...)")
    return leaks


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    leaks = scan_logs_for_secrets()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if leaks:
        for line in leaks[:50]:
            if reporter:
                reporter.write_line(f"SECRET IN LOGS: {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif reporter and _SERVICE_LOGS:
        reporter.write_line(f"log scan: {len(_SERVICE_LOGS)} service logs, {len(_SECRETS)} "
                            "secrets looked for, none found")
    for proc in _PROCESSES:
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(5)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64(data):
    return base64.b64encode(data).decode()


def make_jwt(claims, header=None, key=JWT_KEY):
    """header.payload.signature with base64url JSON segments, HS256 like Mender's tests."""
    head = b64url(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def user_claims(tenant="", sub=None, **extra):
    now = int(time.time())
    claims = {"jti": str(uuid.uuid4()), "sub": str(uuid.uuid4()) if sub is None else sub, "iat": now,
              "exp": now + 3600, "iss": "Mender", "mender.user": True, "mender.plan": "enterprise"}
    if tenant:
        claims["mender.tenant"] = tenant
    claims.update(extra)
    return claims


def user_token(tenant="", sub=None, **extra):
    return make_jwt(user_claims(tenant, sub, **extra))


def device_token(tenant="", device_id=None):
    now = int(time.time())
    claims = {"jti": str(uuid.uuid4()), "sub": device_id or str(uuid.uuid4()), "iat": now,
              "exp": now + 3600, "iss": "Mender", "mender.device": True}
    if tenant:
        claims["mender.tenant"] = tenant
    return make_jwt(claims)


def new_tenant():
    """A Mender-like tenant id: 24 hex digits (a Mongo ObjectID)."""
    return uuid.uuid4().hex[:24]


def conn_str(key, host=HUB_HOST, name="iothubowner", extra=""):
    """A service connection string; `key` is raw bytes or an already-encoded string."""
    key_text = key if isinstance(key, str) else b64(key)
    parts = [f"HostName={host}"] if host is not None else []
    if name is not None:
        parts.append(f"SharedAccessKeyName={name}")
    parts.append(f"SharedAccessKey={key_text}")
    return ";".join(parts) + extra


def masked_key(key):
    return b64(key[:3]) + "...<omitted>"


def masked_conn_str(key, host=HUB_HOST, name="iothubowner", device_id=None):
    parts = [f"HostName={host}"]
    if name:
        parts.append(f"SharedAccessKeyName={name}")
    if device_id:
        parts.append(f"DeviceId={device_id}")
    parts.append(f"SharedAccessKey={masked_key(key)}")
    return ";".join(parts)


def sas_integration(key=None, description=None, cs=None, provider="iot-hub", ctype="sas"):
    body = {"provider": provider,
            "credentials": {"type": ctype,
                            "connection_string": cs if cs is not None else conn_str(key)}}
    if description is not None:
        body["description"] = description
    return body


def random_key(n=32):
    return os.urandom(n)


def mender_encrypt(key_b64, plaintext, iv=None):
    """Mender's AES_256_CFB_HMAC_SHA512 blob: 0x01 || IV || AES-256-CFB128(P) || HMAC-SHA512(P)."""
    key = base64.b64decode(key_b64)
    iv = iv if iv is not None else os.urandom(16)
    if not HAVE_CRYPTOGRAPHY:
        pytest.skip("python3-cryptography is needed to forge Mender's encrypted blobs")
    enc = Cipher(algorithms.AES(key), modes.CFB(iv)).encryptor()
    ct = enc.update(plaintext) + enc.finalize()
    return b"\x01" + iv + ct + hmac.new(key, plaintext, hashlib.sha512).digest()


def mender_decrypt(key_b64, blob):
    """Inverse of mender_encrypt; raises AssertionError when the MAC does not match."""
    key = base64.b64decode(key_b64)
    assert blob[0] == 1 and len(blob) >= 81, "not a Mender encrypted blob"
    if not HAVE_CRYPTOGRAPHY:
        pytest.skip("python3-cryptography is needed to open Mender's encrypted blobs")
    iv, ct, mac = blob[1:17], blob[17:-64], blob[-64:]
    dec = Cipher(algorithms.AES(key), modes.CFB(iv)).decryptor()
    plain = dec.update(ct) + dec.finalize()
    assert hmac.compare_digest(hmac.new(key, plain, hashlib.sha512).digest(), mac), "HMAC mismatch"
    return plain


# --------------------------------------------------------------------------------------------
# OpenAPI response checking
# --------------------------------------------------------------------------------------------

_YAML_CACHE = {}


def _load_yaml(path):
    path = os.path.normpath(str(path))
    if path not in _YAML_CACHE:
        with open(path, encoding="utf-8") as f:
            _YAML_CACHE[path] = yaml.safe_load(f)
    return _YAML_CACHE[path]


def _resolve(node, base, stack=()):
    """Inlines every $ref (local or relative-file) and turns mapping keys into strings."""
    if isinstance(node, dict):
        if "$ref" in node:
            file_part, _, fragment = node["$ref"].partition("#")
            target = base if not file_part else os.path.normpath(
                os.path.join(os.path.dirname(base), file_part))
            key = (target, fragment)
            if key in stack:
                raise ValueError(f"cyclic $ref {node['$ref']} in {base}")
            doc = _load_yaml(target)
            for token in [t for t in fragment.split("/") if t]:
                token = token.replace("~1", "/").replace("~0", "~")
                doc = doc[token] if token in doc else doc[int(token)]
            return _resolve(doc, target, stack + (key,))
        return {str(k): _resolve(v, base, stack) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, base, stack) for v in node]
    return node


def oas_to_jsonschema(schema):
    """OpenAPI 3.0 schema object -> JSON Schema (draft 4 + nullable)."""
    if isinstance(schema, list):
        return [oas_to_jsonschema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("discriminator", "example", "examples", "xml", "externalDocs", "deprecated",
                   "nullable", "readOnly", "writeOnly"):
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: oas_to_jsonschema(s) for name, s in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = oas_to_jsonschema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [oas_to_jsonschema(s) for s in value]
        else:
            out[key] = value
    if schema.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


class OpenApiSet:
    """Path templates of one or more OpenAPI files, with every $ref inlined."""

    def __init__(self, files):
        self.files = [str(f) for f in files]
        self.paths = []  # (regex, template, path item)
        self.docs = {}
        for f in self.files:
            doc = _resolve(_load_yaml(f), os.path.normpath(f))
            self.docs[f] = doc
            for template, item in (doc.get("paths") or {}).items():
                pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]*", re.escape(template)) + "$"
                self.paths.append((re.compile(pattern), template, item))
        # Fewer parameters first, so a literal segment wins over a template.
        self.paths.sort(key=lambda p: p[1].count("{"))

    def find(self, path):
        for regex, template, item in self.paths:
            if regex.match(path):
                return template, item
        return None


class ResponseChecker:
    def __init__(self):
        for f in OUR_SPECS:
            assert f.is_file(), f"missing our OpenAPI spec {f}"
        self.ours = OpenApiSet(OUR_SPECS)
        mender_files = []
        if MENDER_OPENAPI is not None:
            mender_files = sorted((MENDER_OPENAPI / "iot-manager").glob("*.yaml"))
        self.mender = OpenApiSet(mender_files)
        mgmt = self.ours.docs[str(OUR_SPECS[0])]
        self.error_schema = mgmt["components"]["schemas"]["Error"]
        self._validators = {}

    def _validate(self, schema, instance, where):
        key = json.dumps(schema, sort_keys=True)
        validator = self._validators.get(key)
        if validator is None:
            js = oas_to_jsonschema(schema)
            jsonschema.Draft4Validator.check_schema(js)
            validator = jsonschema.Draft4Validator(js, format_checker=jsonschema.FormatChecker())
            self._validators[key] = validator
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
        if errors:
            details = "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
            raise AssertionError(f"{where}: body does not match the schema: {details}\n"
                                 f"body: {json.dumps(instance)[:2000]}")

    def _check_against(self, spec_response, resp, where, strict):
        content = spec_response.get("content") or {}
        if strict:
            for name, header in (spec_response.get("headers") or {}).items():
                value = resp.header(name)
                if header.get("required"):
                    assert value is not None, f"{where}: required header {name} missing"
                enum = (header.get("schema") or {}).get("enum")
                if value is not None and enum:
                    assert value in enum, f"{where}: header {name}={value!r} not in {enum}"
        if not content:
            if strict:
                assert resp.body == b"", f"{where}: body must be empty, got {resp.body[:200]!r}"
            return
        if not resp.body and not strict:
            return
        if "text/plain" in content and "application/json" not in content:
            ctype = resp.header("Content-Type") or ""
            assert ctype.startswith("text/plain"), f"{where}: Content-Type is {ctype!r}"
            return
        media = content.get("application/json")
        assert media is not None, f"{where}: only application/json bodies are documented"
        ctype = resp.header("Content-Type") or ""
        assert ctype.startswith("application/json"), f"{where}: Content-Type is {ctype!r}"
        try:
            instance = json.loads(resp.body)
        except ValueError as e:
            raise AssertionError(f"{where}: body is not JSON ({e}): {resp.body[:200]!r}")
        if "schema" in media:
            self._validate(media["schema"], instance, where)

    def check(self, method, path, resp):
        path_only = path.split("?", 1)[0]
        assert resp.header("X-MEN-RequestID"), f"{method} {path}: no X-MEN-RequestID header"
        found = self.ours.find(path_only)
        if found is None:
            assert resp.status == 404, f"{method} {path}: unknown path answered {resp.status}"
            self._check_against({"content": {"application/json": {"schema": self.error_schema}}},
                                resp, f"{method} {path} 404", strict=True)
            return
        template, item = found
        op = item.get(method.lower())
        if op is None:
            assert resp.status == 405, f"{method} {template}: undocumented method answered {resp.status}"
            self._check_against({"content": {"application/json": {"schema": self.error_schema}}},
                                resp, f"{method} {template} 405", strict=True)
            return
        responses = op.get("responses") or {}
        spec_response = (responses.get(str(resp.status)) or responses.get(f"{resp.status // 100}XX")
                         or responses.get("default"))
        assert spec_response is not None, (
            f"{method} {template}: status {resp.status} is not documented in openapi/ "
            f"(body {resp.body[:300]!r})")
        self._check_against(spec_response, resp, f"ours {method} {template} {resp.status}", strict=True)
        mender_found = self.mender.find(path_only)
        if mender_found:
            mender_op = mender_found[1].get(method.lower())
            if mender_op:
                mender_resp = (mender_op.get("responses") or {}).get(str(resp.status))
                if mender_resp:
                    self._check_against(mender_resp, resp,
                                        f"mender {method} {template} {resp.status}", strict=False)


_CHECKER = None


def response_checker():
    global _CHECKER
    if _CHECKER is None:
        _CHECKER = ResponseChecker()
    return _CHECKER


# --------------------------------------------------------------------------------------------
# HTTP client
# --------------------------------------------------------------------------------------------

_NOTHING = object()


class Response:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers  # http.client.HTTPMessage: case-insensitive
        self.body = body

    def header(self, name):
        return self.headers.get(name)

    def json(self):
        return json.loads(self.body)

    @property
    def error(self):
        return self.json()["error"]

    def __repr__(self):
        return f"<Response {self.status} {self.body[:300]!r}>"


class ApiClient:
    def __init__(self, host, port, checker):
        self.host = host
        self.port = port
        self.checker = checker
        self.history = []  # (method, path, Response) of every call, for secret scans

    def request(self, method, path, json_body=_NOTHING, body=None, headers=None, token=None,
                check=True, timeout=20):
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        if json_body is not _NOTHING:
            body = json.dumps(json_body).encode()
            h.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode()
        remember_secrets(body)
        remember_secrets(h.get("Authorization"))
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            resp = Response(r.status, r.reason, r.headers, r.read())
        finally:
            conn.close()
        self.history.append((method, path, resp))
        if check:
            self.checker.check(method, path, resp)
        return resp

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, json_body=_NOTHING, **kw):
        return self.request("POST", path, json_body=json_body, **kw)

    def put(self, path, json_body=_NOTHING, **kw):
        return self.request("PUT", path, json_body=json_body, **kw)

    def patch(self, path, json_body=_NOTHING, **kw):
        return self.request("PATCH", path, json_body=json_body, **kw)

    def delete(self, path, json_body=_NOTHING, **kw):
        return self.request("DELETE", path, json_body=json_body, **kw)


class User:
    """A logged-in Mender UI user of one tenant, calling the management API like the UI."""

    def __init__(self, api, tenant=""):
        self.api = api
        self.tenant = tenant
        self.token = user_token(tenant)

    def list(self):
        return self.api.get(f"{MGMT}/integrations", token=self.token)

    def listed(self):
        r = self.list()
        assert r.status == 200, r
        return r.json()

    def create(self, body):
        return self.api.post(f"{MGMT}/integrations", body, token=self.token)

    def create_raw(self, raw, content_type="application/json"):
        return self.api.post(f"{MGMT}/integrations", body=raw, token=self.token,
                             headers={"Content-Type": content_type})

    def create_hub(self, key, **kw):
        r = self.create(sas_integration(key, **kw))
        assert r.status == 201, r
        location = r.header("Location")
        prefix = f"{MGMT}/integrations/"
        assert location and location.startswith(prefix), location
        return location[len(prefix):]

    def get(self, iid):
        return self.api.get(f"{MGMT}/integrations/{iid}", token=self.token)

    def delete(self, iid, body=_NOTHING):
        return self.api.delete(f"{MGMT}/integrations/{iid}", body, token=self.token)

    def set_credentials(self, iid, creds):
        return self.api.put(f"{MGMT}/integrations/{iid}/credentials", creds, token=self.token)

    def set_credentials_raw(self, iid, raw):
        return self.api.put(f"{MGMT}/integrations/{iid}/credentials", body=raw, token=self.token,
                            headers={"Content-Type": "application/json"})

    # ---- device twins (the UI's "Device Twin" tab, plus PATCH and If-Match)

    def states(self, device_id):
        return self.api.get(f"{MGMT}/devices/{device_id}/state", token=self.token)

    def state(self, device_id, iid):
        return self.api.get(f"{MGMT}/devices/{device_id}/state/{iid}", token=self.token)

    def put_state(self, device_id, iid, body, if_match=None):
        headers = {"If-Match": if_match} if if_match is not None else None
        return self.api.put(f"{MGMT}/devices/{device_id}/state/{iid}", body, token=self.token,
                            headers=headers)

    def patch_state(self, device_id, iid, body, if_match=None):
        headers = {"If-Match": if_match} if if_match is not None else None
        return self.api.patch(f"{MGMT}/devices/{device_id}/state/{iid}", body, token=self.token,
                              headers=headers)

    def delete_device(self, device_id):
        return self.api.delete(f"{MGMT}/devices/{device_id}", token=self.token)


class _Headers(dict):
    """Lower-cased header map with a case-insensitive get()."""

    def get(self, name, default=None):
        return super().get(name.lower(), default)


def raw_http(port, data, timeout=10, chunks=None, pause=0.0):
    """Sends raw bytes (optionally in several writes) and returns the Response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        pieces = chunks if chunks is not None else [data]
        for i, piece in enumerate(pieces):
            try:
                s.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            if pause and i + 1 < len(pieces):
                time.sleep(pause)
        return read_http_response(s)


def read_http_response(s):
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except ConnectionResetError:
        pass
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines and lines[0].startswith("HTTP/1."), f"no HTTP response: {buf[:200]!r}"
    status = int(lines[0].split()[1])
    headers = _Headers()
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0") or 0)
    try:
        while len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
    except ConnectionResetError:
        pass
    return Response(status, lines[0], headers, rest[:length])


# --------------------------------------------------------------------------------------------
# MongoDB-wire server
# --------------------------------------------------------------------------------------------

def _ferretdb_binary():
    script = REPO / "scripts" / "build-ferretdb.sh"
    with alarm_paused():  # the first build takes minutes; it is cached afterwards
        out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        pytest.fail(f"build-ferretdb.sh failed: {out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


class MongoServer:
    """A MongoDB-wire server for the tests: external URL, local mongod or local FerretDB."""

    def __init__(self, url, kind, proc=None, datadir=None, argv=None, port=None, log=None):
        self.url = url
        self.kind = kind
        self.proc = proc
        self.datadir = datadir
        self.argv = argv
        self.port = port
        self.log = log
        self._client = None

    @classmethod
    def external(cls, url):
        server = cls(url, "external")
        server.wait_ready()
        return server

    @classmethod
    def start_local(cls, workdir, prefer_ferretdb=False):
        workdir = pathlib.Path(workdir)
        datadir = workdir / "mongo-data"
        datadir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        mongod = shutil.which("mongod")
        if mongod and not prefer_ferretdb:
            argv = [mongod, "--dbpath", str(datadir), "--port", str(port), "--bind_ip", "127.0.0.1"]
            kind = "mongod"
        else:
            argv = [_ferretdb_binary(), "--handler=sqlite", f"--sqlite-url=file:{datadir}/",
                    f"--listen-addr=127.0.0.1:{port}", "--state-dir=-", "--debug-addr=-",
                    "--telemetry=disable", "--log-level=warn"]
            kind = "ferretdb"
        url = f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=2000"
        server = cls(url, kind, datadir=datadir, argv=argv, port=port, log=workdir / f"{kind}.log")
        server.start()
        return server

    def start(self):
        assert self.argv, "an external server cannot be started"
        self.proc = _spawn(self.argv, self.log)
        self.wait_ready()

    def stop(self, grace=1.0):
        """Stops the server; committed data survives (an outage, not a wipe)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        _stop_process(self.proc, grace)
        self.proc = None

    def wait_ready(self, timeout=30):
        def ping():
            if self.proc is not None and self.proc.poll() is not None:
                log = self.log.read_text(errors="replace")[-2000:] if self.log else ""
                raise AssertionError(f"{self.kind} exited with {self.proc.returncode}: {log}")
            try:
                self.client().admin.command("ping")
                return True
            except Exception:
                return False

        wait_until(ping, timeout, interval=0.1, what=f"{self.kind} at {self.url}")

    def client(self):
        _require_pymongo()
        if self._client is None:
            # 'unspecified': UUIDs come back as Binary with their subtype, so layout checks see it.
            self._client = pymongo.MongoClient(self.url, uuidRepresentation="unspecified",
                                               serverSelectionTimeoutMS=3000)
        return self._client

    def is_ferretdb(self):
        if self.kind == "ferretdb":
            return True
        try:
            return "ferretdbVersion" in self.client().admin.command("buildInfo")
        except Exception:
            return False


def _require_pymongo():
    # Failing (not skipping) keeps a run without pymongo from passing with no MongoDB test run.
    if pymongo is None:
        pytest.fail("python3-pymongo is required for the mongo backend "
                    "(apt-get install python3-pymongo, or pip install -r requirements.txt); "
                    "deselect with -k 'not mongo' to run the SQLite tests only")


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory):
    _require_pymongo()
    url = os.environ.get("IOT_MANAGER_TEST_MONGO_URL")
    if url:
        yield MongoServer.external(url)
        return
    server = MongoServer.start_local(tmp_path_factory.mktemp("mongo"))
    yield server
    server.stop()


@pytest.fixture
def dedicated_mongo(tmp_path):
    """A MongoDB-wire server of the test's own, which the test may stop and restart."""
    _require_pymongo()
    server = MongoServer.start_local(tmp_path / "dedicated")
    yield server
    with alarm_paused():
        server.stop()


# --------------------------------------------------------------------------------------------
# The service under test
# --------------------------------------------------------------------------------------------

class Service:
    """One iot-manager process (restartable) on a fixed loopback port with its own store."""

    def __init__(self, backend, workdir, mongo=None, env=None, dbname=None):
        self.backend = backend
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mongo = mongo
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.sqlite_path = self.workdir / "iot-manager.db"
        self.dbname = dbname or f"iotm_test_{uuid.uuid4().hex[:12]}"
        self.log_path = self.workdir / "iot-manager.stderr.log"
        self.stdout_path = self.workdir / "iot-manager.stdout.log"
        _SERVICE_LOGS.extend([self.log_path, self.stdout_path])
        self.proc = None
        self.log_offset = 0
        self.checker = response_checker()
        self.api = ApiClient("127.0.0.1", self.port, self.checker)
        self.env = self.default_env()
        self.env.update({k: v for k, v in (env or {}).items() if v is not None})
        for k, v in (env or {}).items():
            if v is None:
                self.env.pop(k, None)
        for k, v in self.env.items():
            if k.endswith(("_ENCRYPTION_KEY", "_FALLBACK_KEY")) and v and len(v) >= 12:
                _SECRETS.add(v)
        self.args = ["server"]

    def default_env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("IOT_MANAGER_")}
        env.update({
            "IOT_MANAGER_LISTEN": f"127.0.0.1:{self.port}",
            "IOT_MANAGER_DOMAIN_WHITELIST": WHITELIST,
            "IOT_MANAGER_AES_ENCRYPTION_KEY": TEST_AES_KEY,
            # libmongoc initialises itself in a library constructor, before main(), and then
            # prints a raw warning when a killed process left /dev/shm/mongoc-<pid> behind
            # (tests kill processes on purpose). The image and run-local.sh set it too.
            "MONGOC_DISABLE_SHM": "1",
        })
        if self.backend == "sqlite":
            env["IOT_MANAGER_SQLITE_PATH"] = str(self.sqlite_path)
        else:
            env["IOT_MANAGER_MONGO_URL"] = self.mongo.url
            env["IOT_MANAGER_MONGO_DBNAME"] = self.dbname
        return env

    # ---- process control

    def start(self, args=None, env=None, wait=True):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if not os.access(BIN, os.X_OK):
            pytest.fail(f"no iot-manager binary at {BIN}: build it (cmake --build build "
                        f"--target iot-manager) or set IOT_MANAGER_BIN")
        if args is not None:
            self.args = list(args)
        if env is not None:
            self.set_env(env)
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.proc = _spawn([BIN, *self.args], self.stdout_path, err=self.log_path, env=self.env)
        if wait:
            self.wait_alive()
        return self

    def set_env(self, env):
        for k, v in env.items():
            if v is None:
                self.env.pop(k, None)
            else:
                self.env[k] = v

    def wait_alive(self, timeout=ALIVE_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"iot-manager exited with {self.proc.returncode} before "
                                     f"answering /alive:\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", f"{INTERNAL}/alive")
                status = conn.getresponse().status
                conn.close()
                if status == 204:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"iot-manager did not answer /alive within {timeout:.0f} s:\n"
                                     f"{self.log_tail()}")
            time.sleep(0.02)

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Signals the process and waits; returns its exit code (killed after `timeout`)."""
        if self.proc is None:
            return None
        if not _stop_process(self.proc, timeout, sig):
            raise AssertionError(f"iot-manager did not exit within {timeout} s of {sig!r}")
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self, env=None, args=None):
        code = self.stop()
        assert code == 0, f"iot-manager exited with {code} on SIGTERM:\n{self.log_tail()}"
        return self.start(args=args, env=env)

    def wait_exit(self, timeout=15):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"iot-manager still running after {timeout} s:\n{self.log_tail()}")

    def cli(self, *args, env=None, timeout=30):
        """Runs a one-shot subcommand (migrate, re-encrypt, version...) with the service's env."""
        run_env = dict(self.env)
        for k, v in (env or {}).items():
            if v is None:
                run_env.pop(k, None)
            else:
                run_env[k] = v
        return subprocess.run([BIN, *args], env=run_env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    # ---- logs

    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n=4000):
        return self.log_text()[-n:]

    def log_lines(self):
        return [line for line in self.log_text().splitlines() if line.strip()]

    # ---- API

    def user(self, tenant=""):
        return User(self.api, tenant)

    # ---- direct store access (layout checks, linking devices as provisioning would)

    @property
    def db(self):
        assert self.backend == "mongo"
        return self.mongo.client()[self.dbname]

    def sqlite(self):
        assert self.backend == "sqlite"
        con = sqlite3.connect(str(self.sqlite_path), timeout=5)
        return con

    def link_device(self, tenant, device_id, integration_id):
        iid = uuid.UUID(integration_id)
        if self.backend == "mongo":
            self.db.devices.update_one({"_id": device_id, "tenant_id": tenant},
                                       {"$addToSet": {"integration_ids": Binary(iid.bytes, 4)}},
                                       upsert=True)
        else:
            with contextlib.closing(self.sqlite()) as con, con:
                con.execute("INSERT OR IGNORE INTO devices(tenant_id, id) VALUES (?, ?)",
                            (tenant, device_id))
                # Idempotent, like the $addToSet above.
                con.execute("INSERT OR IGNORE INTO device_integrations(tenant_id, device_id, "
                            "integration_id) VALUES (?, ?, ?)", (tenant, device_id, iid.bytes))

    def add_device(self, tenant, device_id):
        """A device record linked to no integration (what the sync job or a re-link leaves)."""
        if self.backend == "mongo":
            self.db.devices.update_one({"_id": device_id, "tenant_id": tenant},
                                       {"$setOnInsert": {"integration_ids": []}}, upsert=True)
        else:
            with contextlib.closing(self.sqlite()) as con, con:
                con.execute("INSERT OR IGNORE INTO devices(tenant_id, id) VALUES (?, ?)",
                            (tenant, device_id))

    def unlink_device(self, tenant, device_id):
        if self.backend == "mongo":
            self.db.devices.delete_one({"_id": device_id, "tenant_id": tenant})
        else:
            with contextlib.closing(self.sqlite()) as con, con:
                con.execute("DELETE FROM device_integrations WHERE tenant_id = ? AND device_id = ?",
                            (tenant, device_id))
                con.execute("DELETE FROM devices WHERE tenant_id = ? AND id = ?", (tenant, device_id))

    def stored_counts(self):
        """Records per collection/table that hold tenant data (migration bookkeeping excluded)."""
        counts = {}
        if self.backend == "mongo":
            for name in self.db.list_collection_names():
                if name != "migration_info":
                    counts[name] = self.db[name].count_documents({})
            return counts
        if not self.sqlite_path.exists():
            return counts
        with contextlib.closing(self.sqlite()) as con:
            tables = [r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
            for t in tables:
                cols = [r[1] for r in con.execute(f'PRAGMA table_info("{t}")')]
                if "tenant_id" in cols:
                    counts[t] = con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
        return counts

    def snapshot(self):
        """Every stored record of tenant data, in a comparable form."""
        snap = {}
        if self.backend == "mongo":
            for name in sorted(self.db.list_collection_names()):
                if name != "migration_info":
                    snap[name] = sorted(repr(sorted(d.items())) for d in self.db[name].find())
            return snap
        with contextlib.closing(self.sqlite()) as con:
            tables = [r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
            for t in sorted(tables):
                cols = [r[1] for r in con.execute(f'PRAGMA table_info("{t}")')]
                if "tenant_id" in cols:
                    snap[t] = sorted(repr(r) for r in con.execute(f'SELECT * FROM "{t}"'))
        return snap

    def check(self, method, path, resp):
        """Validates a response obtained outside ApiClient (raw sockets) against the specs."""
        self.checker.check(method, path, resp)
        return resp

    def assert_nothing_stored(self):
        counts = self.stored_counts()
        assert all(v == 0 for v in counts.values()), f"records were stored: {counts}"

    def assert_secret_absent(self, *secrets):
        """No response (body or header) and no log line carries any of `secrets`."""
        secrets = [s for s in secrets if s]
        for method, path, resp in self.api.history:
            blob = resp.body.decode("utf-8", "replace") + "\n" + "\n".join(
                f"{k}: {v}" for k, v in resp.headers.items())
            for s in secrets:
                assert s not in blob, f"secret leaked in the response to {method} {path}"
        log = self.log_text() + (self.stdout_path.read_text(errors="replace")
                                 if self.stdout_path.exists() else "")
        for s in secrets:
            assert s not in log, "secret leaked in the service's output"

    def close(self):
        with alarm_paused():
            self.kill()
            running = self.mongo is not None and (self.mongo.kind == "external"
                                                   or self.mongo.proc is not None)
            if self.backend == "mongo" and running:
                with contextlib.suppress(Exception):
                    self.mongo.client().drop_database(self.dbname)


@pytest.fixture(params=["sqlite", "mongo"])
def backend(request):
    if request.param == "sqlite" and request.node.get_closest_marker("mongo_only"):
        pytest.skip("MongoDB layout only")
    if request.param == "mongo" and request.node.get_closest_marker("sqlite_only"):
        pytest.skip("embedded store only")
    return request.param


@pytest.fixture
def service_factory(request, backend, tmp_path):
    """make(env=None, start=True, args=None, workdir=None, mongo=None, dbname=None) -> Service.

    `env` values of None remove the variable. Every Service made is killed at the end."""
    made = []

    def make(env=None, start=True, args=None, workdir=None, mongo=None, dbname=None):
        server = mongo
        if backend == "mongo" and server is None:
            server = request.getfixturevalue("mongo_server")
        svc = Service(backend, workdir or tmp_path / f"svc{len(made)}", mongo=server, env=env,
                      dbname=dbname)
        made.append(svc)
        if start:
            svc.start(args=args)
        return svc

    yield make
    for svc in made:
        svc.close()


@pytest.fixture
def service(service_factory):
    return service_factory()


# --------------------------------------------------------------------------------------------
# IoT Hub simulator (tests/sim, `iothub-sim`): one per session, reset before each test using it
# --------------------------------------------------------------------------------------------

SIM_BIN = os.environ.get("IOTHUB_SIM", str(pathlib.Path(BIN).parent / "iothub-sim"))
HUB_API_VERSION = "api-version=2021-04-12"
# (name, primary key, secondary key, permissions), keys fixed so failures are reproducible.
SIM_OWNER = ("iothubowner", b64(hashlib.sha256(b"sim owner primary").digest()),
             b64(hashlib.sha256(b"sim owner secondary").digest()),
             "RegistryRead,RegistryWrite,ServiceConnect")
SIM_READ_ONLY = ("registryRead", b64(hashlib.sha256(b"sim reader primary").digest()),
                 b64(hashlib.sha256(b"sim reader secondary").digest()), "RegistryRead")


class _PortFileSim:
    """A simulator process (iothub-sim, mender_sim.py) that writes the port it listens on, and a
    newline, to a port file."""

    def __init__(self, workdir):
        self.workdir = pathlib.Path(workdir)
        self.proc = None
        self.port = None

    def _launch(self, argv, port_file, log_name, name):
        """Starts `argv` (logging to `log_name` in the work directory) and waits for its port;
        fails with the end of its log when it exits first."""
        log = self.workdir / log_name
        self.proc = _spawn(argv, log)

        def port():
            if self.proc.poll() is not None:
                raise AssertionError(f"{name} exited with {self.proc.returncode}: "
                                     + log.read_text()[-2000:])
            text = port_file.read_text() if port_file.exists() else ""
            return int(text) if text.endswith("\n") else None

        self.port = wait_until(port, 10, what=f"{name}'s port file")

    def stop(self):
        _stop_process(self.proc)


def _session_process(name, cls, dirname):
    """A session fixture `name`: a `cls` simulator started in a fresh directory named `dirname`
    on first use and stopped at session end."""

    @pytest.fixture(scope="session", name=name)
    def process(tmp_path_factory):
        sim = cls(tmp_path_factory.mktemp(dirname)).start()
        yield sim
        sim.stop()

    return process


def _reset_session_process(process, name):
    """A session-wide simulator, reset for the next test (which fails if it died earlier)."""
    if process.proc.poll() is not None:
        pytest.fail(f"{name} died during an earlier test")
    process.reset()
    return process


def hub_sas_token(host, policy_name, key_b64, ttl=3600):
    """A service SAS token as Azure documents it (azure-iothub.md §1.3)."""
    se = str(int(time.time()) + ttl)
    sr = urllib.parse.quote(host, safe="")
    mac = hmac.new(base64.b64decode(key_b64), f"{sr}\n{se}".encode(), hashlib.sha256).digest()
    sig = urllib.parse.quote(b64(mac), safe="")
    return f"SharedAccessSignature sr={sr}&sig={sig}&se={se}&skn={policy_name}"


class IotHubSim(_PortFileSim):
    """The iothub-sim process (HTTPS with a throwaway CA) and helpers for its APIs."""

    def __init__(self, workdir, policies=None):
        super().__init__(workdir)
        # (name, primary, secondary, permissions) of each shared access policy; a test may start
        # a simulator of its own with more (e.g. one policy per tenant, as Mender's tests do).
        self.policies = list(policies) if policies is not None else [SIM_OWNER, SIM_READ_ONLY]
        self.certs = self.workdir / "certs"
        self.ca = str(self.certs / "ca.pem")

    def start(self):
        if not os.access(SIM_BIN, os.X_OK):
            pytest.fail(f"no iothub-sim binary at {SIM_BIN}: build the iothub-sim target or set "
                        f"IOTHUB_SIM")
        with alarm_paused():
            out = subprocess.run(["bash", str(REPO / "scripts" / "gen-test-certs.sh"),
                                  str(self.certs)], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            pytest.fail(f"gen-test-certs.sh failed: {out.stderr[-2000:]}")
        port_file = self.workdir / "port"
        with contextlib.suppress(FileNotFoundError):
            port_file.unlink()
        argv = [SIM_BIN, "--cert", str(self.certs / "server.pem"),
                "--key", str(self.certs / "server.key"), "--port-file", str(port_file), "--quiet"]
        for policy in self.policies:
            argv += ["--policy", ":".join(policy)]
        self._launch(argv, port_file, "iothub-sim.log", "iothub-sim")
        self.ctx = ssl.create_default_context(cafile=self.ca)
        return self

    @property
    def host(self):
        """The HostName of the simulated hub (resolves through /etc/hosts)."""
        return f"localhost:{self.port}"

    def conn_str(self, policy=SIM_OWNER, key=None, host=None):
        return (f"HostName={host or self.host};SharedAccessKeyName={policy[0]};"
                f"SharedAccessKey={key or policy[1]}")

    def integration(self, policy=SIM_OWNER, key=None, host=None, description=None):
        return sas_integration(cs=self.conn_str(policy, key, host), description=description)

    # ---- raw HTTPS

    def _request(self, method, path, body=None, headers=None, timeout=10):
        h = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json; charset=utf-8"
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx,
                                           timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            return Response(r.status, r.reason, r.headers, r.read())
        finally:
            conn.close()

    def call(self, method, path, body=None, headers=None, policy=SIM_OWNER):
        """A service-API call, authorised with a SAS token of `policy`."""
        h = {"Authorization": hub_sas_token(self.host, policy[0], policy[1])}
        h.update(headers or {})
        sep = "&" if "?" in path else "?"
        return self._request(method, f"{path}{sep}{HUB_API_VERSION}", body, h)

    def control(self, method, path, body=None):
        r = self._request(method, f"/_sim/{path}", body)
        assert r.status == 200, f"/_sim/{path}: {r}"
        return r.json()

    # ---- control API

    def reset(self):
        self.control("POST", "reset")
        self.control("POST", "config", {"latency_ms": 0, "throttle": False})

    def requests(self, since=0):
        return self.control("GET", f"requests?since={since}")["requests"]

    def last_seq(self):
        log = self.requests()
        return log[-1]["seq"] if log else 0

    def twin_writes(self, since=0):
        """Logged PUT/PATCH calls on /twins/... after `since`."""
        return [e for e in self.requests(since)
                if e["method"] in ("PUT", "PATCH") and e["path"].startswith("/twins/")]

    def fault(self, **rule):
        return self.control("POST", "faults", rule)

    def clear_faults(self):
        self.control("DELETE", "faults")

    def twin(self, device_id):
        """The stored twin (control API, not logged), or None."""
        r = self._request("GET", f"/_sim/devices/{urllib.parse.quote(device_id, safe='')}")
        if r.status == 404:
            return None
        assert r.status == 200, r
        return r.json()["twin"]

    def desired(self, device_id):
        """The twin's desired properties without $metadata/$version."""
        props = self.twin(device_id)["properties"]["desired"]
        return {k: v for k, v in props.items() if not k.startswith("$")}

    def device_exists(self, device_id):
        return self.twin(device_id) is not None

    def create_device(self, device_id, tags=None):
        """Creates the identity (as provisioning would) and optionally tags its twin."""
        quoted = urllib.parse.quote(device_id, safe="")
        r = self.call("PUT", f"/devices/{quoted}", {"deviceId": device_id})
        assert r.status == 200, r
        if tags is not None:
            r = self.call("PATCH", f"/twins/{quoted}", {"tags": tags}, headers={"If-Match": "*"})
            assert r.status == 200, r
        return r.json()

    def set_desired(self, device_id, desired):
        """Merges desired properties behind the service's back (another writer)."""
        quoted = urllib.parse.quote(device_id, safe="")
        r = self.call("PATCH", f"/twins/{quoted}", {"properties": {"desired": desired}})
        assert r.status == 200, r
        return r.json()

    def set_reported(self, device_id, reported):
        """Merges reported properties as the device would."""
        return self.control("POST", f"devices/{urllib.parse.quote(device_id, safe='')}/reported",
                            reported)


_iothub_sim_process = _session_process("_iothub_sim_process", IotHubSim, "iothub-sim")


@pytest.fixture
def iothub_sim(_iothub_sim_process):
    """The session's simulator with no devices, faults, latency or request log."""
    return _reset_session_process(_iothub_sim_process, "iothub-sim")


def hub_env(sim):
    """Service settings for talking to the simulator (localhost is already whitelisted)."""
    return {"IOT_MANAGER_HUB_CA_FILE": sim.ca, "IOT_MANAGER_HUB_ALLOW_PRIVATE_ADDRESSES": "true"}


@pytest.fixture
def hub_service_factory(service_factory, iothub_sim):
    """make(env=None, **kw) -> a Service talking to the simulator, with `env` on top."""

    def make(env=None, **kw):
        merged = hub_env(iothub_sim)
        merged.update(env or {})
        return service_factory(env=merged, **kw)

    return make


@pytest.fixture
def hub_service(hub_service_factory):
    return hub_service_factory()


def create_sim_integration(user, sim, **kw):
    """Creates the tenant's iot-hub integration for the simulator; returns its id."""
    r = user.create(sim.integration(**kw))
    assert r.status == 201, r
    return r.header("Location").rsplit("/", 1)[1]


def new_device_id():
    return str(uuid.uuid4())


def provision_twin_device(service, sim, tenant, iid, device_id=None, tags=None):
    """What provisioning leaves behind: the hub identity (tagged {"mender": true} like Mender)
    and the device's link to the integration in our store."""
    device_id = device_id or new_device_id()
    sim.create_device(device_id, tags={"mender": True} if tags is None else tags)
    service.link_device(tenant, device_id, iid)
    return device_id


# --------------------------------------------------------------------------------------------
# Signed JWTs for verify mode (RS256 / EdDSA with integer kid, as useradm issues them)
# --------------------------------------------------------------------------------------------

USERADM_ISSUER = "mender.useradm"


def useradm_claims(tenant="", roles=None, sub=None, lifetime=3600, **extra):
    """A user token's claims as useradm writes them (mender-clients.md §5.1), plus roles."""
    now = int(time.time())
    claims = {"jti": str(uuid.uuid4()), "sub": sub or str(uuid.uuid4()), "exp": now + lifetime,
              "iat": now, "nbf": now, "iss": USERADM_ISSUER, "scp": "mender.*",
              "mender.user": True}
    if tenant:
        claims["mender.tenant"] = tenant
    if roles is not None:
        claims["mender.roles"] = list(roles)
    claims.update(extra)
    return claims


class JwtKeys:
    """useradm-like signing keys: RSA (kid 0) and Ed25519 (kid 1) whose public PEMs the service
    is configured with, and an RSA key it does not know (forgeries)."""

    RSA_KID = 0
    ED_KID = 1

    def __init__(self, workdir):
        if ed25519 is None:
            pytest.fail("python3-cryptography is required for the verify-mode tests")
        self.dir = pathlib.Path(workdir)
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_ed = ed25519.Ed25519PrivateKey.generate()
        self.rsa_pem = self.dir / "useradm-0.pem"
        self.ed_pem = self.dir / "useradm-1.pem"
        self.rsa_public_pem = self._public_pem(self.rsa)
        self.rsa_pem.write_bytes(self.rsa_public_pem)
        self.ed_pem.write_bytes(self._public_pem(self.ed))

    @staticmethod
    def _public_pem(key):
        return key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)

    def env(self, **extra):
        """Service settings for verify mode with both keys."""
        env = {"IOT_MANAGER_AUTH_MODE": "verify",
               "IOT_MANAGER_JWT_KEYS": f"{self.RSA_KID}={self.rsa_pem} {self.ED_KID}={self.ed_pem}"}
        env.update(extra)
        return env

    @staticmethod
    def assemble(header, claims, sign):
        """header.claims.signature; `sign` maps the signing input to signature bytes."""
        head = b64url(json.dumps(header).encode())
        body = b64url(json.dumps(claims).encode())
        signing_input = f"{head}.{body}".encode()
        return f"{head}.{body}.{b64url(sign(signing_input))}"

    @staticmethod
    def rsa_signer(key):
        return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    @staticmethod
    def ed_signer(key):
        return key.sign

    def rs256(self, claims, kid=RSA_KID, key=None, header=None):
        head = header or {"alg": "RS256", "kid": kid, "typ": "JWT"}
        return self.assemble(head, claims, self.rsa_signer(key or self.rsa))

    def eddsa(self, claims, kid=ED_KID, key=None, header=None):
        head = header or {"alg": "EdDSA", "kid": kid, "typ": "JWT"}
        return self.assemble(head, claims, self.ed_signer(key or self.ed))


@pytest.fixture(scope="session")
def jwt_keys(tmp_path_factory):
    return JwtKeys(tmp_path_factory.mktemp("jwt-keys"))


# --------------------------------------------------------------------------------------------
# NATS JetStream (nats-server) and the Mender services simulator (tests/sim/mender_sim.py)
# --------------------------------------------------------------------------------------------

NATS_SERVER_BIN = os.environ.get("NATS_SERVER", "/usr/sbin/nats-server")  # not on every PATH
MENDER_SIM = REPO / "tests" / "sim" / "mender_sim.py"


class NatsServer:
    """One nats-server with JetStream on free loopback ports and its own store directory.
    stop()/start() keep port and store, so a restart is an outage, not a wipe."""

    def __init__(self, workdir):
        self.workdir = pathlib.Path(workdir)
        self.store = self.workdir / "jetstream-store"
        self.store.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.monitor_port = free_port()
        self.log = self.workdir / "nats-server.log"
        self.proc = None

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    def start(self):
        if not os.access(NATS_SERVER_BIN, os.X_OK):
            pytest.fail(f"no nats-server at {NATS_SERVER_BIN} (apt-get install nats-server, or "
                        f"set NATS_SERVER)")
        argv = [NATS_SERVER_BIN, "-a", "127.0.0.1", "-js", "-sd", str(self.store),
                "-p", str(self.port), "-m", str(self.monitor_port)]
        self.proc = _spawn(argv, self.log)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"nats-server exited with {self.proc.returncode}: "
                                     + self.log.read_text(errors="replace")[-2000:])
            try:
                return self._get("/healthz?js-enabled-only=true", timeout=1)[0] == 200
            except OSError:
                return False

        wait_until(ready, 10, interval=0.02, what="nats-server")
        return self

    def stop(self):
        """SIGTERM (nats-server 2.9 exits with 1 on it), then SIGKILL after a grace period."""
        _stop_process(self.proc)
        self.proc = None

    def _get(self, path, timeout=5):
        conn = http.client.HTTPConnection("127.0.0.1", self.monitor_port, timeout=timeout)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def streams(self):
        """{stream name: its state (messages, first_seq, last_seq, ...)} from /jsz."""
        status, body = self._get("/jsz?accounts=true&streams=true")
        assert status == 200, body
        out = {}
        for account in json.loads(body).get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                out[stream["name"]] = stream.get("state") or {}
        return out

    def stream_messages(self, name):
        return (self.streams().get(name) or {}).get("messages", 0)


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory):
    """A nats-server shared by the tests of one module (tests use their own tenants/devices)."""
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    with alarm_paused():
        server.stop()


@pytest.fixture
def dedicated_nats(tmp_path):
    """A nats-server of the test's own, which the test may stop and restart."""
    server = NatsServer(tmp_path / "nats").start()
    yield server
    with alarm_paused():
        server.stop()


class MenderSim(_PortFileSim):
    """tests/sim/mender_sim.py: workflows, deviceconfig and deviceauth on one loopback port."""

    def start(self):
        port_file = self.workdir / "port"
        self._launch([os.environ.get("PYTHON", "python3"), str(MENDER_SIM),
                      "--port-file", str(port_file), "--quiet"], port_file, "mender-sim.log",
                     "mender_sim.py")
        return self

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def _call(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            text = r.read()
            return r.status, (json.loads(text) if text else None)
        finally:
            conn.close()

    def reset(self):
        status, _ = self._call("POST", "/_sim/reset")
        assert status in (200, 204), status

    def requests(self):
        status, body = self._call("GET", "/_sim/requests")
        assert status == 200, body
        return body["requests"]

    def workflow_requests(self, name="provision_external_device"):
        return [r for r in self.requests()
                if r["method"] == "POST" and r["path"] == f"/api/v1/workflow/{name}"]

    def configuration(self, tenant, device_id):
        """{"configured", "deployments", "deployment_ids", "deployed"} or None."""
        path = (f"/_sim/configurations/{urllib.parse.quote(tenant, safe='')}/"
                f"{urllib.parse.quote(device_id, safe='')}")
        status, body = self._call("GET", path)
        if status == 404:
            return None
        assert status == 200, body
        return body

    def jobs(self):
        status, body = self._call("GET", "/_sim/jobs")
        assert status == 200, body
        return body["jobs"]

    def fault(self, **rule):
        status, body = self._call("POST", "/_sim/faults", rule)
        assert status in (200, 201, 204), body
        return body


_mender_sim_process = _session_process("_mender_sim_process", MenderSim, "mender-sim")


@pytest.fixture
def mender_sim(_mender_sim_process):
    """The session's Mender simulator with no requests, configurations, jobs or faults."""
    return _reset_session_process(_mender_sim_process, "mender_sim.py")


def lifecycle_env(nats, msim, **extra):
    """Service settings for the lifecycle pipeline against `nats` and the Mender simulator."""
    env = {
        "IOT_MANAGER_NATS_URI": nats.url if nats is not None else None,
        "IOT_MANAGER_WORKFLOWS_URL": msim.url,
        "IOT_MANAGER_DEVICECONFIG_URL": msim.url,
        "IOT_MANAGER_DEVICEAUTH_URL": msim.url,
        "IOT_MANAGER_WORKERS": "2",
        "IOT_MANAGER_HUB_RATELIMIT": "false",
    }
    env.update(extra)
    return env


def device_sas_token(host, device_id, key_b64, ttl=3600):
    """A device SAS token (no policy name), as an Azure device SDK signs it."""
    se = str(int(time.time()) + ttl)
    sr = urllib.parse.quote(f"{host}/devices/{device_id}", safe="")
    mac = hmac.new(base64.b64decode(key_b64), f"{sr}\n{se}".encode(), hashlib.sha256).digest()
    return f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(b64(mac), safe='')}&se={se}"
