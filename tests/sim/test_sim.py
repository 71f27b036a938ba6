"""Tests of the iothub-sim IoT Hub simulator against azure-iothub.md.

Run:  IOTHUB_SIM=/path/to/build/iothub-sim python3 -m pytest -q tests/sim/test_sim.py

The module builds nothing: it needs the simulator binary (env IOTHUB_SIM) and the openssl CLI
(scripts/gen-test-certs.sh). Every HTTP call has a short timeout and every wait is bounded, so
a hung simulator fails the test instead of hanging it.
"""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import tempfile
import threading
import time
import urllib.parse

import pytest
import requests

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
API = "api-version=2021-04-12"
HTTP_TIMEOUT = 5  # seconds, per request

# Fixed policies: (name, primary, secondary, perms).
OWNER = ("iothubowner", base64.b64encode(bytes(range(32))).decode(),
         base64.b64encode(bytes(range(32, 64))).decode(),
         "RegistryRead,RegistryWrite,ServiceConnect")
READER = ("registryRead", base64.b64encode(b"r" * 32).decode(),
          base64.b64encode(b"s" * 32).decode(), "RegistryRead")
SERVICE = ("service", base64.b64encode(b"v" * 32).decode(),
           base64.b64encode(b"w" * 32).decode(), "ServiceConnect")
WRITER = ("registryReadWrite", base64.b64encode(b"x" * 32).decode(),
          base64.b64encode(b"y" * 32).decode(), "RegistryRead,RegistryWrite")
POLICIES = [OWNER, READER, SERVICE, WRITER]


