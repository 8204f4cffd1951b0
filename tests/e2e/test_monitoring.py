"""The monitoring profile on the test stack: what Prometheus sees of the replicas, nginx and
Postgres while requests, scaling and a dead replica happen, reached through 127.0.0.1 only."""

from __future__ import annotations

import os
import time

import pytest
import requests

from tests.faults import faultkit as fk
from tests.support import ROOT, compose, figure, run, wait_for

MONITORING = ROOT / "deploy" / "monitoring"


@pytest.fixture(scope="module")
def prometheus() -> str:
    url = os.environ.get("PROMETHEUS_URL")
    assert url, "PROMETHEUS_URL is not set: run through `make test-e2e`"
    wait_for(lambda: ready(url), 60, "Prometheus to answer")
    return url


def ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def query(prometheus: str, promql: str) -> list[dict]:
    r = requests.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["data"]["result"]


def app_targets(prometheus: str) -> dict[str, str]:
    """The app job's targets: instance (address:8000) -> health (up, down, unknown)."""
    r = requests.get(f"{prometheus}/api/v1/targets", params={"state": "active"}, timeout=10)
    assert r.status_code == 200, r.text
    return {
        t["labels"]["instance"]: t["health"]
        for t in r.json()["data"]["activeTargets"]
        if t["labels"]["job"] == "app"
    }


def replica_addresses() -> set[str]:
    """Each running replica's address on the network Prometheus scrapes it on (edge)."""
    return {f"{r.ip}:8000" for r in fk.replicas()}


def all_up(prometheus: str) -> bool:
    return app_targets(prometheus) == dict.fromkeys(replica_addresses(), "up")


def counters(prometheus: str, selector: str) -> dict[str, float]:
    """flaskstack_http_requests_total matching `selector`, per replica, as last scraped."""
    promql = f"sum by (instance) (flaskstack_http_requests_total{{{selector}}})"
    return {s["metric"]["instance"]: float(s["value"][1]) for s in query(prometheus, promql)}


def test_metrics_are_not_public(stack_url):
    for path in ("/metrics", "/metrics?format=text", "//metrics", "/%6detrics"):
        r = requests.get(f"{stack_url}{path}", timeout=10)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found", path
        assert "flaskstack_http_requests" not in r.text


def test_every_target_is_up(prometheus):
    wait_for(lambda: all_up(prometheus), 30, "every replica to be an up target")
    for job in ("nginx", "postgres"):
        wait_for(lambda job=job: query(prometheus, f'up{{job="{job}"}} == 1'), 30, f"{job} up")
    # The exporters reach what they export: nginx's stub_status, and Postgres as `monitor`.
    wait_for(lambda: query(prometheus, "nginx_up == 1"), 30, "nginx_up")
    wait_for(lambda: query(prometheus, "pg_up == 1"), 30, "pg_up")
    listeners = query(prometheus, 'flaskstack_listener_up{job="app"}')
    assert sorted(s["value"][1] for s in listeners) == ["1"] * len(replica_addresses())


def test_requests_are_counted_once_under_their_route_template(prometheus, stack_url, user):
    _, headers = user
    post = requests.post(
        f"{stack_url}/api/posts", json={"title": "m", "body": "m"}, headers=headers, timeout=10
    )
    assert post.status_code == 201, post.text
    # HEAD of one post: no other test sends it, so the only change is this test's.
    selector = 'route="/api/posts/<id:post_id>", method="HEAD", status="2xx"'
    wait_for(lambda: all_up(prometheus), 30, "every replica to be an up target")
    before = counters(prometheus, selector)
    n = 37
    served = set()
    for _ in range(n):
        r = requests.head(f"{stack_url}/api/posts/{post.json()['id']}", timeout=10)
        assert r.status_code == 200
        served.add(r.headers["X-Served-By"])
    assert len(served) > 1  # nginx spread them: the sum is over several replicas

    def counted() -> float:
        now = counters(prometheus, selector)
        return sum(now.values()) - sum(before.get(i, 0.0) for i in now)

    # Two scrapes (5 s each) see every replica's count; never more than n.
    wait_for(lambda: counted() >= n, 30, f"{n} requests to be counted")
    assert counted() == n
    raw = query(prometheus, f'flaskstack_http_requests_total{{route=~".*{post.json()["id"]}.*"}}')
    assert raw == []  # the raw path never becomes a label


