#!/usr/bin/env python3
"""mender-sim: a local stand-in for the Mender services iot-manager calls.

One HTTP server on one loopback port plays three services (their paths do not overlap):

  workflows     POST /api/v1/workflow/<name>
                  Only provision_external_device is known (else 404). The body must be a JSON
                  object carrying every input parameter of the real workflow definition:
                  configuration, device_id, request_id, tenant_id (a missing or null one -> 400,
                  as the real server validates inputParameters). Unknown extra keys (provider) are
                  ignored. Answers 201 {"id": <24 hex>, "name": <name>}, then - like the real
                  worker, but synchronously - runs the job: PATCHes the configuration into the
                  deviceconfig store below and deploys it. A configuration deviceconfig would
                  reject makes the job fail (recorded in /_sim/jobs); the 201 stands, as in Mender.

  deviceconfig  PATCH /api/internal/v1/deviceconfig/tenants/{t}/configurations/device/{d}
                  Body: a JSON object of at most 100 keys, non-empty keys, string values of at
                  most 4096 characters (else 400). Keys are merged into the device's configured
                  set (device created when new) -> 204.
                POST  .../configurations/device/{d}/deploy  {"retries": <int >= 0>}
                  Unknown device -> 404; bad body -> 400; else 200 {"deployment_id": <uuid>} and
                  the whole configured set is recorded as a deployment.

  deviceauth    GET /api/internal/v1/devauth/tenants/{t}/devices?id=..&id=..&status=..&page=..
                    &per_page=..
                  From the device table set through the control API. id (repeatable) and status
                  filter; page >= 1 (default 1), per_page 1..500 (default 20); a bad value or an
                  unknown status -> 400. Answers 200 with a JSON array of the stored objects (all
                  their fields, in table order).

The tenant may be empty (open source): paths then read ".../tenants//...".

Control API (never logged, never faulted):
  GET  /_sim/requests                  {"requests": [{time_ms, method, path, query,
                                        query_params, headers (lower-case names), body,
                                        status}, ...]} in arrival order; path is the raw
                                        (undecoded) path; time_ms: arrival, Unix ms (float)
  GET  /_sim/configurations/{t}/{d}    {"configured": {...}, "deployments": N,
                                        "deployment_ids": [...], "deployed": [<set>, ...]}
                                        or 404 when the device has no configuration
  GET  /_sim/jobs                      {"jobs": [{id, name, input, status, error?}, ...]}
  PUT  /_sim/deviceauth/{t}            body [{"id", "status", ...}, ...]: the tenant's devices
  POST /_sim/faults                    {"match": "METHOD /path-prefix" (METHOD may be *),
                                        "status": int (optional), "body": str|JSON (optional),
                                        "location": str (optional, a Location header),
                                        "latency_ms": int (optional), "count": N (default 1;
                                        -1 = every matching request)}
                                        A matching request is delayed by latency_ms, then
                                        answered with status/body instead of being served (when
                                        status is given). Faults apply in the order posted.
  POST /_sim/reset                     forget requests, configurations, jobs, devices, faults
  GET  /_sim/health                    200

Usage: mender_sim.py [--listen HOST:PORT] [--port-file FILE] [--quiet]
The chosen port is printed on stdout ("mender-sim listening on HOST:PORT") and, with
--port-file, written to FILE as "<port>\\n" (atomically, once listening).
"""

import argparse
import json
import os
import secrets
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote

WORKFLOWS = {
    # name -> input parameters of the real definition (workflows/provision_external_device.json)
    "provision_external_device": ("configuration", "device_id", "request_id", "tenant_id"),
}
DEVICE_STATUSES = ("pending", "accepted", "rejected", "preauthorized", "noauth")
CONFIG_MAX_KEYS = 100
CONFIG_MAX_LEN = 4096
PER_PAGE_MAX = 500
PER_PAGE_DEFAULT = 20
BODY_MAX = 16 * 1024 * 1024

DEVICECONFIG_PREFIX = "/api/internal/v1/deviceconfig/tenants/"
DEVAUTH_PREFIX = "/api/internal/v1/devauth/tenants/"
WORKFLOW_PREFIX = "/api/v1/workflow/"


