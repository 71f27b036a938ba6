"""Chaos and resilience tests of the device lifecycle pipeline (issue 4, items 5 and 8).

The proof of item 5: several iot-manager processes (servers and a worker-only process, 4 worker
threads each) share one NATS JetStream consumer and one store; thousands of devices of two
tenants receive random interleaved sequences of Mender's lifecycle calls (accept = provision,
reject / dismiss / re-accept = bulk status, decommission) from concurrent client threads while
processes are SIGKILLed and restarted. At the end every device's hub identity is in the state of
its latest acknowledged event, its connection string reached Configure, and nothing was lost,
duplicated or dead-lettered.

The resilience scenarios of item 8 run a small fleet through: the hub answering 429 and 503 for
a while, NATS restarted, the store unavailable for a while, and a process killed with events in
flight.

Order model: a device's events are sent one after the other (the next only after the previous
was answered 202), so the order of a device's 202s is the order of its events in the stream, and
its expected end state is the one its last event implies. A request answered 503 or lost with a
killed server is sent again (as Mender's workflows retry); a copy the stream stored anyway is
the same event, stored before the retry, so it changes nothing.

Every number a run measures (events, duration, redeliveries, deployments per device) is printed
(pytest -s shows it) and appended to $IOT_MANAGER_CHAOS_REPORT when that is set.

Knobs: IOT_MANAGER_CHAOS_DEVICES (SQLite fleet, 2000), IOT_MANAGER_CHAOS_MONGO_DEVICES (FerretDB
fleet, 1000) and IOT_MANAGER_CHAOS_MONGO_TIME_LIMIT (240 s), IOT_MANAGER_CHAOS_SEED (the random
sequences and kill moments), IOT_MANAGER_CHAOS_PROGRESS=1 (the consumer's counters every 5 s
while waiting).
"""

import collections
import contextlib
import http.client
import json
import os
import random
import signal
import sqlite3
import threading
import time
import uuid

import pytest

from conftest import (INTERNAL, alarm_paused, create_sim_integration, hub_env, lifecycle_env,
                      new_tenant, wait_until)

CONSUMER = "iot-manager-workers"
EVENTS_STREAM = "IOT_MANAGER_EVENTS"
DLQ_STREAM = "IOT_MANAGER_DLQ"

ACCEPT, REJECT, DISMISS, REACCEPT, DECOMMISSION = ("accept", "reject", "dismiss", "reaccept",
                                                   "decommission")
BULK_STATUS = {REJECT: "rejected", DISMISS: "noauth", REACCEPT: "accepted"}
CLIENT_TIMEOUT = 30  # s; the service gives up publishing after IOT_MANAGER_PUBLISH_TIMEOUT_MS


def pipeline_env(nats, msim, sim, **extra):
    """Settings of every process: fast recovery from kills (short ack wait and lease TTL), hub
    and Mender calls bounded well below the lease TTL (a holder renews between calls), no rate
    limiter (the simulator does not throttle either)."""
    env = hub_env(sim)
    env.update(lifecycle_env(nats, msim))
    env.update({
        "IOT_MANAGER_WORKERS": "4",
        "IOT_MANAGER_NATS_ACK_WAIT_MS": "4000",
        "IOT_MANAGER_LEASE_TTL_MS": "9000",
        "IOT_MANAGER_HUB_RATELIMIT": "false",
        "IOT_MANAGER_HUB_REGISTRY_PER_MIN": "1000000",
        "IOT_MANAGER_HUB_TWIN_UPDATES_PER_S": "100000",
        "IOT_MANAGER_HUB_TWIN_READS_PER_S": "100000",
        "IOT_MANAGER_HUB_TIMEOUT_MS": "2500",
        "IOT_MANAGER_HUB_CONNECT_TIMEOUT_MS": "1000",
        "IOT_MANAGER_MENDER_TIMEOUT_MS": "2500",
        "IOT_MANAGER_STORE_TIMEOUT_MS": "2500",
        "IOT_MANAGER_PUBLISH_TIMEOUT_MS": "2000",
        "IOT_MANAGER_LOG_LEVEL": "info",
    })
    env.update(extra)
    return env


