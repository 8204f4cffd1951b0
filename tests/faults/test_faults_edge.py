"""Attacks at the edge: slow clients, malformed HTTP, and the security claims of the stack.

Everything goes to the published ports on 127.0.0.1; docker is used only to look (inspect, top)
and, for the production-secrets check, to start the app image alone with no network.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.support import figure, monitoring_on, wait_for

from . import faultkit as fk
from .loadgen import LoadGen, login_users, percentiles

SLOW_CONNECTIONS = 300
SLOW_SECONDS = float(os.environ.get("FAULTS_SLOW_SECONDS", "30"))
DEBUGGER_MARKERS = ("Werkzeug Debugger", "__debugger__", "Traceback (most recent", "console.png")


@pytest.fixture(scope="module")
def users(stack_url):
    return login_users(stack_url, 2)


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


# -- slow clients ----------------------------------------------------------------------------


class Slowloris:
    """`count` connections that send a request line, then one header line every `interval`
    seconds and never finish; a connection the server closes is counted and reopened."""

    def __init__(self, port: int, count: int = SLOW_CONNECTIONS, interval: float = 5.0) -> None:
        self.port, self.count, self.interval = port, count, interval
        self.socks: list[socket.socket] = []
        self.opened = self.closed_by_server = self.refused = 0
        self.min_open = count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> socket.socket | None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            sock.sendall(b"GET /api/posts HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n")
        except OSError:
            self.refused += 1
            return None
        self.opened += 1
        return sock

    def _run(self) -> None:
        self.socks = [s for s in (self._open() for _ in range(self.count)) if s]
        n = 0
        while not self._stop.wait(self.interval):
            n += 1
            alive = []
            for sock in self.socks:
                readable, _, _ = select.select([sock], [], [], 0)
                try:
                    if readable:  # an answer (408, 400) or EOF: the server let go of it
                        raise ConnectionResetError
                    sock.sendall(b"X-Trickle-%d: x\r\n" % n)
                    alive.append(sock)
                except OSError:
                    self.closed_by_server += 1
                    sock.close()
                    if (fresh := self._open()) is not None:
                        alive.append(fresh)
            self.socks = alive
            self.min_open = min(self.min_open, len(alive))

    def __enter__(self) -> Slowloris:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for sock in self.socks:
            sock.close()

    def describe(self) -> str:
        return (
            f"{self.count} slow connections (opened {self.opened}, closed by the server "
            f"{self.closed_by_server}, refused {self.refused}, fewest open {self.min_open})"
        )


def slow_clients_against(url: str, users: list[dict[str, str]]) -> tuple[LoadGen, Slowloris]:
    with Slowloris(port_of(url)) as slow:
        # Let the connections pile up first.
        wait_for(lambda: slow.opened + slow.refused >= slow.count, 60, "slow connections", 0.1)
        # Normal traffic meanwhile: 50 requests/s of the usual mix; failed creates get only a
        # few seconds of retries (the contrast run may fail every request).
        load = LoadGen(
            url,
            users,
            rate=50,
            workers=16,
            duration=SLOW_SECONDS - 2,
            timeout=(3.05, 10),
            retry_deadline=5,
        )
        load.start()
        load.wait()
    return load, slow


def latency_text(load: LoadGen) -> str:
    ok = percentiles([o.latency for o in load.outcomes if o.ok])
    failed = load.failures()
    return (
        f"normal requests {len(load.outcomes)} ({len(load.outcomes) / SLOW_SECONDS:.0f}/s), "
        f"failed {len(failed)}, p50 {ok[50] * 1000:.0f} ms, "
        f"p99 {ok[99] * 1000:.0f} ms, max {ok[100] * 1000:.0f} ms"
    )


def test_slow_clients_do_not_starve_the_stack(stack_url, baseline_url, users):
    load, slow = slow_clients_against(stack_url, users)
    figure(
        "slow-clients-stack", f"{slow.describe()} for {SLOW_SECONDS:.0f} s: {latency_text(load)}"
    )
    base_load, base_slow = slow_clients_against(baseline_url, users)
    figure(
        "slow-clients-builtin",
        f"{base_slow.describe()} for {SLOW_SECONDS:.0f} s: {latency_text(base_load)}; "
        f"errors {sorted({(o.status, (o.error or '')[:60]) for o in base_load.failures()})[:4]}",
    )
    assert slow.opened >= SLOW_CONNECTIONS
    # The fault was there: all the slow connections were open at each trickle while the normal
    # traffic ran (one the server closed was reopened, so this counts the attack's strength,
    # not the stack's patience), and the same attack takes the built-in server down.
    assert slow.min_open == SLOW_CONNECTIONS, slow.describe()
    assert base_load.failures(), "the slow clients did not hurt the built-in server"
    assert not load.failures(), "\n".join(o.describe() for o in load.failures()[:10])


# -- malformed HTTP at the edge --------------------------------------------------------------

H = b"Host: 127.0.0.1\r\n"
BAD_REQUESTS: list[tuple[str, bytes, set[int]]] = [
    (
        "header too large",
        b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        {400},
    ),
    (
        "too many header bytes",
        b"GET / HTTP/1.1\r\n"
        + H
        + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 200) for i in range(200))
        + b"\r\n",
        {400},
    ),
    ("request line too long", b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n" + H + b"\r\n", {414}),
    (
        "body over the upload limit (Content-Length)",
        b"POST /api/echo HTTP/1.1\r\n" + H + b"Content-Type: application/octet-stream\r\n"
        b"Content-Length: 20971520\r\n\r\n",
        {413},
    ),
    # HTTP/0.9: nginx still takes it, the replica refuses it (no Host: 400) and the 0.9 reply
    # has no status line, so the client sees the connection close with nothing.
    ("HTTP/0.9 request line", b"GET /\r\n", {0, 400}),
    ("HTTP/2.0 on the HTTP/1 port", b"GET / HTTP/2.0\r\n" + H + b"\r\n", {505}),
    ("method with punctuation", b"G@T / HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("trailing garbage in request line", b"GET / HTTP/1.1 extra\r\n" + H + b"\r\n", {400}),
    ("bad protocol name", b"GET / HTTX/1.1\r\n" + H + b"\r\n", {400}),
    (
        "TLS handshake on the HTTP port",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\0" * 40,
        {400},
    ),
    ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n", {400}),
    ("NUL in a header value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", {400}),
    # nginx drops an invalid header line (ignore_invalid_headers) and serves the request.
    ("header line without colon", b"GET / HTTP/1.1\r\n" + H + b"NoColonHere\r\n\r\n", {200}),
    ("obsolete header folding", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n", {400}),
    ("space in a header name", b"GET / HTTP/1.1\r\n" + H + b"Bad Name: x\r\n\r\n", {400}),
    (
        "invalid UTF-8 in the path (raw)",
        b"GET /api/posts/\xff\xfe HTTP/1.1\r\n" + H + b"\r\n",
        None,
    ),
    (
        "invalid UTF-8 in the path (%-encoded)",
        b"GET /api/%ff%fe%c0%af HTTP/1.1\r\n" + H + b"\r\n",
        None,
    ),
    (
        "overlong UTF-8 dot-dot in the path",
        b"GET /static/%c0%ae%c0%ae/etc/passwd HTTP/1.1\r\n" + H + b"\r\n",
        None,
    ),
    (
        "Content-Length and Transfer-Encoding",
        b"POST /api/echo HTTP/1.1\r\n"
        + H
        + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        {400},
    ),
    (
        "two different Content-Lengths",
        b"POST /api/echo HTTP/1.1\r\n"
        + H
        + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        {400},
    ),
    (
        "unknown Transfer-Encoding",
        b"POST /api/echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\nxxxx",
        {501},
    ),
    (
        "chunked, then unknown Transfer-Encoding",
        b"POST /api/echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        {501},
    ),
    (
        "invalid chunk size",
        b"POST /api/echo HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        {400},
    ),
]


def test_bad_input_at_the_edge_gets_4xx_and_crashes_nothing(stack_url):
    before = {(r.id, r.restarts, r.started_at) for r in fk.replicas()}
    port = port_of(stack_url)
    seen: list[tuple[str, int | None, set[int] | None]] = []
    bodies: dict[str, dict | None] = {}
    for name, raw, expected in BAD_REQUESTS:
        response = fk.raw_http(port, raw)
        seen.append((name, fk.status_of(response) if response else 0, expected))
        bodies[name] = fk.json_body(response)
    # A chunked body that grows past the limit as it is sent.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /api/echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (1 << 20, b"z" * (1 << 20))
        with contextlib.suppress(OSError):
            for _ in range(12):
                sock.sendall(chunk)
        response = b""
        with contextlib.suppress(OSError):
            response = sock.recv(4096)
        seen.append(("chunked body over the upload limit", fk.status_of(response), {413}))
        bodies["chunked body over the upload limit"] = fk.json_body(response)
    after = {(r.id, r.restarts, r.started_at) for r in fk.replicas()}
    for name, status, expected in seen:
        print(f"  edge: {name}: {status} (expected {sorted(expected) if expected else '4xx'})")
    figure(
        "bad-input",
        f"{len(seen)} malformed requests: "
        + ", ".join(f"{name} → {status}" for name, status, _ in seen),
    )
    wrong = [
        (name, status)
        for name, status, expected in seen
        if not ((status in expected) if expected else 400 <= status < 500)
    ]
    assert not wrong, wrong
    # Every answer is JSON: the envelope for an error, the app's JSON for the one request nginx
    # serves. An HTTP/0.9 request may get nothing at all (no status line, so no JSON to give).
    not_json = [
        (name, status, bodies[name])
        for name, status, _ in seen
        if not (name == "HTTP/0.9 request line" and status == 0)
        and not (
            bodies[name] is not None
            and (status == 200 or bodies[name].get("error", {}).get("status") == status)
        )
    ]
    assert not not_json, not_json
    assert after == before, "a replica restarted or was replaced"
    assert requests.get(f"{stack_url}/readyz", timeout=10).status_code == 200


# -- security --------------------------------------------------------------------------------


APP_SERVERS = ("nginx", "devserver")  # the published ports that serve the app


def published_urls() -> dict[str, str]:
    ports = fk.published_ports()
    return {
        f"{service}:{port}": f"http://127.0.0.1:{host_port}"
        for service, bindings in ports.items()
        if service in APP_SERVERS
        for port, _, host_port in bindings
    }


def test_only_nginx_and_devserver_are_published_and_only_on_localhost():
    ports = fk.published_ports()
    # With the monitoring profile, Prometheus too; never an exporter.
    assert set(ports) == {*APP_SERVERS, *(["prometheus"] if monitoring_on() else [])}, ports
    assert all(ip == "127.0.0.1" for b in ports.values() for _, ip, _ in b), ports
    # Postgres: no published port, and only on internal networks (no route to or from outside).
    pg = fk.inspect(fk.postgres_id())[0]
    assert not pg["HostConfig"]["PortBindings"], pg["HostConfig"]["PortBindings"]
    assert not any(pg["NetworkSettings"]["Ports"].values())
    for network in pg["NetworkSettings"]["Networks"]:
        info = fk.run("docker", "network", "inspect", "-f", "{{.Internal}}", network).stdout
        assert info.strip() == "true", f"postgres is on non-internal network {network}"
    figure("published-ports", f"{ports}; postgres: none, internal networks only")


def test_werkzeug_debugger_is_unreachable_on_every_published_port(users):
    urls = published_urls()
    assert len(urls) == 2, urls
    json_type = "application/json"
    probes: list[tuple[str, str, bytes | None, str | None]] = [
        ("GET", "/?__debugger__=yes&cmd=resource&f=style.css", None, None),
        ("GET", "/?__debugger__=yes&cmd=resource&f=debugger.js", None, None),
        ("GET", "/?__debugger__=yes&cmd=printpin&s=x", None, None),
        ("GET", "/console", None, None),
        ("GET", "/api/posts/99999999999", None, None),
        ("GET", "/api/posts?limit=abc", None, None),
        ("DELETE", "/", None, None),
        ("POST", "/api/posts", b"{not json", json_type),
        ("POST", "/api/posts", b"[" * 50_000, json_type),
        ("POST", "/api/echo", b"\xff\xfe{", json_type),
    ]
    results = []
    for name, base in urls.items():
        for method, path, body, content_type in probes:
            headers = dict(users[0])
            if content_type:
                headers["Content-Type"] = content_type
            r = requests.request(method, base + path, data=body, headers=headers, timeout=30)
            leaked = [m for m in DEBUGGER_MARKERS if m in r.text]
            is_css = "text/css" in r.headers.get("Content-Type", "")
            results.append((name, method, path[:50], r.status_code, leaked, is_css))
    for row in results:
        print("  debugger probe:", row)
    figure(
        "debugger",
        f"{len(results)} probes on {sorted(urls)}: statuses "
        f"{sorted({r[3] for r in results})}, debugger markers found "
        f"{sum(bool(r[4]) for r in results)}",
    )
    assert not [r for r in results if r[4] or r[5]], results
    assert all(r[3] < 500 for r in results), results


def test_every_container_runs_as_non_root():
    rows = []
    for c in fk.inspect(*fk.ids(all_states=True)):
        name = c["Name"].lstrip("/")
        user = c["Config"]["User"]
        uids = []
        if c["State"]["Status"] == "running":
            top = fk.run("docker", "top", c["Id"], "-eo", "uid,pid,comm").stdout.splitlines()[1:]
            uids = sorted({line.split()[0] for line in top})
        rows.append((name, user, uids))
    for row in rows:
        print("  user:", row)
    figure("non-root", "; ".join(f"{n}: user {u!r}, process uids {uids}" for n, u, uids in rows))
    assert rows
    assert all(u and u.split(":")[0] not in ("0", "root") for _, u, _ in rows), rows
    assert all("0" not in uids and "root" not in uids for _, _, uids in rows), rows


@pytest.mark.parametrize(
    ("name", "env"),
    [
        ("SECRET_KEY", {"SECRET_KEY": None}),
        ("SECRET_KEY", {"SECRET_KEY": "change-me"}),
        ("JWT_SECRET_KEY", {"JWT_SECRET_KEY": "change-me"}),
    ],
)
def test_production_refuses_default_secrets(name, env):
    (app,) = fk.inspect(fk.ids("app")[0])
    image = app["Config"]["Image"]
    good = "k" + "x7Qp" * 12  # long, random-looking, no placeholder words
    settings = {"APP_ENV": "production", "SECRET_KEY": good, "JWT_SECRET_KEY": good + "j"}
    settings.update(env)
    args = ["docker", "run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp"]
    for key, value in settings.items():
        if value is not None:
            args += ["-e", f"{key}={value}"]
    result = fk.run(*args, image, check=False, timeout=60)
    output = result.stdout + result.stderr
    figure(
        "production-secrets",
        f"{name}={env[name]!r}: exit {result.returncode}, "
        f"{[line for line in output.splitlines() if 'refusing' in line][-1:] or output[-200:]}",
    )
    assert result.returncode != 0
    assert "refusing to start in production" in output and name in output, output[-2000:]


def test_openapi_fuzz_through_nginx_finds_no_5xx(stack_url, users):
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{stack_url}/openapi.json")
    fuzz = settings(
        max_examples=int(os.environ.get("FAULTS_FUZZ_EXAMPLES", "8")),
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    calls: list[tuple[str, int]] = []
    failures: list[str] = []
    started = time.monotonic()

    def fuzz_one(operation: Any, mode: GenerationMode) -> None:
        @fuzz
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            try:
                response = case.call(headers=users[1], timeout=30)
            except requests.RequestException as exc:
                failures.append(f"{operation.label} {exc!r}")
                return
            calls.append((operation.label, response.status_code))
            if response.status_code >= 500:
                failures.append(
                    f"{operation.label} {response.status_code} {case.as_curl_command()}"
                )

        run()

    for result in schema.get_all_operations():
        operation = result.ok()
        fuzz_one(operation, GenerationMode.POSITIVE)
        if operation.path_parameters or operation.query or operation.body:
            fuzz_one(operation, GenerationMode.NEGATIVE)
    took = time.monotonic() - started
    figure(
        "fuzz",
        f"{len(calls)} schemathesis calls over {len({c[0] for c in calls})} operations through "
        f"nginx in {took:.0f} s: {sum(1 for _, s in calls if s >= 500)} answered 5xx",
    )
    assert calls
    assert not failures, "\n".join(failures[:10])
