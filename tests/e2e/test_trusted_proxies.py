"""TRUSTED_PROXIES: nginx takes the client's address from X-Forwarded-For only when the peer is
a trusted proxy. From anyone else the header is ignored, so a client cannot pick its own
address, and the login rate limit (10 r/s, burst 20) is keyed on the real client either way."""

from __future__ import annotations

import json
import os
import secrets

import pytest
import requests

from tests.support import compose, run, wait_for, wait_healthy


def project() -> str:
    return os.environ.get("PROJECT", "flaskstack")


def peer_network_cidr() -> str:
    """The subnet nginx sees the host's requests come from (the `public` network's gateway)."""
    name = f"{project()}_public"
    gateway = run(
        "docker", "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", name,
        timeout=None,
    ).stdout.strip()  # fmt: skip
    assert gateway, f"no gateway on {name}"
    return f"{gateway}/32"


def recreate_nginx(trusted: str | None) -> None:
    if trusted is None:
        os.environ.pop("TRUSTED_PROXIES", None)
    else:
        os.environ["TRUSTED_PROXIES"] = trusted
    compose("up", "-d", "--no-deps", "nginx")
    wait_healthy(60)


@pytest.fixture(scope="module")
def trusted(stack_url):
    """nginx trusting the host's side of the network (as it would a load balancer)."""
    recreate_nginx(f"192.0.2.0/24, {peer_network_cidr()}")
    try:
        yield stack_url
    finally:
        recreate_nginx(None)


def logged_client(stack_url: str, forwarded_for: str) -> str:
    """The client address nginx logs (and passes on) for a request with this X-Forwarded-For."""
    probe = secrets.token_hex(8)
    r = requests.get(
        f"{stack_url}/healthz?probe={probe}", headers={"X-Forwarded-For": forwarded_for}, timeout=10
    )
    assert r.status_code == 200
    found: list[str] = []

    def logged() -> bool:
        logs = compose("logs", "--no-color", "--tail", "200", "nginx").stdout
        for line in logs.splitlines():
            if probe in line and "{" in line:
                found.append(json.loads(line[line.index("{") :])["remote_addr"])
        return bool(found)

    wait_for(logged, 30, "nginx's access log line")
    return found[0]


def login_statuses(stack_url: str, forwarded_for: str, count: int) -> list[int]:
    """`count` quick login attempts (an empty body: 400 from the app, no password hashing)."""
    with requests.Session() as s:
        return [
            s.post(
                f"{stack_url}/api/auth/login",
                json={},
                headers={"X-Forwarded-For": forwarded_for},
                timeout=10,
            ).status_code
            for _ in range(count)
        ]


def test_an_untrusted_peer_cannot_choose_its_address(stack_url):
    assert logged_client(stack_url, "203.0.113.9") != "203.0.113.9"


def test_an_untrusted_peer_cannot_escape_the_login_limit_by_spoofing(stack_url):
    first = login_statuses(stack_url, "203.0.113.10", 40)
    assert 429 in first, f"the burst was never limited: {first}"
    # Another "client" by header only: the same peer, so the same exhausted bucket.
    assert 429 in login_statuses(stack_url, "203.0.113.11", 20)


def test_a_trusted_proxy_passes_the_real_client(trusted):
    assert logged_client(trusted, "203.0.113.20") == "203.0.113.20"
    # A client's own header, with the proxy's addition last: the rightmost untrusted address.
    assert logged_client(trusted, "6.6.6.6, 203.0.113.21") == "203.0.113.21"
    # Through two trusted proxies (192.0.2.0/24 is trusted too): still the client.
    assert logged_client(trusted, "203.0.113.22, 192.0.2.7") == "203.0.113.22"


def test_behind_a_trusted_proxy_the_login_limit_is_per_client(trusted):
    first = login_statuses(trusted, "203.0.113.30", 40)
    assert 429 in first, f"the burst was never limited: {first}"
    # A different client behind the same proxy has a bucket of its own.
    assert 429 not in login_statuses(trusted, "203.0.113.31", 10)
