"""Cross-cutting HTTP behaviour: request ids, 404/405, body limits, access log, shutdown."""

import http.client
import json
import re
import signal
import socket
import time
import uuid

import pytest

from conftest import (ERROR_TOO_LARGE, INTERNAL, MGMT, b64, conn_str, new_tenant, random_key,
                      raw_http, read_http_response, sas_integration, user_token, wait_until)

UUID4_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.I)


def test_request_id_is_echoed(service):
    rid = f"acceptance-{uuid.uuid4().hex}"
    r = service.api.get(f"{INTERNAL}/alive", headers={"X-MEN-RequestID": rid})
    assert r.status == 204
    assert r.header("X-MEN-RequestID") == rid

    token = user_token(new_tenant())
    r = service.api.get(f"{MGMT}/integrations", token=token, headers={"x-men-requestid": rid})
    assert r.status == 200
    assert r.header("X-MEN-RequestID") == rid, "the header name is case-insensitive"


def test_request_id_is_generated_when_absent(service):
    ids = []
    for _ in range(2):
        r = service.api.get(f"{INTERNAL}/alive")
        rid = r.header("X-MEN-RequestID")
        assert rid and UUID4_RE.match(rid), f"generated request id {rid!r} is not a UUIDv4"
        ids.append(rid)
    assert ids[0] != ids[1]


def test_request_id_is_in_every_error_body(service):
    rid = f"err-{uuid.uuid4().hex}"
    r = service.api.get("/no/such/path", headers={"X-MEN-RequestID": rid})
    assert r.status == 404
    assert r.json() == {"error": "not found", "request_id": rid}
    assert r.header("Content-Type") == "application/json; charset=utf-8"

    r = service.api.get(f"{MGMT}/integrations", headers={"X-MEN-RequestID": rid})
    assert r.status == 401
    assert r.json()["request_id"] == rid

    # A generated id is the same in the header and in the body.
    r = service.api.get(f"{MGMT}/integrations/not-a-uuid", token=user_token(new_tenant()))
    assert r.status == 400
    assert r.json()["request_id"] == r.header("X-MEN-RequestID")


def test_unknown_path_is_404(service):
    token = user_token(new_tenant())
    paths = ["/", "/nope", "/api/management/v1/iot-manager", f"{MGMT}/nope",
             f"{MGMT}/integrations/{uuid.uuid4()}/nope", f"{INTERNAL}/nope",
             "/api/management/v2/iot-manager/integrations"]
    for path in paths:
        r = service.api.get(path, token=token)
        assert r.status == 404, f"GET {path}: {r}"
        assert r.error == "not found", f"GET {path}: {r}"


def test_wrong_method_is_405(service):
    token = user_token(new_tenant())
    calls = [("DELETE", f"{INTERNAL}/alive"), ("POST", f"{INTERNAL}/health"),
             ("PATCH", f"{MGMT}/integrations"), ("DELETE", f"{MGMT}/integrations"),
             ("PUT", f"{MGMT}/integrations/{uuid.uuid4()}"),
             ("GET", f"{MGMT}/integrations/{uuid.uuid4()}/credentials")]
    for method, path in calls:
        r = service.api.request(method, path, token=token)
        assert r.status == 405, f"{method} {path}: {r}"
        assert r.error == "method not allowed", f"{method} {path}: {r}"


def _post_head(path, token, length, extra=""):
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nConnection: close\r\n{extra}"
            + (f"Content-Length: {length}\r\n" if length is not None else "") + "\r\n").encode()


def _padded_body(key, size):
    body = json.dumps(sas_integration(key)).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


def test_body_over_limit_by_content_length_is_413(service_factory):
    svc = service_factory(env={"IOT_MANAGER_REQUEST_SIZE_LIMIT": "1024"})
    token = user_token(new_tenant())
    path = f"{MGMT}/integrations"

    body = _padded_body(random_key(), 1025)
    r = svc.check("POST", path, raw_http(svc.port, _post_head(path, token, len(body)) + body))
    assert r.status == 413, r
    assert r.error == ERROR_TOO_LARGE
    svc.assert_nothing_stored()

    # Exactly the limit is accepted and processed.
    body = _padded_body(random_key(), 1024)
    r = svc.check("POST", path, raw_http(svc.port, _post_head(path, token, len(body)) + body))
    assert r.status == 201, r

    # The limit holds for every body: replacing credentials changes nothing.
    iid = r.header("Location").rsplit("/", 1)[1]
    before = svc.snapshot()
    put = f"{MGMT}/integrations/{iid}/credentials"
    creds = json.dumps({"type": "sas", "connection_string": conn_str(random_key())}).encode()
    creds += b" " * (1025 - len(creds))
    head = _post_head(put, token, len(creds)).replace(b"POST ", b"PUT ", 1)
    r = svc.check("PUT", put, raw_http(svc.port, head + creds))
    assert r.status == 413, r
    assert svc.snapshot() == before