def report(name, numbers):
    """Prints a run's numbers and keeps them where the caller asked."""
    line = json.dumps({"test": name, **numbers}, sort_keys=True)
    print(f"\n[chaos report] {line}")
    path = os.environ.get("IOT_MANAGER_CHAOS_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


# --------------------------------------------------------------------------------------------
# Expected state
# --------------------------------------------------------------------------------------------

def expected_state(ops):
    """None (no identity in the hub), "enabled" or "disabled" after `ops`, in order.

    Provision and decommission decide whether the identity exists; provision and the status
    events decide whether it is enabled; a status event never creates an identity."""
    exists = False
    enabled = False
    for op in ops:
        if op == ACCEPT:
            exists, enabled = True, True
        elif op == DECOMMISSION:
            exists = False
        else:
            enabled = op == REACCEPT
    if not exists:
        return None
    return "enabled" if enabled else "disabled"


class Device:
    def __init__(self, tenant, device_id, ops):
        self.tenant = tenant  # FleetTenant
        self.id = device_id
        self.ops = list(ops)
        self.pos = 0  # next event to send
        self.acked = []  # global 202 order of each acknowledged event

    @property
    def provisions(self):
        return self.ops.count(ACCEPT)

    @property
    def expected(self):
        """The state its last event implies, by the order the API answered 202."""
        if not self.acked:  # built by a test that sent the events itself, in this order
            return expected_state(self.ops)
        assert len(self.acked) == len(self.ops), f"{self.id}: not every event was accepted"
        return expected_state([op for _, op in sorted(zip(self.acked, self.ops))])


class FleetTenant:
    def __init__(self, tenant_id, iid):
        self.id = tenant_id
        self.iid = iid


def random_ops(rng, length_range=(1, 6), status_only_share=0.08):
    """A random interleaving of Mender's lifecycle calls for one device."""
    n = rng.randint(*length_range)
    if rng.random() < status_only_share:
        # never accepted: only status events (and maybe a decommission) for a device unknown to us
        return rng.choices([REJECT, DISMISS, REACCEPT, DECOMMISSION], weights=[3, 3, 3, 1], k=n)
    ops = rng.choices([ACCEPT, REJECT, DISMISS, REACCEPT, DECOMMISSION],
                      weights=[3.0, 2.0, 2.0, 2.0, 1.5], k=n)
    if ACCEPT not in ops:
        ops[rng.randrange(n)] = ACCEPT
    return ops


# --------------------------------------------------------------------------------------------
# The client: Mender's internal calls, retried like workflows retries them
# --------------------------------------------------------------------------------------------

class ClientStats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.accepted = 0  # 202 answers
        self.retried_503 = 0
        self.connection_errors = 0
        self.events = 0  # events acknowledged with 202

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


class InternalClient:
    """Sends one internal API call until a server answers 202. 503 (NATS did not store the event)
    and connection failures (a killed server) are retried, on any server that is up; anything
    else fails the test."""

    def __init__(self, services, stats, rng_seed=0, give_up_after=90):
        self.services = services
        self.stats = stats
        self.rng = random.Random(rng_seed)
        self.give_up_after = give_up_after

    def call(self, method, path, body=None):
        deadline = time.monotonic() + self.give_up_after
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        attempt = 0
        while True:
            attempt += 1
            svc = self.rng.choice(self.services)
            self.stats.add(requests=1)
            try:
                conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=CLIENT_TIMEOUT)
                try:
                    conn.request(method, path, body=data, headers=headers)
                    r = conn.getresponse()
                    status, text = r.status, r.read()
                finally:
                    conn.close()
            except OSError:
                self.stats.add(connection_errors=1)
                status, text = None, b""
            if status == 202:
                self.stats.add(accepted=1)
                return attempt
            if status not in (None, 503):
                raise AssertionError(f"{method} {path}: unexpected answer {status}: {text[:300]!r}")
            if status == 503:
                self.stats.add(retried_503=1)
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} {path}: no 202 within {self.give_up_after} s "
                                     f"(last answer {status}: {text[:300]!r})")
            time.sleep(min(0.05 * attempt, 0.5) * (0.5 + self.rng.random()))


def full_device(device_id):
    """deviceauth's device object as provision_device sends it."""
    return {"id": device_id, "status": "accepted", "created_ts": "2024-05-01T10:00:00Z",
            "auth_sets": [{"id": str(uuid.uuid4()), "identity_data": {"mac": device_id[-12:]},
                           "status": "accepted", "ts": "2024-05-01T10:00:00Z"}]}


class Dispatcher:
    """Sends every device's events: across devices in random order and in random batches (a bulk
    status request carries many devices' events), per device strictly in sequence order."""

    def __init__(self, devices, client_factory, rng, max_bulk=100, threads=6):
        self.rng = rng
        self.max_bulk = max_bulk
        self.threads = threads
        self.client_factory = client_factory
        self.lock = threading.Lock()
        self.ready = collections.defaultdict(list)  # (tenant id, op) -> [Device]
        self.tenants = {}
        self.in_flight = 0
        self.remaining = 0
        self.order = 0  # global 202 counter
        self.error = None
        self.done = threading.Event()
        for d in devices:
            self.tenants[d.tenant.id] = d.tenant
            if d.ops:
                self.ready[(d.tenant.id, d.ops[0])].append(d)
                self.remaining += len(d.ops)
        if self.remaining == 0:
            self.done.set()

    def _take(self):
        """A batch of devices whose next event is the same call, or None when nothing is ready."""
        keys = [k for k, v in self.ready.items() if v]
        if not keys:
            return None
        key = self.rng.choices(keys, weights=[len(self.ready[k]) for k in keys])[0]
        pool = self.ready[key]
        n = 1 if key[1] not in BULK_STATUS else self.rng.randint(1, min(self.max_bulk, len(pool)))
        batch = []
        for _ in range(n):
            i = self.rng.randrange(len(pool))
            pool[i], pool[-1] = pool[-1], pool[i]
            batch.append(pool.pop())
        return key, batch

    def _send(self, client, key, batch):
        tenant_id, op = key
        base = f"{INTERNAL}/tenants/{tenant_id}"
        if op == ACCEPT:
            client.call("POST", f"{base}/devices", full_device(batch[0].id))
        elif op == DECOMMISSION:
            client.call("DELETE", f"{base}/devices/{batch[0].id}")
        else:
            items = [{"id": d.id, "revision": 1 + d.pos} for d in batch]
            client.call("PUT", f"{base}/bulk/devices/status/{BULK_STATUS[op]}", items)

    def _worker(self, index):
        client = self.client_factory(index)
        while True:
            with self.lock:
                while True:
                    if self.error is not None or self.remaining == 0:
                        self.done.set()
                        return
                    taken = self._take()
                    if taken is not None:
                        break
                    # everything ready is in flight elsewhere: wait for an answer
                    self.lock.release()
                    time.sleep(0.002)
                    self.lock.acquire()
                self.in_flight += 1
            key, batch = taken
            try:
                self._send(client, key, batch)
            except BaseException as e:  # noqa: BLE001 - reported by run()
                with self.lock:
                    self.error = self.error or e
                    self.done.set()
                return
            with self.lock:
                self.in_flight -= 1
                for d in batch:
                    self.order += 1
                    d.acked.append(self.order)
                    d.pos += 1
                    self.remaining -= 1
                    if d.pos < len(d.ops):
                        self.ready[(d.tenant.id, d.ops[d.pos])].append(d)
                client.stats.add(events=len(batch))

    def run(self):
        workers = [threading.Thread(target=self._worker, args=(i,), daemon=True)
                   for i in range(self.threads)]
        for w in workers:
            w.start()
        for w in workers:
            while w.is_alive():
                w.join(0.2)
        if self.error is not None:
            raise self.error
        assert self.remaining == 0