def sign(sr, key_b64, se):
    """base64(HMAC-SHA256(b64decode(key), sr + "\\n" + se)): azure-iothub.md §1.3."""
    mac = hmac.new(base64.b64decode(key_b64), f"{sr}\n{se}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def sas(sr, key_b64, se, skn=None, quote_sig=True):
    sig = sign(sr, key_b64, se)
    if quote_sig:
        sig = urllib.parse.quote(sig, safe="")
    token = f"SharedAccessSignature sr={sr}&sig={sig}&se={se}"
    return token + (f"&skn={skn}" if skn is not None else "")


def wait_for(predicate, timeout=10.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


def sim_binary():
    path = os.environ.get("IOTHUB_SIM")
    if not path:
        pytest.fail("set IOTHUB_SIM to the iothub-sim binary (e.g. build/iothub-sim)")
    if not os.access(path, os.X_OK):
        pytest.fail(f"IOTHUB_SIM={path} is not an executable file: build target iothub-sim")
    return path


@pytest.fixture(scope="module")
def certs():
    with tempfile.TemporaryDirectory(prefix="iothub-sim-certs-") as d:
        subprocess.run([os.path.join(REPO, "scripts", "gen-test-certs.sh"), d], check=True,
                       timeout=60)
        yield d


class Sim:
    """One running simulator process and helpers to talk to it."""

    def __init__(self, certs, extra_args=(), policies=POLICIES):
        self.ca = os.path.join(certs, "ca.pem")
        self.dir = tempfile.mkdtemp(prefix="iothub-sim-")
        port_file = os.path.join(self.dir, "port")
        args = [sim_binary(), "--cert", os.path.join(certs, "server.pem"),
                "--key", os.path.join(certs, "server.key"), "--port-file", port_file,
                "--quiet"]
        for p in policies:
            args += ["--policy", ":".join(p)]
        args += list(extra_args)
        self.stdout = open(os.path.join(self.dir, "stdout"), "w+")
        self.proc = subprocess.Popen(args, stdout=self.stdout, stderr=subprocess.STDOUT)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"iothub-sim exited with {self.proc.returncode}: "
                                   + open(self.stdout.name).read())
            try:
                with open(port_file) as f:
                    text = f.read()
                return text if text.endswith("\n") else None
            except FileNotFoundError:
                return None

        text = wait_for(ready, timeout=10)
        if not text:
            self.stop()
            raise RuntimeError("iothub-sim did not write its port file within 10 s")
        self.port = int(text)
        self.host = f"localhost:{self.port}"
        self.base = f"https://localhost:{self.port}"
        self.http = requests.Session()
        # REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE in the environment would override session.verify,
        # and a proxy variable would divert loopback traffic.
        self.http.trust_env = False
        self.http.verify = self.ca

    def stop(self):
        """Stops the simulator; fails if it did not exit cleanly (this is also where an
        AddressSanitizer/UBSan build reports leaks and errors)."""
        crashed = self.proc.poll() is not None
        if not crashed:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.stdout.close()
        with open(self.stdout.name) as f:
            output = f.read()
        assert not crashed, f"iothub-sim died during the test:\n{output}"
        assert self.proc.returncode == 0, f"iothub-sim exit {self.proc.returncode}:\n{output}"
        for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            assert marker not in output, output

    # --- tokens ------------------------------------------------------------------------
    def token(self, policy=OWNER, key=None, se=None, sr=None, skn=None):
        se = int(time.time()) + 3600 if se is None else se
        sr = urllib.parse.quote(self.host, safe="") if sr is None else sr
        return sas(sr, key or policy[1], se, skn or policy[0])

    def device_token(self, device_id, key, se=None, sr=None):
        se = int(time.time()) + 3600 if se is None else se
        if sr is None:
            sr = urllib.parse.quote(f"{self.host}/devices/{device_id}", safe="")
        return sas(sr, key, se)

    # --- requests ----------------------------------------------------------------------
    def call(self, method, path, body=None, token=None, headers=None, api=API, raw=None,
             timeout=HTTP_TIMEOUT):
        h = {"Authorization": token if token is not None else self.token()}
        if token == "":
            del h["Authorization"]
        if body is not None or raw is not None:
            h["Content-Type"] = "application/json; charset=utf-8"
        h.update(headers or {})
        sep = "&" if "?" in path else "?"
        url = self.base + path + (sep + api if api else "")
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        return self.http.request(method, url, data=data, headers=h, timeout=timeout)

    def control(self, method, path, body=None):
        r = self.http.request(method, self.base + "/_sim/" + path,
                              data=json.dumps(body) if body is not None else None,
                              timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, r.text
        return r.json()

    def create(self, device_id, body=None):
        body = body or {"deviceId": device_id}
        r = self.call("PUT", "/devices/" + urllib.parse.quote(device_id, safe=""), body)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def sim_proc(certs):
    s = Sim(certs)
    yield s
    s.stop()


@pytest.fixture
def sim(sim_proc):
    sim_proc.control("POST", "reset")
    sim_proc.control("POST", "config", {"latency_ms": 0, "throttle": False})
    return sim_proc


def legacy_error(r, status, name):
    """Azure's legacy error: status, iothub-errorcode header, Message 'ErrorCode:<name>;...'."""
    assert r.status_code == status, r.text
    assert r.headers.get("iothub-errorcode") == name
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    body = r.json()
    assert body["Message"].startswith(f"ErrorCode:{name};"), body
    assert body["ExceptionMessage"].startswith("Tracking ID:"), body
    return body


def bare_error(r, status=400, name="ArgumentInvalid", number=400004):
    assert r.status_code == status, r.text
    assert r.headers.get("iothub-errorcode") == name
    body = r.json()
    assert body["errorCode"] == number and body["trackingId"] and body["message"], body
    return body


# --- SAS ----------------------------------------------------------------------------------

SPEC_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # bytes 0x00..0x1f


def test_python_helper_matches_spec_vectors():
    # azure-iothub.md §1.4 (a)-(d): anchors the helper the other tests rely on.
    assert sign("uri", "cGFzc3dvcmQ=", 12345) == "kcWxXAK2OAaAoq2oCkaGzX2NMqDB8nCyNuq2fPYCDhk="
    assert sign("myhub.azure-devices.net", SPEC_KEY, 1700000000) == \
        "iIzEw6hi6GK79RY5jNXO6QeQkSL/Ax4zTmy44X2G1VY="
    assert sign("myhub.azure-devices.net", SPEC_KEY, 1700000003) == \
        "ZqCXffv78J2V+9nT/gqwU73DIWE5k+YZPhFFXyxaIFY="
    assert sign("myhub.azure-devices.net%2Fdevices%2Fdevice1", SPEC_KEY, 1700000000) == \
        "gFSfLGMXDOvf906/iaX3KwzLLNFHgaFZyCbsGjxtd1Y="


def test_spec_token_strings_accepted_verbatim(certs):
    # The exact token strings of azure-iothub.md §1.4 (b) and (c), with sig encoded the Node,
    # Python and C SDK ways; se is in 2023, so the skew is opened wide for this instance.
    owner = ("iothubowner", SPEC_KEY, base64.b64encode(b"z" * 32).decode(),
             "RegistryRead,RegistryWrite,ServiceConnect")
    s = Sim(certs, ["--hub-host", "myhub.azure-devices.net", "--token-skew-s", "2000000000"],
            policies=[owner])
    try:
        tokens = [
            "SharedAccessSignature sr=myhub.azure-devices.net&sig=iIzEw6hi6GK79RY5jNXO6QeQkSL%2F"
            "Ax4zTmy44X2G1VY%3D&se=1700000000&skn=iothubowner",
            "SharedAccessSignature sr=myhub.azure-devices.net&sig=ZqCXffv78J2V%2B9nT%2FgqwU73DIWE"
            "5k%2BYZPhFFXyxaIFY%3D&skn=iothubowner&se=1700000003",
            "SharedAccessSignature sr=myhub.azure-devices.net&sig=ZqCXffv78J2V%2B9nT/gqwU73DIWE5k"
            "%2BYZPhFFXyxaIFY%3D&se=1700000003&skn=iothubowner",
            "SharedAccessSignature sr=myhub.azure-devices.net&sig=ZqCXffv78J2V%2b9nT%2fgqwU73DIWE"
            "5k%2bYZPhFFXyxaIFY%3d&se=1700000003&skn=iothubowner",
        ]
        for t in tokens:
            r = s.call("GET", "/statistics/devices", token=t)
            assert r.status_code == 200, (t, r.text)
        # A raw '+' in sig is a space to the hub's URL decoder: rejected.
        bad = tokens[1].replace("%2B", "+")
        legacy_error(s.call("GET", "/statistics/devices", token=bad), 401,
                     "IotHubUnauthorizedAccess")
        # The original service's device-connection-string token has no skn: 401 on the
        # registry (iot-manager-contract.md §3.1/§3.2).
        t = sas("myhub.azure-devices.net", SPEC_KEY, 1700000000)
        legacy_error(s.call("GET", "/statistics/devices", token=t), 401,
                     "IotHubUnauthorizedAccess")
    finally:
        s.stop()


def test_valid_tokens_accepted(sim):
    assert sim.call("GET", "/statistics/devices").status_code == 200
    # Secondary key.
    assert sim.call("GET", "/statistics/devices",
                    token=sim.token(key=OWNER[2])).status_code == 200
    # Raw (unescaped) sr: the HMAC covers sr as sent.
    assert sim.call("GET", "/statistics/devices",
                    token=sim.token(sr=sim.host)).status_code == 200
    # Field order and field-name case do not matter.
    se = int(time.time()) + 600
    sr = urllib.parse.quote(sim.host, safe="")
    sig = urllib.parse.quote(sign(sr, OWNER[1], se), safe="")
    for t in (f"SharedAccessSignature skn=iothubowner&se={se}&sig={sig}&sr={sr}",
              f"SharedAccessSignature SR={sr}&SIG={sig}&SE={se}&SKN=iothubowner"):
        assert sim.call("GET", "/statistics/devices", token=t).status_code == 200, t
    # Clock skew: a token expired 100 s ago is still inside the default 300 s.
    assert sim.call("GET", "/statistics/devices",
                    token=sim.token(se=int(time.time()) - 100)).status_code == 200
    # Narrower policies on the routes they cover.
    assert sim.call("GET", "/statistics/devices", token=sim.token(READER)).status_code == 200
    sim.create("d1")
    assert sim.call("GET", "/twins/d1", token=sim.token(SERVICE)).status_code == 200
    r = sim.call("PUT", "/devices/d2", {"deviceId": "d2"}, token=sim.token(WRITER))
    assert r.status_code == 200
    log = sim.control("GET", "requests")["requests"]
    assert {e["auth_policy"] for e in log} >= {"iothubowner", "registryRead", "service",
                                                 "registryReadWrite"}


def test_bad_tokens_rejected(sim):
    now = int(time.time())
    wrong_key = base64.b64encode(b"q" * 32).decode()
    cases = {
        "wrong key": sim.token(key=wrong_key),
        "expired": sim.token(se=now - 3600),
        "just past the skew": sim.token(se=now - 400),
        "other host": sim.token(sr=urllib.parse.quote(f"localhost:{sim.port + 1}", safe="")),
        "other hub name": sim.token(sr="myhub.azure-devices.net"),
        "host as a non-segment prefix": sim.token(sr="localhost"),
        "unknown policy": sim.token(skn="nosuchpolicy"),
        "no skn": sas(urllib.parse.quote(sim.host, safe=""), OWNER[1], now + 600),
        "not SAS": "Bearer abc",
        "two spaces": sim.token().replace(" ", "  ", 1),
        "missing se": sim.token().split("&se=")[0] + "&skn=iothubowner",
        "garbage sig": f"SharedAccessSignature sr={sim.host}&sig=abc&se={now + 600}"
                       "&skn=iothubowner",
        "no header": "",
    }
    for why, token in cases.items():
        r = sim.call("GET", "/statistics/devices", token=token)
        body = legacy_error(r, 401, "IotHubUnauthorizedAccess")
        assert body["Message"] == "ErrorCode:IotHubUnauthorizedAccess;Unauthorized", why
    # Permissions per route: registryRead cannot write, service cannot touch the registry,
    # registryRead cannot read twins or query.
    r = sim.call("PUT", "/devices/d1", {"deviceId": "d1"}, token=sim.token(READER))
    legacy_error(r, 401, "IotHubUnauthorizedAccess")
    assert sim.call("GET", "/devices/d1", token=sim.token(SERVICE)).status_code == 401
    sim.create("d1")
    assert sim.call("GET", "/twins/d1", token=sim.token(READER)).status_code == 401
    assert sim.call("POST", "/devices/query", {"query": "SELECT * FROM devices"},
                    token=sim.token(WRITER)).status_code == 401
    assert sim.call("DELETE", "/devices/d1", token=sim.token(READER),
                    headers={"If-Match": "*"}).status_code == 401
    notes = [e.get("note", "") for e in sim.control("GET", "requests")["requests"]]
    assert "auth: signature mismatch" in notes and "auth: token expired" in notes
    assert "auth: policy lacks the permission for this route" in notes


def test_api_version_required(sim):
    r = sim.call("GET", "/statistics/devices", api=None)
    legacy_error(r, 400, "InvalidProtocolVersion")
    r = sim.call("GET", "/statistics/devices", api="api-version=2023-06-30")
    legacy_error(r, 400, "InvalidProtocolVersion")
    assert sim.call("GET", "/statistics/devices",
                    api="api-version=2020-09-30").status_code == 200


def test_unknown_route_and_method(sim):
    legacy_error(sim.call("GET", "/nothing/here"), 404, "NotFound")
    legacy_error(sim.call("PATCH", "/devices/d1", {}), 405, "MethodNotAllowed")


# --- identities ---------------------------------------------------------------------------

def test_device_lifecycle(sim):
    r = sim.call("PUT", "/devices/dev-1", {"deviceId": "dev-1"})
    assert r.status_code == 200
    dev = r.json()
    assert r.headers["ETag"] == f'"{dev["etag"]}"'
    assert dev["status"] == "enabled" and dev["statusReason"] is None
    assert dev["connectionState"] == "Disconnected"
    assert dev["authentication"]["type"] == "sas"
    for k in ("primaryKey", "secondaryKey"):
        key = dev["authentication"]["symmetricKey"][k]
        assert len(key) == 44 and len(base64.b64decode(key)) == 32
    assert len(dev["generationId"]) == 18 and dev["generationId"].isdigit()
    assert dev["statusUpdatedTime"] == "0001-01-01T00:00:00Z"
    assert dev["cloudToDeviceMessageCount"] == 0 and dev["capabilities"] == {"iotEdge": False}

    # Create-only without If-Match.
    legacy_error(sim.call("PUT", "/devices/dev-1", {"deviceId": "dev-1"}), 409,
                 "DeviceAlreadyExists")

    r = sim.call("GET", "/devices/dev-1")
    assert r.status_code == 200 and r.json() == dev
    assert r.headers["ETag"] == f'"{dev["etag"]}"'

    # Disable with a stale etag, then with the right one (full body as GET returned it).
    update = dict(dev, status="disabled", statusReason="decommissioned by test")
    legacy_error(sim.call("PUT", "/devices/dev-1", update, headers={"If-Match": '"bm9wZQ=="'}),
                 412, "PreconditionFailed")
    r = sim.call("PUT", "/devices/dev-1", update, headers={"If-Match": f'"{dev["etag"]}"'})
    assert r.status_code == 200, r.text
    upd = r.json()
    assert upd["status"] == "disabled" and upd["statusReason"] == "decommissioned by test"
    assert upd["etag"] != dev["etag"] and upd["generationId"] == dev["generationId"]
    assert upd["statusUpdatedTime"] != "0001-01-01T00:00:00Z"
    assert upd["authentication"] == dev["authentication"]  # keys sent back are kept
    stats = sim.call("GET", "/statistics/devices").json()
    assert stats == {"totalDeviceCount": 1, "enabledDeviceCount": 0, "disabledDeviceCount": 1}

    # Every If-Match spelling of azure-iothub.md §3.1.
    for spelling in ("*", '"*"', "{}", '"{}"', 'W/"{}"'):
        cur = sim.call("GET", "/devices/dev-1").json()
        r = sim.call("PUT", "/devices/dev-1", dict(cur, status="enabled"),
                     headers={"If-Match": spelling.format(cur["etag"])})
        assert r.status_code == 200, (spelling, r.text)

    # Update of an unknown id with If-Match: 404.
    legacy_error(sim.call("PUT", "/devices/ghost", {"deviceId": "ghost"},
                          headers={"If-Match": "*"}), 404, "DeviceNotFound")

    # Deletes need If-Match; the etag must match.
    legacy_error(sim.call("DELETE", "/devices/dev-1"), 400, "ArgumentInvalid")
    legacy_error(sim.call("DELETE", "/devices/dev-1", headers={"If-Match": '"bm9wZQ=="'}), 412,
                 "PreconditionFailed")
    r = sim.call("DELETE", "/devices/dev-1", headers={"If-Match": "*"})
    assert r.status_code == 204 and r.text == ""
    legacy_error(sim.call("GET", "/devices/dev-1"), 404, "DeviceNotFound")
    legacy_error(sim.call("GET", "/twins/dev-1"), 404, "DeviceNotFound")
    legacy_error(sim.call("DELETE", "/devices/dev-1", headers={"If-Match": "*"}), 404,
                 "DeviceNotFound")


def test_device_body_rules(sim):
    legacy_error(sim.call("PUT", "/devices/a", {"deviceId": "b"}), 400, "ArgumentInvalid")
    legacy_error(sim.call("PUT", "/devices/a", {}), 400, "ArgumentNull")
    legacy_error(sim.call("PUT", "/devices/a", raw="{not json"), 400, "ArgumentInvalid")
    legacy_error(sim.call("PUT", "/devices/a", {"deviceId": "a", "status": "sleeping"}), 400,
                 "ArgumentInvalid")
    legacy_error(sim.call("PUT", "/devices/a", {"deviceId": "a", "statusReason": "x" * 129}),
                 400, "ArgumentInvalid")
    short_key = base64.b64encode(b"k" * 8).decode()
    legacy_error(sim.call("PUT", "/devices/a", {
        "deviceId": "a", "authentication": {"type": "sas", "symmetricKey": {
            "primaryKey": short_key, "secondaryKey": ""}}}), 400, "ArgumentInvalid")
    # Provided keys are kept; an empty one is generated (Node sends empty strings).
    pk = base64.b64encode(b"p" * 32).decode()
    dev = sim.create("a", {"deviceId": "a", "status": "Disabled", "authentication": {
        "type": "sas", "symmetricKey": {"primaryKey": pk, "secondaryKey": ""}}})
    assert dev["status"] == "disabled"
    assert dev["authentication"]["symmetricKey"]["primaryKey"] == pk
    assert len(dev["authentication"]["symmetricKey"]["secondaryKey"]) == 44
    # Edge devices get a device scope.
    edge = sim.create("edge", {"deviceId": "edge", "capabilities": {"iotEdge": True}})
    assert edge["deviceScope"] == f"ms-azure-iot-edge://edge-{edge['generationId']}"


def test_device_ids(sim):
    # Azure's character set round-trips percent-encoded; anything else is 400.
    odd = "a-b:c.d+e%f_g#h*i?j!k(l)m,n=o@p;q$r'"
    dev = sim.create(odd)
    assert dev["deviceId"] == odd
    r = sim.call("GET", "/devices/" + urllib.parse.quote(odd, safe=""))
    assert r.status_code == 200 and r.json()["deviceId"] == odd
    assert sim.create("x" * 128)["deviceId"] == "x" * 128
    for bad in ("x" * 129, "has space", "slash/inside", "ümlaut"):
        r = sim.call("PUT", "/devices/" + urllib.parse.quote(bad, safe=""), {"deviceId": bad})
        legacy_error(r, 400, "ArgumentInvalid")


def test_list_devices_and_statistics(sim):
    for i in range(3):
        sim.create(f"s{i}", {"deviceId": f"s{i}", "status": "disabled" if i == 0 else "enabled"})
    stats = sim.call("GET", "/statistics/devices").json()
    assert stats == {"totalDeviceCount": 3, "enabledDeviceCount": 2, "disabledDeviceCount": 1}
    r = sim.call("GET", "/devices?top=2")
    assert r.status_code == 200 and len(r.json()) == 2
    assert len(sim.call("GET", "/devices/?top=0").json()) == 3  # C# trailing slash; 0 -> 1000


def test_concurrent_clients(sim):
    # Several clients on their own connections hammer the registry, twins and queries at once;
    # the counts must add up (and an ASan build must stay quiet).
    errors = []

    def worker(n):
        try:
            with requests.Session() as http:
                http.trust_env = False
                http.verify = sim.ca
                for i in range(25):
                    did = f"w{n}-{i}"
                    h = {"Authorization": sim.token(), "Content-Type": "application/json"}
                    url = f"{sim.base}/devices/{did}?{API}"
                    r = http.put(url, data=json.dumps({"deviceId": did}), headers=h,
                                 timeout=HTTP_TIMEOUT)
                    assert r.status_code == 200, r.text
                    r = http.patch(f"{sim.base}/twins/{did}?{API}", headers=h,
                                   data=json.dumps({"tags": {"n": n, "i": i}}),
                                   timeout=HTTP_TIMEOUT)
                    assert r.status_code == 200, r.text
                    r = http.post(f"{sim.base}/devices/query?{API}", headers=h,
                                  data=json.dumps({"query": "SELECT * FROM devices WHERE "
                                                   f"tags.n = {n}"}), timeout=HTTP_TIMEOUT)
                    # Odd-numbered devices are re-created below, which drops their tags.
                    expect = len([j for j in range(i) if j % 2 == 0]) + 1
                    assert r.status_code == 200 and len(r.json()) == expect, r.text
                    if i % 2:
                        r = http.delete(url, headers=dict(h, **{"If-Match": "*"}),
                                        timeout=HTTP_TIMEOUT)
                        assert r.status_code == 204, r.text
                        r = http.put(url, data=json.dumps({"deviceId": did}), headers=h,
                                     timeout=HTTP_TIMEOUT)
                        assert r.status_code == 200, r.text
        except Exception as e:  # surfaced below, with the worker number
            errors.append((n, repr(e)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert sim.call("GET", "/statistics/devices").json()["totalDeviceCount"] == 100
    tagged = sim.call("POST", "/devices/query",
                      {"query": "SELECT COUNT() AS n FROM devices WHERE is_defined(tags.n)"})
    assert tagged.json() == [{"n": 4 * 13}]  # re-created odd-numbered ones lost their tags


def test_body_too_large(sim):
    r = sim.call("PUT", "/devices/big", raw="x" * (5 * 1024 * 1024))
    legacy_error(r, 413, "MessageTooLarge")


# --- twins --------------------------------------------------------------------------------

def test_twin_lifecycle(sim):
    sim.create("t1")
    r = sim.call("GET", "/twins/t1")
    assert r.status_code == 200
    twin = r.json()
    assert twin["etag"] == "AAAAAAAAAAE=" and twin["version"] == 2
    assert r.headers["ETag"] == '"AAAAAAAAAAE="'
    assert "tags" not in twin  # empty tags are omitted
    for part in ("desired", "reported"):
        props = twin["properties"][part]
        assert props["$version"] == 1 and "$lastUpdated" in props["$metadata"]
    assert twin["deviceEtag"] == sim.call("GET", "/devices/t1").json()["etag"]
    assert twin["statusUpdateTime"] == "0001-01-01T00:00:00Z"
    assert twin["authenticationType"] == "sas" and twin["modelId"] == ""

    # Mender's exact provisioning PATCH (iot-manager-contract.md §3.3).
    r = sim.call("PATCH", "/twins/t1", {"properties": {"desired": None}, "tags": {"mender": True}},
                 headers={"If-Match": "*"})
    assert r.status_code == 200, r.text
    twin = r.json()
    assert twin["tags"] == {"mender": True} and twin["version"] == 3
    assert twin["etag"] != "AAAAAAAAAAE="

    # Merge: add nested desired properties.
    r = sim.call("PATCH", "/twins/t1", {"properties": {"desired": {
        "a": 1, "b": {"c": "x", "keep": True}}}}, headers={"If-Match": f'"{twin["etag"]}"'})
    assert r.status_code == 200, r.text
    twin = r.json()
    desired = twin["properties"]["desired"]
    dv = desired["$version"]
    assert desired["a"] == 1 and desired["b"] == {"c": "x", "keep": True}
    meta = desired["$metadata"]
    assert meta["a"]["$lastUpdatedVersion"] == dv and "$lastUpdated" in meta["a"]
    assert meta["b"]["c"]["$lastUpdatedVersion"] == dv
    assert twin["tags"] == {"mender": True}  # untouched by a desired-only patch

    # null deletes; objects merge recursively.
    r = sim.call("PATCH", "/twins/t1", {"properties": {"desired": {"a": None, "b": {"c": None,
                                                                                  "d": 2}}}})
    desired = r.json()["properties"]["desired"]
    assert "a" not in desired and desired["b"] == {"keep": True, "d": 2}
    assert "a" not in desired["$metadata"] and desired["$version"] == dv + 1

    # Stale twin etag: 412.
    legacy_error(sim.call("PATCH", "/twins/t1", {"tags": {"x": 1}},
                          headers={"If-Match": '"AAAAAAAAAAE="'}), 412, "PreconditionFailed")

    # A device "reports" something; PUT replaces tags and desired but not reported.
    sim.control("POST", "devices/t1/reported", {"fw": "1.0"})
    etag = sim.call("GET", "/twins/t1").json()["etag"]
    r = sim.call("PUT", "/twins/t1", {"tags": {"site": "x"}, "properties": {"desired": {"z": 1}}},
                 headers={"If-Match": f'"{etag}"'})
    assert r.status_code == 200, r.text
    twin = r.json()
    assert twin["tags"] == {"site": "x"}
    desired = {k: v for k, v in twin["properties"]["desired"].items() if not k.startswith("$")}
    assert desired == {"z": 1}
    assert twin["properties"]["reported"]["fw"] == "1.0"
    assert "$lastUpdatedVersion" not in twin["properties"]["reported"]["$metadata"]["fw"]

    # GET round trip: sending back $metadata/$version at the root of desired is tolerated.
    back = sim.call("GET", "/twins/t1").json()
    r = sim.call("PUT", "/twins/t1", {"tags": back["tags"], "properties": {
        "desired": back["properties"]["desired"]}})
    assert r.status_code == 200, r.text

    # Twin of a deleted device is gone with it.
    assert sim.call("DELETE", "/devices/t1", headers={"If-Match": "*"}).status_code == 204
    legacy_error(sim.call("GET", "/twins/t1"), 404, "DeviceNotFound")


def nested(levels):
    """An object with `levels` objects nested below it; the innermost holds a leaf. The
    documented valid maximum (azure-iothub.md §5.2, devguide "one".."ten") is 10."""
    value = {"property": "value"}
    for i in range(levels):
        value = {f"l{levels - i}": value}
    return value


def test_twin_validation(sim):
    sim.create("v1")

    def patch(desired=None, tags=None, extra=None):
        body = dict(extra or {})
        if desired is not None:
            body["properties"] = {"desired": desired}
        if tags is not None:
            body["tags"] = tags
        return sim.call("PATCH", "/twins/v1", body)

    assert patch(nested(10)).status_code == 200  # depth 10 is the documented maximum
    bare_error(patch(nested(11)))
    bare_error(patch(tags=nested(11)))
    for key in ("$bad", "a.b", "with space", "ctl\u0001", "c1\u0085", ""):
        bare_error(patch({key: 1}))
    bare_error(patch({"nested": {"$inner": 1}}))
    bare_error(patch({"list": [1, 2]}))  # arrays rejected without --twin-arrays
    assert patch({"big": 2 ** 52 - 1, "small": -2 ** 52}).status_code == 200
    bare_error(patch({"big": 2 ** 52}))
    bare_error(patch({"s": "x" * 4097}))
    assert patch({"s": "x" * 4096}).status_code == 200
    # Sizes: 9 x 3,700 characters > 32 KB desired; > 8 KB tags.
    bare_error(patch({f"k{i}": "x" * 3700 for i in range(9)}))
    bare_error(patch(tags={f"k{i}": "x" * 3000 for i in range(3)}))
    # The limit applies to the merged result, not just the patch.
    sim.create("v2")
    r = sim.call("PATCH", "/twins/v2", {"properties": {"desired": {
        f"p{i}": "x" * 3700 for i in range(8)}}})
    assert r.status_code == 200, r.text
    bare_error(sim.call("PATCH", "/twins/v2", {"properties": {"desired": {
        "one-more": "x" * 3700}}}))
    # Reported properties are the device's.
    bare_error(sim.call("PATCH", "/twins/v1", {"properties": {"reported": {"x": 1}}}))
    bare_error(sim.call("PATCH", "/twins/v1", {"deviceId": "other", "tags": {"x": 1}}))
    # None of the rejected patches changed anything.
    twin = sim.call("GET", "/twins/v1").json()
    assert "big" in twin["properties"]["desired"] and "s" in twin["properties"]["desired"]
    assert "k0" not in twin["properties"]["desired"] and "tags" not in twin
    assert "one-more" not in sim.call("GET", "/twins/v2").json()["properties"]["desired"]


def test_twin_arrays_flag(certs):
    s = Sim(certs, ["--twin-arrays"])
    try:
        s.create("arr")
        r = s.call("PATCH", "/twins/arr", {"properties": {"desired": {"list": [1, "two",
                                                                               {"x": 3}]}}})
        assert r.status_code == 200, r.text
        assert r.json()["properties"]["desired"]["list"] == [1, "two", {"x": 3}]
        bare_error(s.call("PATCH", "/twins/arr", {"properties": {"desired": {"l": [None]}}}))
    finally:
        s.stop()


# --- bulk ---------------------------------------------------------------------------------

def test_bulk(sim):
    items = [{"id": f"b{i:03d}", "importMode": "create",
              "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "",
                                                                  "secondaryKey": ""}}}
             for i in range(100)]
    items[5]["status"] = "disabled"
    items[6]["tags"] = {"mender": True}
    r = sim.call("POST", "/devices", items)
    assert r.status_code == 200, r.text
    assert r.json() == {"isSuccessful": True, "errors": [], "warnings": []}
    assert sim.call("GET", "/statistics/devices").json() == {
        "totalDeviceCount": 100, "enabledDeviceCount": 99, "disabledDeviceCount": 1}
    assert sim.call("GET", "/twins/b006").json()["tags"] == {"mender": True}

    too_many = [{"id": f"c{i}", "importMode": "create"} for i in range(101)]
    legacy_error(sim.call("POST", "/devices", too_many), 413, "TooManyDevices")
    legacy_error(sim.call("POST", "/devices", []), 400, "ArgumentInvalid")
    legacy_error(sim.call("POST", "/devices", [{"id": "d", "importMode": "create"},
                                               {"id": "d", "importMode": "create"}]),
                 400, "DeviceDefinedMultipleTimes")

    # Per-device results: existing ids fail, the rest succeed (Node capitalises modes).
    b1 = sim.call("GET", "/devices/b001").json()
    r = sim.call("POST", "/devices/", [
        {"id": "b000", "importMode": "create"},
        {"id": "new1", "importMode": "Create"},
        {"id": "b001", "importMode": "UpdateIfMatchETag", "eTag": "bm9wZQ==",
         "status": "disabled"},
        {"id": "b002", "importMode": "Update", "status": "disabled"},
        {"id": "b003", "importMode": "Delete"},
        {"id": "nosuch", "importMode": "delete"},
        {"id": "b004", "importMode": "DeleteIfMatchETag", "eTag": b1["etag"]},
        {"id": "bad id", "importMode": "create"},
        {"id": "b005", "importMode": "frobnicate"},
    ])
    assert r.status_code == 400, r.text
    assert r.headers["iothub-errorcode"] == "BulkRegistryOperationFailure"
    body = r.json()
    assert body["isSuccessful"] is False
    errors = {e["deviceId"]: e["errorCode"] for e in body["errors"]}
    assert errors == {"b000": "DeviceAlreadyExists", "b001": "PreconditionFailed",
                      "nosuch": "DeviceNotFound", "b004": "PreconditionFailed",
                      "bad id": "ArgumentInvalid", "b005": "ArgumentInvalid"}
    assert all(e["operation"] and e["errorStatus"] for e in body["errors"])
    assert sim.call("GET", "/devices/new1").status_code == 200
    assert sim.call("GET", "/devices/b002").json()["status"] == "disabled"
    assert sim.call("GET", "/devices/b003").status_code == 404
    assert sim.call("GET", "/devices/b004").status_code == 200


# --- query --------------------------------------------------------------------------------

def test_query_paging_and_filters(sim):
    items = [{"id": f"q{i:02d}", "importMode": "create"} for i in range(25)]
    for i in range(0, 25, 5):
        items[i]["tags"] = {"mender": True}
    items[3]["status"] = "disabled"
    assert sim.call("POST", "/devices", items).status_code == 200

    seen, pages, cont = [], [], None
    for _ in range(10):  # bounded
        h = {"x-ms-max-item-count": "10"}
        if cont:
            h["x-ms-continuation"] = cont
        r = sim.call("POST", "/devices/query", {"query": "SELECT * FROM devices"}, headers=h)
        assert r.status_code == 200, r.text
        assert r.headers["x-ms-item-type"] == "Twin"
        page = r.json()
        pages.append(len(page))
        seen += [t["deviceId"] for t in page]
        assert all("properties" in t and "etag" in t for t in page)
        cont = r.headers.get("x-ms-continuation")
        if cont is None:
            break
    assert pages == [10, 10, 5]
    assert seen == [f"q{i:02d}" for i in range(25)]

    def query(text, **headers):
        r = sim.call("POST", "/devices/query", {"query": text},
                     headers={k.replace("_", "-"): v for k, v in headers.items()})
        assert r.status_code == 200, (text, r.text)
        assert "x-ms-continuation" not in r.headers
        return r.json()

    # Mender's original sends lower-case `devices.deviceid` and IN with single quotes.
    got = query("SELECT * FROM devices WHERE devices.deviceid IN ['q01','q07','nope']",
                x_ms_max_item_count="100")
    assert [t["deviceId"] for t in got] == ["q01", "q07"]
    assert [t["deviceId"] for t in query("SELECT * FROM devices WHERE deviceId = 'q09'")] == \
        ["q09"]
    tagged = query("SELECT * FROM devices WHERE tags.mender = true")
    assert [t["deviceId"] for t in tagged] == ["q00", "q05", "q10", "q15", "q20"]
    got = query("select * from devices where status = 'disabled' or "
                "(tags.mender = true and NOT deviceId IN ['q00', 'q05'])")
    assert [t["deviceId"] for t in got] == ["q03", "q10", "q15", "q20"]
    assert len(query("SELECT * FROM devices WHERE is_defined(tags.mender)")) == 5
    assert len(query("SELECT TOP 3 * FROM devices")) == 3
    r = sim.call("POST", "/devices/query",
                 {"query": "SELECT COUNT() AS n FROM devices WHERE status = 'enabled'"})
    assert r.json() == [{"n": 24}] and r.headers["x-ms-item-type"] == "Raw"
    assert query("SELECT deviceId, status FROM devices WHERE deviceId = 'q03'") == \
        [{"deviceId": "q03", "status": "disabled"}]

    legacy_error(sim.call("POST", "/devices/query", {"query": "SELECT * FRM devices"}), 400,
                 "ArgumentInvalid")
    legacy_error(sim.call("POST", "/devices/query", {"nope": 1}), 400, "ArgumentInvalid")
    legacy_error(sim.call("POST", "/devices/query", {"query": "SELECT * FROM devices"},
                          headers={"x-ms-continuation": "garbage"}), 400, "ArgumentInvalid")
    # A token is bound to its query.
    r = sim.call("POST", "/devices/query", {"query": "SELECT * FROM devices"},
                 headers={"x-ms-max-item-count": "2"})
    tok = r.headers["x-ms-continuation"]
    legacy_error(sim.call("POST", "/devices/query", {"query": "SELECT * FROM devices WHERE "
                                                              "status = 'enabled'"},
                          headers={"x-ms-continuation": tok}), 400, "ArgumentInvalid")


# --- device endpoint ----------------------------------------------------------------------

def test_device_endpoint(sim):
    d1 = sim.create("dev-a")
    d2 = sim.create("dev-b")
    k1 = d1["authentication"]["symmetricKey"]
    k2 = d2["authentication"]["symmetricKey"]

    def send(device_id, token):
        return sim.call("POST", f"/devices/{device_id}/messages/events", {"t": 21.5},
                        token=token, api="api-version=2020-03-13")

    assert send("dev-a", sim.device_token("dev-a", k1["primaryKey"])).status_code == 204
    assert send("dev-a", sim.device_token("dev-a", k1["secondaryKey"])).status_code == 204
    dev = sim.call("GET", "/devices/dev-a").json()
    assert dev["lastActivityTime"] != "0001-01-01T00:00:00Z"
    log = sim.control("GET", "requests")["requests"]
    assert [e["auth_policy"] for e in log[-3:]] == ["device:dev-a", "device:dev-a", "iothubowner"]

    rejected = {
        "other device's key": sim.device_token("dev-a", k2["primaryKey"]),
        "other device's sr": sim.device_token("dev-a", k1["primaryKey"],
                                              sr=urllib.parse.quote(f"{sim.host}/devices/dev-b",
                                                                    safe="")),
        "no device in sr": sim.device_token("dev-a", k1["primaryKey"],
                                            sr=urllib.parse.quote(sim.host, safe="")),
        "service policy": sim.token(),
        "expired": sim.device_token("dev-a", k1["primaryKey"], se=int(time.time()) - 3600),
    }
    for why, token in rejected.items():
        legacy_error(send("dev-a", token), 401, "IotHubUnauthorizedAccess")
    # A disabled device cannot send.
    upd = dict(dev, status="disabled")
    assert sim.call("PUT", "/devices/dev-a", upd, headers={"If-Match": "*"}).status_code == 200
    assert send("dev-a", sim.device_token("dev-a", k1["primaryKey"])).status_code == 401


# --- faults -------------------------------------------------------------------------------

def test_fault_429_with_retry_after_and_count(sim):
    sim.create("f1")
    sim.control("POST", "faults", {"match": "GET /devices", "status": 429, "retry_after": 7,
                                   "count": 2})
    for _ in range(2):
        r = sim.call("GET", "/devices/f1")
        body = legacy_error(r, 429, "ThrottlingBacklogTimeout")
        assert r.headers["Retry-After"] == "7"
        assert "throttled" in body["Message"]
    assert sim.call("GET", "/devices/f1").status_code == 200  # count exhausted
    stats = sim.control("GET", "stats")
    assert stats["faults_injected"] == 2 and stats["sent_429"] == 2


def test_fault_503_500_and_match_scope(sim):
    sim.create("f1")
    sim.control("POST", "faults", {"match": "PUT /devices", "status": 503, "retry_after": 1})
    sim.control("POST", "faults", {"match": "/twins", "status": 500, "count": 1})
    r = sim.call("PUT", "/devices/f2", {"deviceId": "f2"})
    legacy_error(r, 503, "ServiceUnavailable")
    assert r.headers["Retry-After"] == "1"
    assert sim.call("GET", "/devices/f1").status_code == 200  # other method unaffected
    legacy_error(sim.call("GET", "/twins/f1"), 500, "ServerError")
    assert sim.call("GET", "/twins/f1").status_code == 200
    # A fault applies before auth and api-version: even a bad request sees it.
    assert sim.call("PUT", "/devices/f3", {"deviceId": "f3"}, token="",
                    api=None).status_code == 503
    listed = sim.control("GET", "faults")["faults"]
    assert len(listed) == 1 and listed[0]["status"] == 503
    sim.control("DELETE", "faults")
    assert sim.call("PUT", "/devices/f2", {"deviceId": "f2"}).status_code == 200
    assert sim.call("GET", "/devices/f2").status_code == 200


def test_fault_drop(sim):
    sim.create("f1")
    sim.control("POST", "faults", {"match": "GET /devices/f1", "drop": True, "count": 1})
    with pytest.raises(requests.exceptions.ConnectionError):
        sim.call("GET", "/devices/f1")
    assert sim.call("GET", "/devices/f1").status_code == 200
    log = sim.control("GET", "requests")["requests"]
    assert [e["status"] for e in log[-2:]] == [0, 200]
    assert sim.control("GET", "stats")["drops"] == 1


def test_fault_latency_and_duration(sim):
    sim.create("f1")
    sim.control("POST", "faults", {"match": "GET /devices/f1", "latency_ms": 300, "count": 1})
    t0 = time.monotonic()
    r = sim.call("GET", "/devices/f1")
    elapsed = time.monotonic() - t0
    assert r.status_code == 200 and r.json()["deviceId"] == "f1"
    assert 0.28 <= elapsed < 3, elapsed
    # Other requests are not held up while one is delayed (suspended, not sleeping).
    sim.control("POST", "faults", {"match": "GET /devices/f1", "latency_ms": 1500, "count": 1})
    slow = {}
    th = threading.Thread(target=lambda: slow.update(r=fresh_get(sim, "/devices/f1")))
    th.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    for _ in range(5):
        assert sim.call("GET", "/statistics/devices").status_code == 200
    assert time.monotonic() - t0 < 1.0
    th.join(timeout=5)
    assert slow["r"].status_code == 200

    # A time-limited fault: failing during the window, fine after it.
    sim.control("POST", "faults", {"match": "GET /devices", "status": 503,
                                   "duration_ms": 400})
    assert sim.call("GET", "/devices/f1").status_code == 503
    assert wait_for(lambda: sim.call("GET", "/devices/f1").status_code == 200, timeout=3)

    # Global latency via config; a 429 fault with latency is delayed too.
    sim.control("POST", "config", {"latency_ms": 200})
    t0 = time.monotonic()
    assert sim.call("GET", "/devices/f1").status_code == 200
    assert time.monotonic() - t0 >= 0.18
    sim.control("POST", "config", {"latency_ms": 0})
    sim.control("POST", "faults", {"status": 429, "latency_ms": 200, "count": 1})
    t0 = time.monotonic()
    assert sim.call("GET", "/devices/f1").status_code == 429
    assert time.monotonic() - t0 >= 0.18


def fresh_get(sim, path):
    """A GET on its own connection (requests sessions are not shared across threads)."""
    with requests.Session() as http:
        http.trust_env = False
        return http.get(f"{sim.base}{path}?{API}", headers={"Authorization": sim.token()},
                        verify=sim.ca, timeout=HTTP_TIMEOUT)


def test_fault_rule_validation(sim):
    for body in ({"status": 429, "drop": True}, {"status": 700}, {"match": 5, "status": 500},
                 {"status": 500, "retry_after": 3}, {"count": 2}, {"status": 503, "count": 0},
                 {"match": "PUT devices", "status": 500}):
        r = sim.http.post(sim.base + "/_sim/faults", data=json.dumps(body), timeout=HTTP_TIMEOUT)
        assert r.status_code == 400, body
    assert sim.control("GET", "faults")["faults"] == []


# --- throttling ---------------------------------------------------------------------------

def test_throttle_small_registry_quota(sim):
    sim.create("th")
    sim.control("POST", "config", {"throttle": True, "quotas": {"registry_per_min": 60}})
    codes = [sim.call("GET", "/devices/th").status_code for _ in range(70)]
    ok = codes.count(200)
    assert 60 <= ok <= 62, codes  # the burst, plus at most a refill of ~1/s
    assert codes.count(429) == 70 - ok and codes[:60] == [200] * 60
    r = sim.call("GET", "/devices/th")
    legacy_error(r, 429, "ThrottlingBacklogTimeout")
    assert "Retry-After" not in r.headers  # Azure documents none for throttling
    # Twins and queries have their own buckets; bulk counts per device.
    assert sim.call("GET", "/twins/th").status_code == 200
    sim.control("POST", "config", {"quotas": {"registry_per_min": 60}})  # refills
    items = [{"id": f"t{i}", "importMode": "create"} for i in range(61)]
    legacy_error(sim.call("POST", "/devices", items), 429, "ThrottlingBacklogTimeout")
    assert sim.call("POST", "/devices", items[:60]).status_code == 200
    assert sim.call("GET", "/devices/th").status_code == 429
    stats = sim.control("GET", "stats")
    assert stats["throttled"] >= 10 and stats["throttle"]["enabled"] is True
    sim.control("POST", "config", {"throttle": False})
    assert sim.call("GET", "/devices/th").status_code == 200


def test_throttle_twin_reads_per_second(sim):
    sim.create("tw")
    sim.control("POST", "config", {"throttle": True, "quotas": {"twin_reads_per_s": 5,
                                                                "queries_per_min": 2}})
    codes = [sim.call("GET", "/twins/tw").status_code for _ in range(8)]
    assert codes[:5] == [200] * 5 and 429 in codes[5:]
    assert wait_for(lambda: sim.call("GET", "/twins/tw").status_code == 200, timeout=3)
    q = {"query": "SELECT * FROM devices"}
    assert [sim.call("POST", "/devices/query", q).status_code for _ in range(3)] == \
        [200, 200, 429]


def test_throttle_from_command_line(certs):
    s = Sim(certs, ["--throttle", "--tier", "S1", "--units", "1",
                    "--quota-registry-per-min", "60"])
    try:
        s.create("cli")
        codes = [s.call("GET", "/devices/cli").status_code for _ in range(65)]
        assert 59 <= codes.count(200) <= 61 and 429 in codes
        cfg = s.http.get(s.base + "/_sim/config", timeout=HTTP_TIMEOUT).json()
        assert cfg["throttle"] is True
        assert cfg["quotas"] == {"registry_per_min": 60, "queries_per_min": 20,
                                 "twin_reads_per_s": 100, "twin_updates_per_s": 50}
    finally:
        s.stop()


# --- control API --------------------------------------------------------------------------

def test_control_api(sim):
    sim.create("c1")
    sim.create("c2")
    all_ = sim.control("GET", "devices")
    assert sorted(d["deviceId"] for d in all_["devices"]) == ["c1", "c2"]
    assert set(all_["twins"]) == {"c1", "c2"}
    assert all(len(d["authentication"]["symmetricKey"]["primaryKey"]) == 44
               for d in all_["devices"])
    one = sim.control("GET", "devices/c1")
    assert one["device"]["deviceId"] == "c1" and one["twin"]["deviceId"] == "c1"
    r = sim.http.get(sim.base + "/_sim/devices/nope", timeout=HTTP_TIMEOUT)
    assert r.status_code == 404

    log = sim.control("GET", "requests")
    assert [(e["method"], e["path"], e["status"]) for e in log["requests"]] == [
        ("PUT", "/devices/c1", 200), ("PUT", "/devices/c2", 200)]
    first = log["requests"][0]
    assert first["query"] == API and first["auth_policy"] == "iothubowner"
    assert abs(first["time_ms"] / 1000 - time.time()) < 60
    since = sim.control("GET", f"requests?since={first['seq']}")["requests"]
    assert [e["path"] for e in since] == ["/devices/c2"]

    stats = sim.control("GET", "stats")
    assert stats["by_class"]["registry"] == 2 and stats["devices"] == 2

    sim.control("POST", "faults", {"status": 500})
    assert sim.call("GET", "/devices/c1").status_code == 500
    sim.control("POST", "reset")
    assert sim.control("GET", "devices") == {"devices": [], "twins": {}}
    assert sim.control("GET", "requests")["requests"] == []
    assert sim.control("GET", "faults")["faults"] == []
    assert sim.call("GET", "/devices/c1").status_code == 404  # no fault any more
    r = sim.http.post(sim.base + "/_sim/config", data=json.dumps({"latncy_ms": 1}),
                      timeout=HTTP_TIMEOUT)
    assert r.status_code == 400


def test_curl_with_cacert(sim):
    # The simulator is usable from the shell, too.
    token = sim.token()
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "5", "--cacert", sim.ca, "-X", "PUT",
         "-H", f"Authorization: {token}", "-H", "Content-Type: application/json",
         "-d", '{"deviceId":"curl1"}', "-w", "\n%{http_code}",
         f"{sim.base}/devices/curl1?{API}"], capture_output=True, text=True, timeout=10)
    body, code = out.stdout.rsplit("\n", 1)
    assert code == "200", out.stderr
    assert json.loads(body)["deviceId"] == "curl1"