def test_body_over_default_limit_is_refused_from_the_header(service):
    """Content-Length above 1 MiB: 413 without the server waiting for the body."""
    token = user_token(new_tenant())
    path = f"{MGMT}/integrations"
    start = time.monotonic()
    r = service.check("POST", path, raw_http(service.port, _post_head(path, token, 1048577),
                                             timeout=5))
    assert r.status == 413, r
    assert r.error == ERROR_TOO_LARGE
    assert time.monotonic() - start < 4


def _chunked(body, size):
    out = []
    for i in range(0, len(body), size):
        piece = body[i:i + size]
        out.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
    out.append(b"0\r\n\r\n")
    return out


def test_body_over_limit_chunked_is_413(service_factory):
    svc = service_factory(env={"IOT_MANAGER_REQUEST_SIZE_LIMIT": "1024"})
    token = user_token(new_tenant())
    path = f"{MGMT}/integrations"
    head = _post_head(path, token, None, extra="Transfer-Encoding: chunked\r\n")

    body = _padded_body(random_key(), 2000)
    r = svc.check("POST", path, raw_http(svc.port, b"", chunks=[head, *_chunked(body, 500)]))
    assert r.status == 413, r
    assert r.error == ERROR_TOO_LARGE
    svc.assert_nothing_stored()

    # A chunked body under the limit is de-chunked and processed.
    body = json.dumps(sas_integration(random_key())).encode()
    r = svc.check("POST", path, raw_http(svc.port, b"", chunks=[head, *_chunked(body, 50)]))
    assert r.status == 201, r


def _flatten(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _flatten(v)
    elif isinstance(value, list):
        for v in value:
            yield from _flatten(v)
    else:
        yield str(value)


def _json_lines(service):
    out = []
    for line in service.log_lines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def test_one_json_access_log_line_per_request(service):
    token = user_token(new_tenant())
    calls = [("GET", f"{INTERNAL}/alive", 204), ("GET", f"{MGMT}/integrations", 200),
             ("GET", "/no/such/path", 404), ("GET", f"{MGMT}/integrations/{uuid.uuid4()}", 404)]
    rids = []
    for method, path, status in calls:
        rid = f"log-{uuid.uuid4().hex}"
        r = service.api.request(method, path, token=token, headers={"X-MEN-RequestID": rid})
        assert r.status == status
        rids.append(rid)

    def access_lines(rid, path, status):
        found = []
        for obj in _json_lines(service):
            values = list(_flatten(obj))
            if rid in values and str(status) in values and any(path in v for v in values):
                found.append(obj)
        return found

    wait_until(lambda: all(access_lines(rid, p, s) for rid, (_, p, s) in zip(rids, calls)), 5,
               what="access-log lines")
    for rid, (method, path, status) in zip(rids, calls):
        lines = access_lines(rid, path, status)
        assert len(lines) == 1, f"{method} {path}: expected one access-log line, got {lines}"
        assert method in list(_flatten(lines[0])), lines[0]


def test_log_lines_are_json(service):
    service.api.get(f"{MGMT}/integrations", token=user_token(new_tenant()))
    assert service.stop() == 0
    lines = service.log_lines()
    assert lines, "the service logged nothing"
    for line in lines:
        obj = json.loads(line)
        assert isinstance(obj, dict), line


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_zero(service, sig):
    start = time.monotonic()
    assert service.stop(sig=sig, timeout=10) == 0, service.log_tail()
    assert time.monotonic() - start < 6
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", service.port), timeout=1).close()


def test_sigterm_finishes_the_request_in_flight(service):
    tenant = new_tenant()
    token = user_token(tenant)
    key = random_key()
    path = f"{MGMT}/integrations"
    body = json.dumps(sas_integration(key)).encode()
    half = len(body) // 2

    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as s:
        s.sendall(_post_head(path, token, len(body)) + body[:half])
        time.sleep(0.3)  # the server has the headers: the request is in flight
        service.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert service.proc.poll() is None, "exited before finishing the request in flight"
        s.sendall(body[half:])
        r = read_http_response(s)
    service.check("POST", path, r)
    assert r.status == 201, r
    assert service.proc.wait(10) == 0, service.log_tail()

    service.start()
    listed = service.user(tenant).listed()
    assert len(listed) == 1
    assert listed[0]["credentials"]["connection_string"].endswith(
        f"SharedAccessKey={b64(key[:3])}...<omitted>")
    assert conn_str(key) not in service.log_text()


def test_keep_alive_connection_serves_several_requests(service):
    token = user_token(new_tenant())
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    try:
        ids = set()
        for path, status in [(f"{INTERNAL}/alive", 204), (f"{MGMT}/integrations", 200),
                             ("/nope", 404), (f"{MGMT}/integrations", 200)]:
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            r = conn.getresponse()
            r.read()
            assert r.status == status, (path, r.status)
            ids.add(r.headers.get("X-MEN-RequestID"))
        assert len(ids) == 4
    finally:
        conn.close()