# --------------------------------------------------------------------------------------------
# Processes, NATS state, end state
# --------------------------------------------------------------------------------------------

def wait_healthy(svc, timeout=20):
    def ok():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=2)
            conn.request("GET", f"{INTERNAL}/health")
            status = conn.getresponse().status
            conn.close()
            return status == 204
        except OSError:
            return False

    wait_until(ok, timeout, interval=0.05, what="the service's health (NATS connected)")


def start_worker_process(svc, timeout=20):
    """Starts `worker` (no HTTP) and waits for its readiness line in this run's log."""
    offset = svc.log_path.stat().st_size if svc.log_path.exists() else 0
    svc.start(args=["worker"], wait=False)

    def ready():
        if svc.proc.poll() is not None:
            raise AssertionError(f"worker exited with {svc.proc.returncode}:\n{svc.log_tail()}")
        return "worker ready" in svc.log_text()[offset:]

    wait_until(ready, timeout, interval=0.05, what="the worker's readiness line")


class Process:
    """One service process of the fleet and how to (re)start it."""

    def __init__(self, svc, kind):
        self.svc = svc
        self.kind = kind  # "server" or "worker"
        self.kills = 0

    def start(self):
        if self.kind == "server":
            self.svc.start(args=["server"])
            wait_healthy(self.svc)
        else:
            start_worker_process(self.svc)

    def kill(self):
        self.svc.proc.send_signal(signal.SIGKILL)
        self.svc.proc.wait(10)
        self.kills += 1


def consumer_state(nats):
    """The durable consumer's and the streams' counters from the monitoring endpoint."""
    status, body = nats._get("/jsz?accounts=true&streams=true&consumers=true")
    assert status == 200, body
    out = {"consumer": None, "streams": {}}
    for account in json.loads(body).get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            out["streams"][stream["name"]] = stream.get("state") or {}
            for c in stream.get("consumer_detail") or []:
                if c.get("name") == CONSUMER:
                    out["consumer"] = c
    return out


_progress = {"t": 0.0}


def drained(nats):
    st = consumer_state(nats)
    if os.environ.get("IOT_MANAGER_CHAOS_PROGRESS") and time.monotonic() - _progress["t"] > 5:
        _progress["t"] = time.monotonic()
        c = st["consumer"] or {}
        print(f"[progress] pending={c.get('num_pending')} ack_pending={c.get('num_ack_pending')} "
              f"delivered={c.get('delivered', {}).get('consumer_seq')} "
              f"redelivered={c.get('num_redelivered')}", flush=True)
    c = st["consumer"]
    if c is None:
        return None
    events = st["streams"].get(EVENTS_STREAM, {})
    if c.get("num_pending", 1) or c.get("num_ack_pending", 1) or events.get("messages", 1):
        return None
    return st


def wait_drained(nats, timeout, quiet=2.0):
    """Until nothing is pending or unacknowledged, and it stays so for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        st = wait_until(lambda: drained(nats), max(1.0, deadline - time.monotonic()),
                        interval=0.2, what="the consumer to have nothing pending")
        time.sleep(quiet)
        again = drained(nats)
        if again is not None and (again["consumer"]["delivered"]["consumer_seq"]
                                  == st["consumer"]["delivered"]["consumer_seq"]):
            return again
        if time.monotonic() > deadline:
            raise AssertionError("the consumer never stayed drained")


def hub_dump(sim):
    """{device id: device} of every identity in the simulated hub, and the twins."""
    r = sim._request("GET", "/_sim/devices", timeout=60)
    assert r.status == 200, r
    dump = r.json()
    ids = [d["deviceId"] for d in dump["devices"]]
    assert len(ids) == len(set(ids)), "an identity appears twice in the hub"
    return {d["deviceId"]: d for d in dump["devices"]}, dump["twins"]


def configure_deliveries(msim):
    """{(tenant, device): [connection string delivered, ...]} in arrival order: the workflows
    requests Configure accepted (each one deployed the string), from the simulator's log."""
    status, body = msim._call("GET", "/_sim/requests")
    assert status == 200, body
    out = collections.defaultdict(list)
    for r in body["requests"]:
        if r["method"] != "POST" or r["path"] != "/api/v1/workflow/provision_external_device":
            continue
        if r.get("status") not in (None, 201):
            continue
        sent = r["body"] if isinstance(r["body"], dict) else json.loads(r["body"])
        conf = sent["configuration"]
        if isinstance(conf, str):
            conf = json.loads(conf)
        out[(sent["tenant_id"], sent["device_id"])].append(conf["azureConnectionString"])
    return out


def store_links(svc):
    """{(tenant, device): [integration id, ...]} of the device records in the store."""
    links = {}
    if svc.backend == "mongo":
        for doc in svc.db.devices.find({}):
            ids = [str(uuid.UUID(bytes=bytes(b))) for b in doc.get("integration_ids") or []]
            key = (doc.get("tenant_id", ""), doc["_id"])
            assert key not in links, f"device record {key} stored twice"
            links[key] = ids
        return links
    with contextlib.closing(sqlite3.connect(str(svc.sqlite_path), timeout=10)) as con:
        for tenant, device in con.execute("SELECT tenant_id, id FROM devices"):
            assert (tenant, device) not in links, f"device record {(tenant, device)} stored twice"
            links[(tenant, device)] = []
        for tenant, device, iid in con.execute(
                "SELECT tenant_id, device_id, integration_id FROM device_integrations"):
            links.setdefault((tenant, device), []).append(str(uuid.UUID(bytes=bytes(iid))))
    return links


