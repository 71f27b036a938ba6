"""Internal probes: /alive and /health, including a store outage on MongoDB."""

import time

import pytest

from conftest import INTERNAL, new_tenant, random_key, sas_integration, wait_until


def test_alive_needs_no_token(service):
    r = service.api.get(f"{INTERNAL}/alive")
    assert r.status == 204
    assert r.body == b""


def test_health_is_204_when_the_store_answers(service):
    r = service.api.get(f"{INTERNAL}/health")
    assert r.status == 204, r
    assert r.body == b""


@pytest.mark.mongo_only
@pytest.mark.time_limit(90)
def test_store_outage_gives_503_and_recovers(dedicated_mongo, service_factory):
    svc = service_factory(mongo=dedicated_mongo)
    owner = svc.user(new_tenant())
    iid = owner.create_hub(random_key())
    assert svc.api.get(f"{INTERNAL}/health").status == 204

    dedicated_mongo.stop()

    start = time.monotonic()
    r = svc.api.get(f"{INTERNAL}/health")
    assert time.monotonic() - start < 15, "health must answer within a bounded time"
    assert r.status == 503, r
    body = r.json()
    assert body["request_id"] == r.header("X-MEN-RequestID")
    assert isinstance(body["checks"].get("store"), str) and body["checks"]["store"], body

    # The management API answers 503 with a message, and writes nothing.
    r = owner.list()
    assert r.status == 503, r
    assert r.error
    other = svc.user(new_tenant())
    r = other.create(sas_integration(random_key()))
    assert r.status == 503, r
    assert svc.proc.poll() is None, "the service died during the outage"

    dedicated_mongo.start()
    wait_until(lambda: svc.api.get(f"{INTERNAL}/health").status == 204, 30, interval=0.5,
               what="health to recover")
    assert [i["id"] for i in owner.listed()] == [iid]
    assert other.listed() == [], "a write refused with 503 was stored anyway"