class HTTPError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.requests = []
        self.configs = {}  # (tenant, device) -> {"configured": {}, "deployments": []}
        self.devauth = {}  # tenant -> [device objects]
        self.faults = []
        self.jobs = []

    # --- deviceconfig semantics (callers hold the lock) ---

    @staticmethod
    def validate_configuration(conf):
        if not isinstance(conf, dict):
            raise HTTPError(400, "malformed request body: configuration must be a JSON object")
        if len(conf) > CONFIG_MAX_KEYS:
            raise HTTPError(400, "configuration: too many attributes (at most %d)"
                            % CONFIG_MAX_KEYS)
        for key, value in conf.items():
            if not key:
                raise HTTPError(400, "configuration: attribute names cannot be blank")
            if len(key) > CONFIG_MAX_LEN:
                raise HTTPError(400, "configuration: attribute name too long")
            if not isinstance(value, str):
                raise HTTPError(400, "configuration: %s: value must be a string" % key)
            if len(value) > CONFIG_MAX_LEN:
                raise HTTPError(400, "configuration: %s: the length must be no more than %d"
                                % (key, CONFIG_MAX_LEN))

    def patch_configuration(self, tenant, device, conf):
        self.validate_configuration(conf)
        dev = self.configs.setdefault((tenant, device), {"configured": {}, "deployments": []})
        dev["configured"].update(conf)

    def deploy(self, tenant, device, retries):
        dev = self.configs.get((tenant, device))
        if dev is None:
            raise HTTPError(404, "device not found")
        dep_id = str(uuid.uuid4())
        dev["deployments"].append({"id": dep_id, "retries": retries,
                                   "configuration": dict(dev["configured"])})
        return dep_id


STATE = State()
QUIET = False


def take_fault(method, path):
    with STATE.lock:
        for f in STATE.faults:
            if f["count"] == 0:
                continue
            if f["method"] not in ("*", method) or not path.startswith(f["prefix"]):
                continue
            if f["count"] > 0:
                f["count"] -= 1
            return dict(f)
    return None