def verify_end_state(devices, sim, msim, svc, host, max_extra_deployments):
    """Asserts the end state of every device; returns the numbers for the report."""
    hub, twins = hub_dump(sim)
    deliveries = configure_deliveries(msim)
    links = store_links(svc)
    ours = {d.id for d in devices}
    problems = []
    unexpected = sorted(set(hub) - ours)
    if unexpected:
        problems.append(f"{len(unexpected)} identities no event asked for: {unexpected[:5]}")
    deploy_hist = collections.Counter()
    excess_hist = collections.Counter()
    present = disabled = absent = repeats = 0
    for d in devices:
        want = d.expected
        have = hub.get(d.id)
        sent = deliveries.get((d.tenant.id, d.id), [])
        deploy_hist[len(sent)] += 1
        excess_hist[len(sent) - d.provisions] += 1
        if len(sent) > d.provisions + max_extra_deployments:
            problems.append(f"{d.id} ({d.ops}): {len(sent)} Configure deployments for "
                            f"{d.provisions} provision event(s)")
        # each distinct string is an identity created for a provision event: a redelivery never
        # creates a second one (a repeat of the same string is a kill between deploy and record)
        if len(set(sent)) > d.provisions:
            problems.append(f"{d.id} ({d.ops}): {len(set(sent))} different connection strings "
                            f"for {d.provisions} provision event(s)")
        repeats += len(sent) - len(set(sent))
        link = links.get((d.tenant.id, d.id))
        if want is None:
            absent += 1
            if have is not None:
                problems.append(f"{d.id} ({d.ops}): expected absent, hub has it {have['status']}")
            if link:
                problems.append(f"{d.id} ({d.ops}): expected absent, still linked in the store")
            continue
        present += 1
        disabled += want == "disabled"
        if have is None:
            problems.append(f"{d.id} ({d.ops}): expected {want}, missing from the hub")
            continue
        if have["status"] != want:
            problems.append(f"{d.id} ({d.ops}): expected {want}, hub has {have['status']}")
        if not sent:
            problems.append(f"{d.id} ({d.ops}): its connection string never reached Configure")
        else:
            key = have["authentication"]["symmetricKey"]["primaryKey"]
            cs = f"HostName={host};DeviceId={d.id};SharedAccessKey={key}"
            if sent[-1] != cs:
                problems.append(f"{d.id} ({d.ops}): the last connection string delivered does "
                                f"not carry the identity's current primary key")
        if (twins.get(d.id) or {}).get("tags") != {"mender": True}:
            problems.append(f"{d.id} ({d.ops}): twin tags {twins.get(d.id, {}).get('tags')}")
        if link != [d.tenant.iid]:
            problems.append(f"{d.id} ({d.ops}): store links {link}, expected [{d.tenant.iid}]")
    assert not problems, f"{len(problems)} device(s) wrong:\n" + "\n".join(problems[:40])
    return {"present": present, "present_disabled": disabled, "absent": absent,
            "deployments_per_device": dict(sorted(deploy_hist.items())),
            "deployments_minus_provisions": dict(sorted(excess_hist.items())),
            "same_string_delivered_again": repeats}


def make_tenants(api_svc, sim, n):
    tenants = []
    for _ in range(n):
        tid = new_tenant()
        iid = create_sim_integration(api_svc.user(tid), sim)
        tenants.append(FleetTenant(tid, iid))
    return tenants


def make_devices(tenants, n, rng, **kw):
    return [Device(tenants[i % len(tenants)], str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                   random_ops(rng, **kw)) for i in range(n)]


def shared_store_env(backend, first):
    """What makes another process use `first`'s store."""
    if backend == "sqlite":
        return {"IOT_MANAGER_SQLITE_PATH": str(first.sqlite_path)}
    return {}


# --------------------------------------------------------------------------------------------
# 1. The proof: 3 processes x 4 workers, SIGKILLs, thousands of devices
# --------------------------------------------------------------------------------------------

class Killer(threading.Thread):
    """SIGKILLs a random process of the fleet at random moments and restarts it after a short
    outage, one at a time (so one server always answers), until `kills` were done and `stop` is
    set."""

    def __init__(self, processes, rng, kills, first_after, gap):
        super().__init__(daemon=True)
        self.processes = processes
        self.rng = rng
        self.kills = kills
        self.first_after = first_after
        self.gap = gap
        self.stop = threading.Event()
        self.done = 0
        self.error = None
        self.log = []

    def run(self):
        try:
            if self.stop.wait(self.first_after):
                return
            # every process dies at least once, the others at random
            victims = list(self.processes)
            self.rng.shuffle(victims)
            while self.done < self.kills:
                victim = victims[self.done] if self.done < len(victims) else self.rng.choice(
                    self.processes)
                t0 = time.monotonic()
                victim.kill()
                self.done += 1
                time.sleep(self.rng.uniform(0.2, 1.5))
                victim.start()
                self.log.append((victim.kind, round(time.monotonic() - t0, 2)))
                if self.done < self.kills:
                    time.sleep(self.rng.uniform(*self.gap))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