def test_a_scaled_up_replica_becomes_an_up_target(prometheus, stack_url):
    compose("up", "-d", "--no-deps", "--no-recreate", "--scale", "app=4", "app")
    try:
        started = time.time()
        wait_for(lambda: len(replica_addresses()) == 4, 60, "four running replicas")
        seen = wait_for(lambda: all_up(prometheus), 30, "all four replicas to be up targets")
        figure("monitoring scale-up", f"4 up targets {seen - started:.1f} s after the scale")
    finally:
        four = {f"{r.ip}:8000" for r in fk.replicas()}
        removed_at = time.time()
        compose("up", "-d", "--no-deps", "--no-recreate", "--scale", "app=3", "app")
        fk.wait_nginx_forgets(stack_url, four - {f"{r.ip}:8000" for r in fk.replicas()}, removed_at)
    wait_for(lambda: all_up(prometheus), 30, "three up targets again")


def test_a_replica_that_stops_answering_is_down_and_fires_replica_down(prometheus, stack_url):
    """A hung replica (frozen with `docker pause`) stays in DNS, so Prometheus keeps trying it:
    its target is down and ReplicaDown fires. A replica that exits leaves DNS instead: its
    target goes (tested below), and the up count drops."""
    victim = fk.replicas()[0]
    address = f"{victim.ip}:8000"
    run("docker", "pause", victim.id)
    try:
        started = time.time()
        down = wait_for(lambda: app_targets(prometheus).get(address) == "down", 30, "down")
        fired = wait_for(
            lambda: any(
                a["labels"].get("instance") == address and a["state"] == "firing"
                for a in requests.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"][
                    "alerts"
                ]
                if a["labels"]["alertname"] == "ReplicaDown"
            ),
            60,
            "ReplicaDown to fire",
        )
        figure(
            "monitoring hung replica",
            f"target down after {down - started:.1f} s, ReplicaDown firing after "
            f"{fired - started:.1f} s (for: 15s)",
        )
    finally:
        run("docker", "unpause", victim.id)
    wait_for(lambda: all_up(prometheus), 60, "the replica to be up again")
    fk.wait_healthy()


def test_a_killed_replica_leaves_the_up_targets(prometheus):
    wait_for(lambda: all_up(prometheus), 30, "every replica to be an up target")
    victim = fk.replicas()[0]
    address = f"{victim.ip}:8000"
    run("docker", "kill", victim.id)
    try:
        wait_for(
            lambda: app_targets(prometheus).get(address, "gone") in ("down", "gone"),
            30,
            "the killed replica's target to be down or gone",
        )
        wait_for(
            lambda: (
                [s["value"][1] for s in query(prometheus, 'count(up{job="app"} == 1)')] == ["2"]
            ),
            30,
            "two up app targets",
        )
    finally:
        fk.heal()
    wait_for(lambda: all_up(prometheus), 30, "every replica to be an up target again")


def test_promtool_accepts_the_config_and_the_alert_rules_pass_their_tests():
    image = fk.env_value("PROMETHEUS_IMAGE", "prom/prometheus:v2.53.3")
    mount = ["-v", f"{MONITORING}:/etc/prometheus:ro", "-w", "/etc/prometheus"]
    promtool = ["docker", "run", "--rm", "--network", "none", *mount, "--entrypoint", "promtool"]
    config = run(*promtool, image, "check", "config", "prometheus.yml")
    assert "SUCCESS" in config.stdout
    rules = run(*promtool, image, "test", "rules", "rules.test.yml")
    assert "SUCCESS" in rules.stdout + rules.stderr


def test_prometheus_is_published_on_loopback_only():
    (pid,) = compose("ps", "-q", "prometheus").stdout.split()
    ports = run("docker", "port", pid).stdout.split()
    assert ports and all(p.startswith("127.0.0.1:") for p in ports if ":" in p), ports
    for service in ("nginx-exporter", "postgres-exporter"):
        (cid,) = compose("ps", "-q", service).stdout.split()
        assert run("docker", "port", cid).stdout.strip() == ""
