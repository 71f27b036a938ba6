"""GET /metrics: Prometheus text format with the service's request, store and hub metrics."""

import base64
import re

from conftest import INTERNAL, MGMT, new_tenant, random_key


def scrape(service):
    r = service.api.get("/metrics")
    assert r.status == 200, r
    assert r.header("Content-Type").startswith("text/plain; version=0.0.4")
    samples = {}
    for line in r.body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-z_]+)(\{.*\})? (\S+)", line)
        assert m, f"not a Prometheus sample line: {line!r}"
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return r.body.decode(), samples


def test_metrics_count_requests_by_route_and_status(service):
    owner = service.user(new_tenant())
    owner.create_hub(random_key())
    for _ in range(3):
        assert service.api.get(f"{MGMT}/integrations", token=owner.token).status == 200
    assert service.api.get(f"{MGMT}/integrations").status == 401
    assert service.api.get("/nope").status == 404

    text, samples = scrape(service)
    for family, kind in [("iot_manager_http_requests_total", "counter"),
                         ("iot_manager_http_request_duration_seconds", "histogram"),
                         ("iot_manager_events_received_total", "counter"),
                         ("iot_manager_hub_requests_total", "counter"),
                         ("iot_manager_queue_pending", "gauge"),
                         ("iot_manager_store_operation_duration_seconds", "histogram")]:
        assert f"# TYPE {family} {kind}" in text

    route = f'route="{MGMT}/integrations",method="GET"'
    assert samples[f'iot_manager_http_requests_total{{{route},status="200"}}'] == 3
    assert samples[f'iot_manager_http_requests_total{{{route},status="401"}}'] == 1
    assert samples['iot_manager_http_requests_total{route="unmatched",method="GET",status="404"}'] == 1

    # histogram (by route, all methods: the POST that created the hub too): buckets are
    # cumulative and end at the count
    hist = f'iot_manager_http_request_duration_seconds_bucket{{route="{MGMT}/integrations",le='
    buckets = [v for k, v in samples.items() if k.startswith(hist)]
    assert buckets == sorted(buckets) and buckets[-1] == 5
    # the store calls behind those requests were timed
    assert any(k.startswith("iot_manager_store_operation_duration_seconds_count{")
               and 'operation="integrations_list"' in k and v >= 3 for k, v in samples.items())


def test_metrics_need_no_token_and_leak_nothing(service):
    owner = service.user(new_tenant())
    key = random_key()
    owner.create_hub(key)
    text, _ = scrape(service)
    assert base64.b64encode(key).decode() not in text and "SharedAccessKey" not in text
    assert service.api.get(f"{INTERNAL}/alive").status == 204