def run_chaos(service_factory, backend, tmp_path, nats, sim, msim, n_devices, kills, seed,
              client_threads, gap, drain_timeout, label):
    rng = random.Random(seed)
    env = pipeline_env(nats, msim, sim)
    first = service_factory(env=env, start=False, workdir=tmp_path / "server-a")
    shared = shared_store_env(backend, first)
    second = service_factory(env=dict(env, **shared), start=False, workdir=tmp_path / "server-b",
                             dbname=first.dbname)
    worker = service_factory(env=dict(env, **shared), start=False, workdir=tmp_path / "worker",
                             dbname=first.dbname)
    procs = [Process(first, "server"), Process(second, "server"), Process(worker, "worker")]
    for p in procs:
        p.start()
    sim.control("POST", "config", {"latency_ms": 0, "throttle": False})

    tenants = make_tenants(first, sim, 2)
    devices = make_devices(tenants, n_devices, rng)
    n_events = sum(len(d.ops) for d in devices)
    stats = ClientStats()
    servers = [first, second]
    dispatcher = Dispatcher(devices, lambda i: InternalClient(servers, stats, rng_seed=seed + i),
                            random.Random(seed + 1000), threads=client_threads)
    killer = Killer(procs, random.Random(seed + 2000), kills, first_after=0.8, gap=gap)
    before = consumer_state(nats)["streams"].get(EVENTS_STREAM, {}).get("last_seq", 0)

    t0 = time.monotonic()
    killer.start()
    try:
        dispatcher.run()
        t_sent = time.monotonic() - t0
        # the kills go on while the workers catch up
        while killer.is_alive():
            killer.join(0.2)
    finally:
        killer.stop.set()
    assert killer.error is None, f"restarting a killed process failed: {killer.error!r}"
    assert killer.done >= kills
    st = wait_drained(nats, timeout=drain_timeout)
    t_applied = time.monotonic() - t0

    c = st["consumer"]
    stored = st["streams"][EVENTS_STREAM]["last_seq"] - before
    deliveries = c["delivered"]["consumer_seq"]
    dead = st["streams"].get(DLQ_STREAM, {}).get("messages", 0)
    numbers = verify_end_state(devices, sim, msim, first, sim.host, max_extra_deployments=kills)
    numbers.update({
        "backend": backend, "processes": "2 server + 1 worker, 4 workers each",
        "devices": n_devices, "tenants": len(tenants), "events_acknowledged": n_events,
        "events_stored": stored, "http_requests": stats.requests,
        "answers_503": stats.retried_503, "connection_errors": stats.connection_errors,
        "deliveries": deliveries, "redeliveries": deliveries - stored, "dead_letters": dead,
        "kills": [k for k in killer.log], "seconds_sending": round(t_sent, 1),
        "seconds_until_applied": round(t_applied, 1),
        "events_per_second": round(n_events / t_applied, 1),
    })
    report(label, numbers)
    assert stats.events == n_events
    assert stored >= n_events  # a retried request may have stored an event twice
    assert dead == 0, f"{dead} dead letters"
    for p in procs:
        log = p.svc.log_text()
        assert "moved to the dead-letter stream" not in log, p.svc.log_tail()
    return numbers


@pytest.mark.sqlite_only
@pytest.mark.time_limit(180)
def test_chaos_2000_devices_3_processes_with_kills(service_factory, backend, tmp_path,
                                                   dedicated_nats, iothub_sim, mender_sim):
    """The issue's proof: 2 servers + 1 worker process (4 workers each) on one store, 2,000
    devices of 2 tenants, at least 3 SIGKILLs."""
    run_chaos(service_factory, backend, tmp_path, dedicated_nats, iothub_sim, mender_sim,
              n_devices=int(os.environ.get("IOT_MANAGER_CHAOS_DEVICES", "2000")), kills=4,
              seed=int(os.environ.get("IOT_MANAGER_CHAOS_SEED", "4242")), client_threads=8,
              gap=(0.8, 3.0), drain_timeout=120, label="chaos-sqlite")


@pytest.mark.mongo_only
@pytest.mark.time_limit(float(os.environ.get("IOT_MANAGER_CHAOS_MONGO_TIME_LIMIT", "240")))
def test_chaos_3_processes_with_kills_on_ferretdb(service_factory, backend, tmp_path,
                                                  dedicated_nats, iothub_sim, mender_sim):
    """The same on FerretDB. Mutual exclusion does not rest on the store (leases and state are
    NATS KV compare-and-set), but every store call of the workers runs against it concurrently.

    Its default fleet is smaller: FerretDB's SQLite backend pushes down only `{_id: <string>}`
    filters, and the device queries filter on `{_id, tenant_id}`, so each one scans the whole
    devices collection and the run time grows with the square of the fleet (2,000 devices took
    six minutes). IOT_MANAGER_CHAOS_MONGO_DEVICES=2000 (with a larger
    IOT_MANAGER_CHAOS_MONGO_TIME_LIMIT) runs the full proof."""
    run_chaos(service_factory, backend, tmp_path, dedicated_nats, iothub_sim, mender_sim,
              n_devices=int(os.environ.get("IOT_MANAGER_CHAOS_MONGO_DEVICES", "1000")), kills=4,
              seed=int(os.environ.get("IOT_MANAGER_CHAOS_SEED", "4242")) + 1, client_threads=8,
              gap=(1.5, 6.0),
              drain_timeout=float(os.environ.get("IOT_MANAGER_CHAOS_MONGO_TIME_LIMIT", "240")) - 60,
              label="chaos-ferretdb")


# --------------------------------------------------------------------------------------------
# 2. Resilience: a small fleet through one failure each, on both stores
# --------------------------------------------------------------------------------------------

