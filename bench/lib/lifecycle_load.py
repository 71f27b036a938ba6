#!/usr/bin/env python3
"""Load and measurement client of bench/lifecycle_bench.sh (standard library only).

Provisions COUNT devices through iot-manager's internal API, one POST /tenants/{t}/devices per
device as Mender's workflows worker sends them (no bulk), from CONCURRENCY keep-alive
connections, as fast as the service answers or paced to RATE requests/s. Meanwhile it polls the
Configure stand-in (tests/sim/configure-sink) and the IoT Hub simulator until every device has
its identity in the hub and its connection string delivered, then prints one line

  RESULT key=value ...

with end-to-end throughput (devices / (last first-delivery - first POST sent)), end-to-end
latency percentiles per device (first delivery at Configure - its POST sent), the internal API's
own rate and latency, and the error counts (non-202 answers, devices missing, repeated
deliveries). Exits 1 when a device is missing at the deadline or an answer was not 202.

Quota mode (--quota-window S): instead, samples the simulator's accepted registry operations
and 429s every second for S seconds after --quota-warmup seconds and prints

  QUOTA key=value ...
"""

import argparse
import asyncio
import json
import os
import ssl
import sys
import time
import urllib.parse


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    k = (len(sorted_values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def device_body(device_id):
    """deviceauth's device object as provision_device posts it (mender-clients.md §2)."""
    return json.dumps({
        "id": device_id, "identity_data": {"mac": "02:00:00:00:00:01"}, "status": "accepted",
        "decommissioning": False, "created_ts": "2024-05-01T10:00:00.123Z",
        "updated_ts": "2024-05-01T10:00:01Z",
        "auth_sets": [{"id": device_id + "-as", "identity_data": {"mac": "02:00:00:00:00:01"},
                       "pubkey": "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAbench\n"
                                 "-----END PUBLIC KEY-----\n",
                       "ts": "2024-05-01T10:00:00Z", "status": "accepted"}],
    }, separators=(",", ":")).encode()


async def read_response(reader):
    """(status, body) of one HTTP/1.1 answer with Content-Length (what the service sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return status, body


class Poster:
    def __init__(self, args):
        u = urllib.parse.urlsplit(args.api)
        self.host, self.port = u.hostname, u.port
        self.path = f"/api/internal/v1/iot-manager/tenants/{args.tenant}/devices"
        self.args = args
        self.next = 0
        self.sent = [0.0] * args.count
        self.acked = [0.0] * args.count
        self.errors = 0
        self.first_error = None
        self.t0 = 0.0

    def device_id(self, i):
        return f"{self.args.prefix}{i:07d}"

    async def worker(self):
        reader = writer = None
        try:
            while True:
                i = self.next
                if i >= self.args.count:
                    return
                self.next += 1
                if self.args.rate:
                    delay = self.t0 + i / self.args.rate - time.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                body = device_body(self.device_id(i))
                req = (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                       f"Content-Type: application/json\r\nX-MEN-RequestID: bench-{i}\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
                for attempt in range(2):
                    try:
                        if writer is None:
                            reader, writer = await asyncio.open_connection(self.host, self.port)
                        self.sent[i] = time.time()
                        writer.write(req)
                        status, resp = await read_response(reader)
                        break
                    except (ConnectionError, asyncio.IncompleteReadError):
                        # the service closed an idle keep-alive connection: reconnect once
                        writer = None
                        if attempt == 1:
                            raise
                self.acked[i] = time.time()
                if status != 202:
                    self.errors += 1
                    if self.first_error is None:
                        self.first_error = f"{status} {resp[:200]!r}"
        finally:
            if writer is not None:
                writer.close()

    async def run(self):
        self.t0 = time.time()
        await asyncio.gather(*(self.worker() for _ in range(self.args.concurrency)))


def http_get(url, ctx=None, timeout=10):
    import http.client
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", u.path + (("?" + u.query) if u.query else ""))
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {url}: {r.status} {body[:200]!r}")
        return body
    finally:
        conn.close()


def stats(args, ctx):
    sink = json.loads(http_get(args.sink + "/_sim/stats"))
    hub = json.loads(http_get(args.hub + "/_sim/stats", ctx))
    return sink, hub


async def poll_until_done(args, ctx, poster):
    """Polls both simulators until every device is there (or the deadline)."""
    deadline = time.time() + args.timeout
    loop = asyncio.get_running_loop()
    while True:
        sink, hub = await loop.run_in_executor(None, stats, args, ctx)
        if sink["devices"] >= args.count and hub["devices"] >= args.count:
            return True, sink, hub
        if time.time() > deadline:
            return False, sink, hub
        await asyncio.sleep(args.poll)


async def main_provision(args, ctx):
    poster = Poster(args)
    post_task = asyncio.ensure_future(poster.run())
    done, sink, hub = await poll_until_done(args, ctx, poster)
    await post_task
    lines = http_get(args.sink + "/_sim/deliveries").decode().splitlines()
    first = {}
    repeated = 0
    for line in lines:
        tenant, dev, count, first_us, _ = line.split("\t")
        if tenant != args.tenant or not dev.startswith(args.prefix):
            continue
        first[dev] = int(first_us) / 1e6
        repeated += int(count) - 1
    lat = []
    for i in range(args.count):
        t = first.get(poster.device_id(i))
        if t is not None and poster.sent[i]:
            lat.append(t - poster.sent[i])
    lat.sort()
    api_lat = sorted(a - s for s, a in zip(poster.sent, poster.acked) if a)
    t_first = min(s for s in poster.sent if s) if any(poster.sent) else 0
    t_last_ack = max(poster.acked) if poster.acked else 0
    t_end = max(first.values()) if first else time.time()
    elapsed = t_end - t_first
    out = {
        "devices": args.count,
        "delivered": len(first),
        "hub_devices": hub["devices"],
        "elapsed_s": round(elapsed, 3),
        "provisions_per_s": round(len(first) / elapsed, 1) if elapsed > 0 else 0,
        "e2e_p50_ms": round(percentile(lat, 50) * 1000, 1),
        "e2e_p99_ms": round(percentile(lat, 99) * 1000, 1),
        "e2e_max_ms": round(lat[-1] * 1000, 1) if lat else 0,
        "api_per_s": round(args.count / (t_last_ack - t_first), 1) if t_last_ack > t_first else 0,
        "api_p50_ms": round(percentile(api_lat, 50) * 1000, 2),
        "api_p99_ms": round(percentile(api_lat, 99) * 1000, 2),
        "api_errors": poster.errors,
        "repeated_deliveries": repeated,
        "sink_errors": sink["errors"],
        "hub_429": hub.get("sent_429", 0),
        "hub_5xx": hub.get("sent_5xx", 0),
        "client_cpu_s": round(sum(os.times()[:2]), 2),
    }
    print("RESULT " + " ".join(f"{k}={v}" for k, v in out.items()), flush=True)
    if poster.first_error:
        print(f"first API error: {poster.first_error}", file=sys.stderr)
    ok = done and poster.errors == 0 and len(first) == args.count
    return 0 if ok else 1


def sas_token(host, policy, key_b64, ttl=3600):
    """A service SAS token for the simulated hub (azure-iothub.md §1.3)."""
    import base64
    import hashlib
    import hmac
    se = str(int(time.time()) + ttl)
    sig = base64.b64encode(hmac.new(base64.b64decode(key_b64), f"{host}\n{se}".encode(),
                                    hashlib.sha256).digest()).decode()
    return (f"SharedAccessSignature sr={host}&sig={urllib.parse.quote(sig, safe='')}&se={se}"
            f"&skn={policy}")


def registry_tokens(args, ctx):
    _, hub = stats(args, ctx)
    return ((hub.get("throttle") or {}).get("tokens") or {}).get("registry", 0)


def drain_registry(args, ctx):
    """Spends the simulator's registry bucket down to about --drain-to tokens with device reads
    (404s), so the quota run starts with no slack beyond that: a limiter even slightly faster
    than the quota then meets 429s within the window."""
    import http.client
    u = urllib.parse.urlsplit(args.hub)
    host = f"{u.hostname}:{u.port}"
    token = sas_token(host, args.hub_policy, args.hub_key)
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=10)
    try:
        for _ in range(20):
            excess = int(registry_tokens(args, ctx) - args.drain_to)
            if excess <= 20:
                break
            for _ in range(excess):
                conn.request("GET", "/devices/bench-drain?api-version=2021-04-12",
                             headers={"Authorization": token})
                r = conn.getresponse()
                r.read()
                if r.status not in (404, 429):
                    raise RuntimeError(f"draining the registry bucket: {r.status}")
    finally:
        conn.close()
    return registry_tokens(args, ctx)


async def main_quota(args, ctx):
    """Posts every device, then samples the hub's registry counter over the window."""
    drained = None
    if args.drain_to >= 0:
        drained = drain_registry(args, ctx)
    _, hub0 = stats(args, ctx)
    poster = Poster(args)
    post_task = asyncio.ensure_future(poster.run())
    loop = asyncio.get_running_loop()
    t_start = time.time()
    await asyncio.sleep(args.quota_warmup)
    samples = []
    t_window_end = time.time() + args.quota_window
    while True:
        now = time.time()
        _, hub = await loop.run_in_executor(None, stats, args, ctx)
        by = hub["by_class"]
        tokens = ((hub.get("throttle") or {}).get("tokens") or {}).get("registry", 0)
        samples.append((now, by.get("registry", 0) + by.get("bulk", 0), hub.get("sent_429", 0),
                        hub.get("throttled", 0), tokens))
        if now >= t_window_end:
            break
        await asyncio.sleep(min(1.0, max(0.0, t_window_end - time.time())))
    await post_task
    (t1, r1, s1, th1, _), (t2, r2, s2, th2, _) = samples[0], samples[-1]
    window = t2 - t1
    ops = (r2 - r1) - (th2 - th1)  # registry requests the hub accepted
    quota = args.quota_per_min * window / 60.0
    _, hub = await loop.run_in_executor(None, stats, args, ctx)
    backlog = args.count - hub["devices"]
    out = {
        "window_s": round(window, 2),
        "registry_ops": ops,
        "quota_ops": round(quota, 1),
        "used_pct": round(100.0 * ops / quota, 2) if quota else 0,
        "ops_per_min": round(ops * 60.0 / window, 1) if window else 0,
        "hub_429_total": hub.get("sent_429", 0) - hub0.get("sent_429", 0),
        "hub_throttled_total": hub.get("throttled", 0) - hub0.get("throttled", 0),
        "hub_tokens_at_start": round(drained, 1) if drained is not None else "full",
        "hub_429_in_window": s2 - s1,
        "warmup_s": round(t1 - t_start, 2),
        "hub_tokens_min": round(min(x[4] for x in samples), 1),
        "backlog_at_end": backlog,
        "api_errors": poster.errors,
    }
    print("QUOTA " + " ".join(f"{k}={v}" for k, v in out.items()), flush=True)
    return 0 if poster.errors == 0 and backlog > 0 else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--api", required=True, help="the service's base URL, http://host:port")
    p.add_argument("--tenant", default="")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--prefix", default="bench-")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rate", type=float, default=0, help="requests/s in all; 0: unpaced")
    p.add_argument("--sink", required=True, help="configure-sink base URL")
    p.add_argument("--hub", required=True, help="iothub-sim base URL (https://host:port)")
    p.add_argument("--ca", help="CA bundle of the hub simulator")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--poll", type=float, default=0.1)
    p.add_argument("--quota-window", type=float, default=0)
    p.add_argument("--quota-warmup", type=float, default=10)
    p.add_argument("--quota-per-min", type=float, default=5000)
    p.add_argument("--drain-to", type=float, default=-1,
                   help="quota mode: first spend the hub's registry bucket down to this many "
                        "tokens (-1: leave it full)")
    p.add_argument("--hub-policy", default="iothubowner")
    p.add_argument("--hub-key", help="the policy's key (base64), for --drain-to")
    args = p.parse_args()
    ctx = ssl.create_default_context(cafile=args.ca) if args.ca else None
    run = main_quota if args.quota_window else main_provision
    sys.exit(asyncio.run(run(args, ctx)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