def split_path(path, prefix):
    """Decoded segments after `prefix` (empty segments kept: the open-source tenant is "")."""
    return [unquote(s) for s in path[len(prefix):].split("/")]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients' connection reuse expects
    server_version = "mender-sim/1"
    # Headers and body go out in separate writes: with Nagle on, the body would wait for the
    # client's delayed ACK (40 ms a request).
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        if not QUIET:
            sys.stderr.write("mender-sim: " + (fmt % args) + "\n")

    # --- plumbing ---

    def read_body(self):
        te = self.headers.get("Transfer-Encoding", "")
        if te.lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > BODY_MAX:
                    raise HTTPError(413, "body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        if n > BODY_MAX:
            raise HTTPError(413, "body too large")
        return self.rfile.read(n) if n > 0 else b""

    def send(self, status, body=None, headers=None):
        data = b""
        if status in (204, 304) or status < 200:
            body = None  # these never carry a body: one would desynchronise a kept-alive stream
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        # record the outcome before answering: a client may read the log right after the answer
        self.sent_status = status
        entry = getattr(self, "current_entry", None)
        if entry is not None:
            entry["status"] = status
        try:
            self.send_response(status)
            if body is not None:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (timeout tests)

    def do_GET(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def do_PUT(self):
        self.dispatch()

    def do_PATCH(self):
        self.dispatch()

    def do_DELETE(self):
        self.dispatch()

    def dispatch(self):
        raw_path, _, query = self.path.partition("?")
        self.sent_status = None
        self.current_entry = None
        try:
            body = self.read_body()
        except (HTTPError, ValueError) as e:
            self.close_connection = True
            self.send(getattr(e, "status", 400), {"error": str(e)})
            return
        if raw_path.startswith("/_sim/"):
            try:
                self.control(raw_path, body)
            except HTTPError as e:
                self.send(e.status, {"error": e.message})
            return

        entry = {
            "time_ms": time.time() * 1000.0,  # arrival, Unix ms with a fraction
            "method": self.command,
            "path": raw_path,
            "query": query,
            "query_params": parse_qsl(query, keep_blank_values=True),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", errors="replace"),
            "status": None,
        }
        with STATE.lock:
            STATE.requests.append(entry)
        self.current_entry = entry
        try:
            fault = take_fault(self.command, raw_path)
            if fault and fault.get("latency_ms"):
                time.sleep(fault["latency_ms"] / 1000.0)
            if fault and fault.get("status") is not None:
                fbody = fault.get("body")
                if fbody is None:
                    fbody = {"error": "simulated fault"}
                elif isinstance(fbody, str):
                    fbody = fbody.encode()
                hdrs = {"Location": fault["location"]} if fault.get("location") else None
                self.send(fault["status"], fbody, hdrs)
            else:
                self.serve(raw_path, query, body)
        except HTTPError as e:
            self.send(e.status, {"error": e.message, "request_id": entry["headers"].get(
                "x-men-requestid", "")})
        except Exception as e:  # a simulator bug must show, not hang the client
            self.send(500, {"error": "simulator: %r" % e})
        self.current_entry = None

    # --- the three services ---

    def serve(self, path, query, body):
        method = self.command
        if path.startswith(WORKFLOW_PREFIX) and method == "POST":
            return self.start_workflow(split_path(path, WORKFLOW_PREFIX), body)
        if path.startswith(DEVICECONFIG_PREFIX):
            seg = split_path(path, DEVICECONFIG_PREFIX)
            if len(seg) == 4 and seg[1:3] == ["configurations", "device"] and seg[3]:
                if method == "PATCH":
                    return self.patch_configuration(seg[0], seg[3], body)
            if len(seg) == 5 and seg[1:3] == ["configurations", "device"] and seg[4] == "deploy":
                if method == "POST" and seg[3]:
                    return self.deploy(seg[0], seg[3], body)
        if path.startswith(DEVAUTH_PREFIX) and method == "GET":
            seg = split_path(path, DEVAUTH_PREFIX)
            if len(seg) == 2 and seg[1] == "devices":
                return self.list_devices(seg[0], query)
        raise HTTPError(404, "no route for %s %s" % (method, path))

    def start_workflow(self, seg, body):
        if len(seg) != 1 or seg[0] not in WORKFLOWS:
            raise HTTPError(404, "Workflow not found")
        name = seg[0]
        try:
            params = json.loads(body.decode("utf-8")) if body else None
        except (UnicodeDecodeError, ValueError) as e:
            raise HTTPError(400, "Unable to parse the input parameters: %s" % e)
        if not isinstance(params, dict):
            raise HTTPError(400, "Unable to parse the input parameters: not a JSON object")
        for p in WORKFLOWS[name]:
            # The real server drops null values before checking: null counts as missing.
            if params.get(p) is None:
                raise HTTPError(400, "Missing input parameter: %s" % p)
        job = {"id": secrets.token_hex(12), "name": name, "input": params, "status": "done"}
        with STATE.lock:
            # provision_external_device: submit_configuration then deploy_configuration.
            try:
                tenant, device = str(params["tenant_id"]), str(params["device_id"])
                STATE.patch_configuration(tenant, device, params["configuration"])
                STATE.deploy(tenant, device, 1)
            except HTTPError as e:
                job["status"] = "failed"
                job["error"] = "%d %s" % (e.status, e.message)
            STATE.jobs.append(job)
        self.send(201, {"id": job["id"], "name": name})

    def patch_configuration(self, tenant, device, body):
        try:
            conf = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise HTTPError(400, "malformed request body: %s" % e)
        with STATE.lock:
            STATE.patch_configuration(tenant, device, conf)
        self.send(204)

    def deploy(self, tenant, device, body):
        try:
            req = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise HTTPError(400, "malformed request body: %s" % e)
        retries = req.get("retries") if isinstance(req, dict) else None
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise HTTPError(400, "malformed request body: retries must be a non-negative integer")
        with STATE.lock:
            dep_id = STATE.deploy(tenant, device, retries)
        self.send(200, {"deployment_id": dep_id})

    def list_devices(self, tenant, query):
        params = parse_qsl(query, keep_blank_values=True)
        ids = [v for k, v in params if k == "id"]
        opts = {k: v for k, v in params if k != "id"}

        def integer(name, default, lo, hi):
            if name not in opts:
                return default
            try:
                v = int(opts[name])
            except ValueError:
                raise HTTPError(400, "invalid %s query: \"%s\"" % (name, opts[name]))
            if v < lo or v > hi:
                raise HTTPError(400, "invalid %s query: must be within %d..%d" % (name, lo, hi))
            return v

        page = integer("page", 1, 1, 1 << 31)
        per_page = integer("per_page", PER_PAGE_DEFAULT, 1, PER_PAGE_MAX)
        status = opts.get("status")
        if status is not None and status not in DEVICE_STATUSES:
            raise HTTPError(400, "invalid status query: \"%s\"" % status)
        with STATE.lock:
            devices = list(STATE.devauth.get(tenant, []))
        if "id" in dict(params):
            wanted = set(ids)
            devices = [d for d in devices if d.get("id") in wanted]
        if status is not None:
            devices = [d for d in devices if d.get("status") == status]
        start = (page - 1) * per_page
        self.send(200, devices[start:start + per_page])

    # --- control API ---

    def control(self, path, body):
        method = self.command

        def doc():
            try:
                return json.loads(body.decode("utf-8")) if body else None
            except (UnicodeDecodeError, ValueError) as e:
                raise HTTPError(400, "control: body is not JSON: %s" % e)

        if path == "/_sim/health" and method == "GET":
            return self.send(200, {"status": "ok"})
        if path == "/_sim/requests" and method == "GET":
            with STATE.lock:
                return self.send(200, {"requests": list(STATE.requests)})
        if path == "/_sim/jobs" and method == "GET":
            with STATE.lock:
                return self.send(200, {"jobs": list(STATE.jobs)})
        if path == "/_sim/reset" and method == "POST":
            with STATE.lock:
                STATE.reset()
            return self.send(204)
        if path.startswith("/_sim/configurations/") and method == "GET":
            seg = split_path(path, "/_sim/configurations/")
            if len(seg) != 2:
                raise HTTPError(404, "use /_sim/configurations/{tenant}/{device}")
            with STATE.lock:
                dev = STATE.configs.get((seg[0], seg[1]))
                if dev is None:
                    raise HTTPError(404, "device has no configuration")
                return self.send(200, {
                    "configured": dict(dev["configured"]),
                    "deployments": len(dev["deployments"]),
                    "deployment_ids": [d["id"] for d in dev["deployments"]],
                    "deployed": [d["configuration"] for d in dev["deployments"]],
                })
        if path.startswith("/_sim/deviceauth/") and method == "PUT":
            seg = split_path(path, "/_sim/deviceauth/")
            if len(seg) != 1:
                raise HTTPError(404, "use /_sim/deviceauth/{tenant}")
            devices = doc()
            if not isinstance(devices, list) or not all(
                    isinstance(d, dict) and isinstance(d.get("id"), str)
                    and isinstance(d.get("status"), str) for d in devices):
                raise HTTPError(400, "control: body must be [{\"id\": str, \"status\": str}, ...]")
            with STATE.lock:
                STATE.devauth[seg[0]] = devices
            return self.send(204)
        if path == "/_sim/faults" and method == "POST":
            f = doc()
            if not isinstance(f, dict) or not isinstance(f.get("match"), str) \
                    or len(f["match"].split(" ", 1)) != 2:
                raise HTTPError(400, "control: fault needs \"match\": \"METHOD /path-prefix\"")
            fmethod, prefix = f["match"].split(" ", 1)
            status = f.get("status")
            if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
                raise HTTPError(400, "control: status must be an HTTP status")
            count = f.get("count", 1)
            latency = f.get("latency_ms", 0)
            if not isinstance(count, int) or not isinstance(latency, int) or latency < 0:
                raise HTTPError(400, "control: count and latency_ms must be integers")
            if status is None and not latency:
                raise HTTPError(400, "control: a fault needs a status or a latency")
            body_v = f.get("body")
            if body_v is not None and not isinstance(body_v, str):
                body_v = json.dumps(body_v)
            with STATE.lock:
                STATE.faults.append({"method": fmethod.upper(), "prefix": prefix,
                                     "status": status, "body": body_v,
                                     "location": f.get("location"), "latency_ms": latency,
                                     "count": count})
            return self.send(204)
        raise HTTPError(404, "no control route for %s %s" % (method, path))


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="mender_sim.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:0",
                    help="HOST:PORT to listen on (default 127.0.0.1:0, a free port)")
    ap.add_argument("--port-file", help="write the port (and a newline) here once listening")
    ap.add_argument("--quiet", action="store_true", help="no access log on stderr")
    args = ap.parse_args(argv)
    global QUIET
    QUIET = args.quiet
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    server.daemon_threads = True
    actual = server.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as fp:
            fp.write("%d\n" % actual)
        os.replace(tmp, args.port_file)
    print("mender-sim listening on %s:%d" % (server.server_address[0], actual), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