# Every sequence has at most one accept, so "exactly as if nothing had failed" means: one
# Configure deployment for every device that ends in the hub, none beyond one for the others.
RESILIENCE_MENU = [
    [ACCEPT], [ACCEPT, REJECT], [ACCEPT, DISMISS], [ACCEPT, REJECT, REACCEPT],
    [ACCEPT, DISMISS, REACCEPT, REJECT], [ACCEPT, DECOMMISSION], [ACCEPT, REJECT, DECOMMISSION],
    [REJECT], [DISMISS, DECOMMISSION], [REJECT, ACCEPT],
]


def resilience_devices(tenants, n, rng):
    return [Device(tenants[i % len(tenants)], str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                   RESILIENCE_MENU[i % len(RESILIENCE_MENU)]) for i in range(n)]


def start_fleet(service_factory, backend, tmp_path, env, with_worker=False, mongo=None):
    """One server (API and workers), optionally a worker-only process on the same store."""
    server = service_factory(env=env, start=False, workdir=tmp_path / "server", mongo=mongo)
    procs = [Process(server, "server")]
    if with_worker:
        worker = service_factory(env=dict(env, **shared_store_env(backend, server)), start=False,
                                 workdir=tmp_path / "worker", mongo=mongo, dbname=server.dbname)
        procs.append(Process(worker, "worker"))
    for p in procs:
        p.start()
    return server, procs


def event_log(svc, tenants):
    """Every event log entry of the tenants, through the management API."""
    out = []
    for t in tenants:
        user = svc.user(t.id)
        page = 1
        while True:
            r = svc.api.get(f"/api/management/v1/iot-manager/events?page={page}&per_page=500",
                            token=user.token)
            assert r.status == 200, r
            batch = r.json()
            out.extend(batch)
            if len(batch) < 500:
                break
            page += 1
    return out


def check_event_log(svc, tenants, numbers, exact):
    """No permanent failure was logged; one device-provisioned entry per deployment (`exact`),
    or at most that many (a failure of the store may lose an entry: it is only logged)."""
    entries = event_log(svc, tenants)
    failed = [e for e in entries if not all(s["success"] for s in e["delivery_statuses"])]
    assert not failed, f"failures in the event log: {failed[:5]}"
    provisioned = sum(1 for e in entries if e["type"] == "device-provisioned")
    deployments = sum(k * v for k, v in numbers["deployments_per_device"].items())
    numbers["event_log_entries"] = len(entries)
    numbers["event_log_provisioned"] = provisioned
    if exact:
        assert provisioned == deployments, (provisioned, deployments)
    else:
        assert provisioned <= deployments, (provisioned, deployments)


def run_dispatch(devices, servers, seed, threads=4, max_bulk=20):
    stats = ClientStats()
    dispatcher = Dispatcher(devices, lambda i: InternalClient(servers, stats, rng_seed=seed + i),
                            random.Random(seed), max_bulk=max_bulk, threads=threads)
    dispatcher.run()
    return stats


class Background(threading.Thread):
    """Runs `fn` while the test injects a failure; join() re-raises what it raised."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn = fn
        self.result = None
        self.error = None

    def run(self):
        try:
            self.result = self.fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in join()
            self.error = e

    def join(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_alive():
            super().join(0.2)
            if deadline is not None and time.monotonic() > deadline:
                raise AssertionError("the client did not finish in time")
        if self.error is not None:
            raise self.error
        return self.result


def acked_events(devices):
    return sum(len(d.acked) for d in devices)


@pytest.mark.time_limit(90)
def test_hub_throttling_and_outage_for_a_while(service_factory, backend, tmp_path, dedicated_nats,
                                               iothub_sim, mender_sim):
    """(a) The hub answers 429 with Retry-After and 503 for a while: nothing is lost and nothing
    is done twice."""
    env = pipeline_env(dedicated_nats, mender_sim, iothub_sim)
    server, _ = start_fleet(service_factory, backend, tmp_path, env)
    rng = random.Random(11)
    tenants = make_tenants(server, iothub_sim, 2)
    devices = resilience_devices(tenants, 50, rng)
    # creations throttled for 4 s, everything else failing for 2.5 s, overlapping the events
    iothub_sim.fault(match="PUT /devices", status=429, retry_after=1, duration_ms=4000)
    iothub_sim.fault(match="/", status=503, duration_ms=2500)
    t0 = time.monotonic()
    stats = run_dispatch(devices, [server], seed=12)
    st = wait_drained(dedicated_nats, timeout=60)
    elapsed = time.monotonic() - t0
    log = iothub_sim.requests()
    throttled = sum(1 for e in log if e["status"] == 429)
    unavailable = sum(1 for e in log if e["status"] == 503)
    assert throttled > 0 and unavailable > 0, "the faults were not hit"
    numbers = verify_end_state(devices, iothub_sim, mender_sim, server, iothub_sim.host,
                               max_extra_deployments=0)
    check_event_log(server, tenants, numbers, exact=True)
    assert st["streams"].get(DLQ_STREAM, {}).get("messages", 0) == 0
    numbers.update({"backend": backend, "events": acked_events(devices),
                    "hub_429": throttled, "hub_503": unavailable,
                    "deliveries": st["consumer"]["delivered"]["consumer_seq"],
                    "answers_503": stats.retried_503, "seconds": round(elapsed, 1)})
    report("hub-429-503", numbers)


@pytest.mark.time_limit(90)
def test_nats_restarted_mid_run(service_factory, backend, tmp_path, dedicated_nats, iothub_sim,
                                mender_sim):
    """(b) NATS stops and starts again (same port and store) while events flow: the internal API
    answers 503 meanwhile, the client retries, and nothing answered 202 is lost."""
    env = pipeline_env(dedicated_nats, mender_sim, iothub_sim,
                       IOT_MANAGER_PUBLISH_TIMEOUT_MS="1000")
    server, procs = start_fleet(service_factory, backend, tmp_path, env, with_worker=True)
    rng = random.Random(21)
    tenants = make_tenants(server, iothub_sim, 2)
    devices = resilience_devices(tenants, 60, rng)
    # each hub call takes a while, so the workers are mid-event when NATS goes away
    iothub_sim.control("POST", "config", {"latency_ms": 15})
    n_events = sum(len(d.ops) for d in devices)
    t0 = time.monotonic()
    client = Background(lambda: run_dispatch(devices, [server], seed=22, threads=3, max_bulk=5))
    client.start()
    wait_until(lambda: acked_events(devices) >= n_events // 3 or not client.is_alive(), 30,
               interval=0.01, what="a third of the events accepted")
    acked_before = acked_events(devices)
    dedicated_nats.stop()
    # while NATS is down: health and the internal API answer 503
    wait_until(lambda: server.api.get(f"{INTERNAL}/health").status == 503, 15, interval=0.05,
               what="health 503 without NATS")
    probe = server.api.put(f"{INTERNAL}/tenants/{tenants[0].id}/bulk/devices/status/rejected",
                           [{"id": str(uuid.uuid4())}])
    assert probe.status == 503, probe
    time.sleep(1.5)
    dedicated_nats.start()
    stats = client.join(60)
    st = wait_drained(dedicated_nats, timeout=60)
    elapsed = time.monotonic() - t0
    assert stats.retried_503 > 0, "no call met the outage"
    numbers = verify_end_state(devices, iothub_sim, mender_sim, server, iothub_sim.host,
                               max_extra_deployments=0)
    check_event_log(server, tenants, numbers, exact=True)
    assert st["streams"].get(DLQ_STREAM, {}).get("messages", 0) == 0
    numbers.update({"backend": backend, "events": acked_events(devices),
                    "acked_before_outage": acked_before, "answers_503": stats.retried_503,
                    "connection_errors": stats.connection_errors,
                    "deliveries": st["consumer"]["delivered"]["consumer_seq"],
                    "seconds": round(elapsed, 1)})
    report("nats-restart", numbers)


# what the workers say when a store call fails (then they retry the event)
STORE_FAILURES = ("failed to retrieve integrations", "failed to retrieve the device",
                  "failed to connect device to integration",
                  "failed to disconnect the device from the integration",
                  "failed to delete the device")


@contextlib.contextmanager
def sqlite_locked(path):
    """Holds SQLite's write lock on `path` (BEGIN EXCLUSIVE) until the block ends."""
    con = sqlite3.connect(str(path), timeout=10, isolation_level=None)
    try:
        con.execute("BEGIN EXCLUSIVE")
        yield
        con.execute("ROLLBACK")
    finally:
        con.close()


