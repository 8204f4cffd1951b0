"""GET /metrics on the host: requests by route template, and the host's own state.

The host runs as a real process on SQLite and is scraped the way Prometheus scrapes it;
`RequestMetrics` and the app's counter are checked directly too.
"""

from __future__ import annotations

import sys

import requests
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.sioclient import Listener, login
from tests.support import ROOT

sys.path.insert(0, str(ROOT / "deploy" / "tornado"))

from flaskstack.metrics import UNMATCHED, RequestMetrics, route_of

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base: str) -> Samples:
    """Every sample of one scrape, keyed by name and labels."""
    r = requests.get(f"{base}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_requests_are_counted_under_their_route_template(sqlite_host):
    base = sqlite_host.url
    _, headers = login(base)
    post = requests.post(
        f"{base}/api/posts", json={"title": "t", "body": "b"}, headers=headers, timeout=10
    )
    assert post.status_code == 201, post.text
    post_id = post.json()["id"]
    before = scrape(base)
    for _ in range(3):
        assert requests.get(f"{base}/bench/json", timeout=10).status_code == 200
    for _ in range(2):
        assert requests.get(f"{base}/api/posts/{post_id}", timeout=10).status_code == 200
    assert requests.get(f"{base}/no/such/page", timeout=10).status_code == 404
    after = scrape(base)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    counter = "flaskstack_http_requests_total"
    assert delta(counter, route="/bench/json", method="GET", status="2xx") == 3
    one_post = {"route": "/api/posts/<id:post_id>", "method": "GET", "status": "2xx"}
    assert delta(counter, **one_post) == 2
    assert delta(counter, route=UNMATCHED, method="GET", status="4xx") == 1
    # The latency histogram counts the same requests; the raw path is never a label value.
    assert delta("flaskstack_http_request_duration_seconds_count", **one_post) == 2
    assert delta("flaskstack_http_request_duration_seconds_bucket", **one_post, le="+Inf") == 2
    routes = {dict(labels).get("route") for _, labels in after}
    assert f"/api/posts/{post_id}" not in routes and "/no/such/page" not in routes


def test_the_host_reports_its_pool_clients_and_drain_state(sqlite_host):
    base = sqlite_host.url
    token, _ = login(base)
    samples = scrape(base)
    assert value(samples, "flaskstack_pool_threads") == 16  # APP_THREADS' default
    assert value(samples, "flaskstack_requests_in_flight") == 0
    assert value(samples, "flaskstack_requests_waiting") == 0
    assert value(samples, "flaskstack_draining") == 0
    assert value(samples, "flaskstack_db_pool_size", bind="default") > 0
    assert value(samples, "flaskstack_db_pool_checked_out", bind="default") == 0
    assert ("flaskstack_listener_up", frozenset()) not in samples  # no Postgres, no listener
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "flaskstack_realtime_clients", kind="socketio") == 0

    client = Listener(base, token)
    try:
        samples = scrape(base)
        assert value(samples, "flaskstack_realtime_clients", kind="socketio") == 1
        assert value(samples, "flaskstack_realtime_clients", kind="ws") == 0
    finally:
        client.close()


def test_metrics_is_served_by_the_host_not_the_app(sqlite_host):
    r = requests.post(f"{sqlite_host.url}/metrics", timeout=10)
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert r.headers["X-Request-ID"]


def test_labels_stay_few_whatever_the_request():
    metrics = RequestMetrics(CollectorRegistry())
    assert route_of({"PATH_INFO": "/x"}) == UNMATCHED  # not a Flask request
    metrics.observe({"REQUEST_METHOD": "BREW"}, "418 I'm a teapot", 0.002)
    metrics.observe({"REQUEST_METHOD": "GET"}, "503 Service Unavailable", 0.2)
    labels = {tuple(child) for child in metrics.series}
    assert labels == {(UNMATCHED, "other", "4xx"), (UNMATCHED, "GET", "5xx")}
