"""Checks of mender_sim.py itself: it must reject what the real Mender services reject, or a
client test passing against it would prove nothing.

Run:  python3 -m pytest -q tests/sim/test_mender_sim.py   (stdlib only; the simulator is spawned)
"""

import http.client
import json
import os
import subprocess
import sys
import time

import pytest

SIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mender_sim.py")
WF = "/api/v1/workflow/provision_external_device"
DC = "/api/internal/v1/deviceconfig/tenants/%s/configurations/device/%s"
DA = "/api/internal/v1/devauth/tenants/%s/devices"
GOOD = {"tenant_id": "t1", "device_id": "d1", "request_id": "", "provider": "Azure",
        "configuration": {"azureConnectionString": "HostName=h;DeviceId=d1;SharedAccessKey=k"}}


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    port_file = tmp_path_factory.mktemp("mender-sim") / "port"
    proc = subprocess.Popen([sys.executable, SIM, "--port-file", str(port_file), "--quiet"],
                            stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().endswith("\n"):
                break
            assert proc.poll() is None, "mender_sim.py exited early"
            time.sleep(0.02)
        else:
            pytest.fail("mender_sim.py wrote no port file")
        yield int(port_file.read_text())
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def call(port, method, path, body=None, raw=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        text = resp.read()
        return resp.status, (json.loads(text) if text else None), resp.getheaders()
    finally:
        conn.close()


@pytest.fixture
def s(sim):
    assert call(sim, "POST", "/_sim/reset")[0] == 204
    return sim


def configuration(port, tenant, device):
    st, doc, _ = call(port, "GET", "/_sim/configurations/%s/%s" % (tenant, device))
    return doc if st == 200 else None


# --- workflows ---

def test_workflow_starts_and_applies_configuration(s):
    st, doc, _ = call(s, "POST", WF, GOOD)
    assert st == 201
    assert doc["name"] == "provision_external_device"
    assert len(doc["id"]) == 24 and int(doc["id"], 16) >= 0
    conf = configuration(s, "t1", "d1")
    assert conf["configured"] == GOOD["configuration"]
    assert conf["deployments"] == 1


@pytest.mark.parametrize("missing", ["tenant_id", "device_id", "request_id", "configuration"])
def test_workflow_missing_input_is_400(s, missing):
    body = dict(GOOD)
    del body[missing]
    st, doc, _ = call(s, "POST", WF, body)
    assert st == 400 and missing in doc["error"]
    body[missing] = None  # null counts as missing
    assert call(s, "POST", WF, body)[0] == 400
    assert configuration(s, "t1", "d1") is None


def test_workflow_bad_body_and_unknown_name(s):
    assert call(s, "POST", WF, raw=b"{not json")[0] == 400
    assert call(s, "POST", WF, [GOOD])[0] == 400
    assert call(s, "POST", "/api/v1/workflow/no_such_workflow", GOOD)[0] == 404


def test_workflow_job_fails_on_configuration_deviceconfig_rejects(s):
    body = dict(GOOD, configuration={"azureConnectionString": 42})
    assert call(s, "POST", WF, body)[0] == 201  # accepted: the job fails later, as in Mender
    jobs = call(s, "GET", "/_sim/jobs")[1]["jobs"]
    assert jobs[-1]["status"] == "failed" and "400" in jobs[-1]["error"]
    assert configuration(s, "t1", "d1") is None


# --- deviceconfig ---

def test_deviceconfig_patch_merges_and_deploy_records(s):
    assert call(s, "PATCH", DC % ("", "d"), {"a": "1", "b": "2"})[0] == 204
    assert call(s, "PATCH", DC % ("", "d"), {"b": "3", "c": "4"})[0] == 204
    st, doc, _ = call(s, "POST", DC % ("", "d") + "/deploy", {"retries": 1})
    assert st == 200 and len(doc["deployment_id"]) == 36
    conf = configuration(s, "", "d")
    assert conf["configured"] == {"a": "1", "b": "3", "c": "4"}
    assert conf["deployments"] == 1 and conf["deployed"][0] == conf["configured"]


@pytest.mark.parametrize("body", [
    {"k": 1},
    {"k": None},
    {"k": {"nested": "x"}},
    {"k": "x" * 4097},
    {"": "x"},
    {("k%d" % i): "v" for i in range(101)},
    ["k", "v"],
])
def test_deviceconfig_patch_validation(s, body):
    assert call(s, "PATCH", DC % ("t", "d"), body)[0] == 400
    assert configuration(s, "t", "d") is None


def test_deviceconfig_patch_limits_are_inclusive(s):
    assert call(s, "PATCH", DC % ("t", "d"), {"k": "x" * 4096})[0] == 204
    assert call(s, "PATCH", DC % ("t", "e"), {("k%d" % i): "v" for i in range(100)})[0] == 204


def test_deviceconfig_deploy_validation(s):
    assert call(s, "POST", DC % ("t", "nobody") + "/deploy", {"retries": 1})[0] == 404
    assert call(s, "PATCH", DC % ("t", "d"), {"k": "v"})[0] == 204
    for bad in ({"retries": "1"}, {"retries": -1}, {"retries": True}, {}, [1]):
        assert call(s, "POST", DC % ("t", "d") + "/deploy", bad)[0] == 400
    assert configuration(s, "t", "d")["deployments"] == 0


# --- deviceauth ---

TABLE = [{"id": "a", "status": "accepted", "identity_data": {"sn": "1"}},
         {"id": "b", "status": "pending"}, {"id": "c", "status": "accepted"},
         {"id": "d", "status": "no auth"}]


def test_deviceauth_filters_and_pages(s):
    assert call(s, "PUT", "/_sim/deviceauth/", TABLE)[0] == 204
    st, doc, _ = call(s, "GET", DA % "" + "?id=a&id=d&id=zz&per_page=3")
    assert st == 200 and doc == [TABLE[0], TABLE[3]]
    doc = call(s, "GET", DA % "" + "?status=accepted&page=1&per_page=1")[1]
    assert [d["id"] for d in doc] == ["a"]
    doc = call(s, "GET", DA % "" + "?status=accepted&page=2&per_page=1")[1]
    assert [d["id"] for d in doc] == ["c"]
    assert call(s, "GET", DA % "" + "?status=accepted&page=3&per_page=1")[1] == []
    assert call(s, "GET", DA % "other" + "?id=a")[1] == []


@pytest.mark.parametrize("query", ["per_page=0", "per_page=501", "per_page=x", "page=0",
                                   "status=no+auth", "status=active"])
def test_deviceauth_rejects_bad_queries(s, query):
    assert call(s, "GET", DA % "t" + "?" + query)[0] == 400


# --- control API ---

def test_faults_count_status_and_redirects(s):
    assert call(s, "POST", "/_sim/faults", {"match": "POST /api/v1/workflow/", "status": 503,
                                            "count": 2})[0] == 204
    assert call(s, "POST", WF, GOOD)[0] == 503
    assert call(s, "POST", WF, GOOD)[0] == 503
    assert call(s, "POST", WF, GOOD)[0] == 201
    call(s, "POST", "/_sim/faults", {"match": "* /api/", "status": 302, "location": "/x"})
    st, _, headers = call(s, "POST", WF, GOOD)
    assert st == 302 and ("Location", "/x") in headers
    assert call(s, "POST", "/_sim/faults", {"match": "nonsense"})[0] == 400
    log = call(s, "GET", "/_sim/requests")[1]["requests"]
    assert [r["status"] for r in log] == [503, 503, 201, 302]
    assert all(not r["path"].startswith("/_sim") for r in log)


def test_latency_fault_delays(s):
    call(s, "POST", "/_sim/faults", {"match": "GET /api/internal/v1/devauth/", "latency_ms": 300})
    t0 = time.monotonic()
    assert call(s, "GET", DA % "t")[0] == 200
    assert time.monotonic() - t0 >= 0.3


def test_request_log_keeps_raw_path_query_and_headers(s):
    conn = http.client.HTTPConnection("127.0.0.1", s, timeout=5)
    conn.request("GET", DA % "" + "?id=a+b&id=c&per_page=2", headers={"X-MEN-RequestID": "r1"})
    assert conn.getresponse().status == 200
    conn.close()
    r = call(s, "GET", "/_sim/requests")[1]["requests"][0]
    assert r["path"] == "/api/internal/v1/devauth/tenants//devices"
    assert r["query"] == "id=a+b&id=c&per_page=2"
    assert r["query_params"] == [["id", "a b"], ["id", "c"], ["per_page", "2"]]
    assert r["headers"]["x-men-requestid"] == "r1"