@pytest.mark.time_limit(120)
def test_store_unavailable_for_a_while(service_factory, backend, tmp_path, dedicated_nats,
                                       iothub_sim, mender_sim, request):
    """(c) The store fails for a while (FerretDB stopped and started again on the same port and
    data; SQLite's write lock held by another process): the events are retried and applied."""
    mongo = request.getfixturevalue("dedicated_mongo") if backend == "mongo" else None
    env = pipeline_env(dedicated_nats, mender_sim, iothub_sim,
                       IOT_MANAGER_STORE_TIMEOUT_MS="500", IOT_MANAGER_LOG_LEVEL="debug")
    server, _ = start_fleet(service_factory, backend, tmp_path, env, mongo=mongo)
    rng = random.Random(31)
    tenants = make_tenants(server, iothub_sim, 2)
    devices = resilience_devices(tenants, 50, rng)
    iothub_sim.control("POST", "config", {"latency_ms": 10})
    n_events = sum(len(d.ops) for d in devices)
    t0 = time.monotonic()
    client = Background(lambda: run_dispatch(devices, [server], seed=32, threads=3, max_bulk=5))
    client.start()
    wait_until(lambda: acked_events(devices) >= n_events // 4 or not client.is_alive(), 30,
               interval=0.01, what="a quarter of the events accepted")
    if backend == "mongo":
        mongo.stop()
        time.sleep(3)
        with alarm_paused():
            mongo.start()
    else:
        with sqlite_locked(server.sqlite_path):
            time.sleep(3)
    stats = client.join(60)
    st = wait_drained(dedicated_nats, timeout=90)
    elapsed = time.monotonic() - t0
    numbers = verify_end_state(devices, iothub_sim, mender_sim, server, iothub_sim.host,
                               max_extra_deployments=0)
    check_event_log(server, tenants, numbers, exact=False)
    assert st["streams"].get(DLQ_STREAM, {}).get("messages", 0) == 0
    store_retries = [line for line in server.log_lines() if "retrying in" in line and any(
        what in line for what in STORE_FAILURES)]
    numbers.update({"backend": backend, "events": acked_events(devices),
                    "answers_503": stats.retried_503,
                    "deliveries": st["consumer"]["delivered"]["consumer_seq"],
                    "retries_for_the_store": len(store_retries),
                    "event_log_writes_lost": server.log_text().count("cannot save the"),
                    "seconds": round(elapsed, 1)})
    report("store-unavailable", numbers)
    assert store_retries, "no event met the store's outage"


@pytest.mark.time_limit(90)
def test_kill_with_events_in_flight(service_factory, backend, tmp_path, dedicated_nats,
                                    iothub_sim, mender_sim):
    """(d) SIGKILL right after a burst of 202s, restart: everything applied; a device may be
    deployed a second time only because the kill fell between the deploy and its record."""
    env = pipeline_env(dedicated_nats, mender_sim, iothub_sim)
    server, procs = start_fleet(service_factory, backend, tmp_path, env)
    rng = random.Random(41)
    tenants = make_tenants(server, iothub_sim, 2)
    devices = resilience_devices(tenants, 50, rng)
    # slow hub calls: the four workers fall behind the burst and are mid-event when killed
    iothub_sim.control("POST", "config", {"latency_ms": 150})
    t0 = time.monotonic()
    stats = run_dispatch(devices, [server], seed=42, threads=6, max_bulk=25)
    # right after the burst, as soon as the workers hold events
    before = wait_until(lambda: (lambda c: c if c and c["num_ack_pending"] else None)(
        consumer_state(dedicated_nats)["consumer"]), 10, interval=0.01,
        what="the workers to hold events")
    procs[0].kill()
    in_flight = before["num_ack_pending"]
    unprocessed = before["num_pending"] + in_flight
    iothub_sim.control("POST", "config", {"latency_ms": 0})
    procs[0].start()
    st = wait_drained(dedicated_nats, timeout=60)
    elapsed = time.monotonic() - t0
    numbers = verify_end_state(devices, iothub_sim, mender_sim, server, iothub_sim.host,
                               max_extra_deployments=1)
    check_event_log(server, tenants, numbers, exact=False)
    assert st["streams"].get(DLQ_STREAM, {}).get("messages", 0) == 0
    numbers.update({"backend": backend, "events": acked_events(devices),
                    "unprocessed_at_kill": unprocessed, "in_flight_at_kill": in_flight,
                    "answers_503": stats.retried_503,
                    "deliveries": st["consumer"]["delivered"]["consumer_seq"],
                    "seconds": round(elapsed, 1)})
    report("kill-in-flight", numbers)
    assert in_flight > 0, "nothing was in flight when the process was killed"


# --------------------------------------------------------------------------------------------
# 3. Regressions found by the runs above
# --------------------------------------------------------------------------------------------

def sqlite_exec(path, *statements):
    with contextlib.closing(sqlite3.connect(str(path), timeout=10)) as con, con:
        for sql in statements:
            con.execute(sql)


def linked_in_sqlite(path, device_id):
    with contextlib.closing(sqlite3.connect(str(path), timeout=10)) as con:
        return con.execute("SELECT count(*) FROM device_integrations WHERE device_id = ?",
                           (device_id,)).fetchone()[0] > 0


@pytest.mark.sqlite_only
@pytest.mark.time_limit(60)
def test_reprovision_after_an_interrupted_decommission(service_factory, backend, tmp_path,
                                                       dedicated_nats, iothub_sim, mender_sim):
    """A decommission deleted the identity and unlinked the device, then failed to remove the
    device record (the store failed; a kill there leaves the same state). The device is then
    accepted again and rejected. Whichever of its messages reconciles first, the newer provision
    is applied: the device ends in the hub, disabled, with its new connection string delivered.

    (Before the fix the reconciler decided by the kind of the message in hand: the status or
    the decommission's retry found the device unlinked with a delivered hash, left it alone and
    marked the state applied, so the provision was acknowledged without effect.)"""
    env = pipeline_env(dedicated_nats, mender_sim, iothub_sim, IOT_MANAGER_WORKERS="1",
                       IOT_MANAGER_FETCH_BATCH="1")
    server, _ = start_fleet(service_factory, backend, tmp_path, env)
    tenant = make_tenants(server, iothub_sim, 1)[0]
    dev = str(uuid.uuid4())
    client = InternalClient([server], ClientStats())
    base = f"{INTERNAL}/tenants/{tenant.id}"
    db = server.sqlite_path
    quoted = dev.replace("'", "''")

    client.call("POST", f"{base}/devices", full_device(dev))
    wait_until(lambda: len(configure_deliveries(mender_sim).get((tenant.id, dev), [])) == 1, 20,
               interval=0.05, what="the first provisioning")
    # the store refuses to remove the device record: the decommission stops after the unlink
    sqlite_exec(db, f"CREATE TRIGGER chaos_keep_device BEFORE DELETE ON devices "
                    f"WHEN old.id = '{quoted}' BEGIN SELECT RAISE(ABORT, 'chaos: store down'); END")
    client.call("DELETE", f"{base}/devices/{dev}")
    wait_until(lambda: not iothub_sim.device_exists(dev) and not linked_in_sqlite(db, dev), 20,
               interval=0.05, what="the identity deleted and the device unlinked")
    # linking fails too for a while: the provision's own delivery cannot finish first
    sqlite_exec(db, f"CREATE TRIGGER chaos_no_link BEFORE INSERT ON device_integrations "
                    f"WHEN new.device_id = '{quoted}' BEGIN SELECT RAISE(ABORT, 'chaos'); END")
    client.call("POST", f"{base}/devices", full_device(dev))
    client.call("PUT", f"{base}/bulk/devices/status/rejected", [{"id": dev}])
    time.sleep(2.5)  # the status event and the decommission's retries reconcile meanwhile
    sqlite_exec(db, "DROP TRIGGER chaos_no_link", "DROP TRIGGER chaos_keep_device")
    wait_drained(dedicated_nats, timeout=40)

    have = iothub_sim.twin(dev)
    assert have is not None, "the newer provision was acknowledged without effect"
    d = Device(tenant, dev, [ACCEPT, DECOMMISSION, ACCEPT, REJECT])
    numbers = verify_end_state([d], iothub_sim, mender_sim, server, iothub_sim.host,
                               max_extra_deployments=0)
    assert numbers["present_disabled"] == 1
    sent = configure_deliveries(mender_sim)[(tenant.id, dev)]
    assert len(sent) == 2 and sent[0] != sent[1]  # a new identity, a new key
