"""The Tornado host (deploy/tornado/server.py) as a real process on a free port."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "deploy" / "tornado" / "server.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Host:
    """One server.py process and its output."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (tmp_path / f"host-{self.port}.log").open("w+")
        full_env = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests' / 'integration'}",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_FORMAT": "json",
            **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER)], env=full_env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"host exited early:\n{self.output()}"
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise AssertionError(f"host did not become healthy:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def host_factory(tmp_path):
    hosts: list[Host] = []

    def start(**env: str) -> Host:
        hosts.append(Host(tmp_path, **env))
        return hosts[-1]

    yield start
    for h in hosts:
        h.stop()


OPEN_SOCKETS: list = []


async def connect(url: str):
    """A websocket client that `closing` closes when the scenario ends."""
    ws = await websocket_connect(url)
    OPEN_SOCKETS.append(ws)
    return ws


async def closing(scenario):
    try:
        return await scenario
    finally:
        while OPEN_SOCKETS:
            OPEN_SOCKETS.pop().close()
        await asyncio.sleep(0.05)


def concurrent_get(url: str, n: int = 2) -> list[requests.Response]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: requests.get(url, timeout=10), range(n)))


def test_thread_pool_lets_two_requests_meet(host_factory):
    host = host_factory(APP_MODULE="hostapps:app", APP_THREADS="4")
    responses = concurrent_get(f"{host.url}/barrier")
    assert [r.status_code for r in responses] == [200, 200]
    assert {r.text for r in responses} == {"met"}


def test_barrier_breaks_with_one_thread(host_factory):
    """The control: with a single worker the two requests never meet, so the test above can fail."""
    host = host_factory(APP_MODULE="hostapps:app", APP_THREADS="1")
    responses = concurrent_get(f"{host.url}/barrier")
    assert [r.status_code for r in responses] == [503, 503]


def test_exception_escaping_the_app_becomes_500_json(host_factory):
    host = host_factory(APP_MODULE="hostapps:app")
    r = requests.get(f"{host.url}/boom", headers={"X-Request-ID": "req-123"}, timeout=5)
    assert r.status_code == 500
    body = r.json()
    assert body["error"]["code"] == "internal_error"
    assert body["request_id"] == "req-123"
    assert "secret" not in r.text
    assert "secret detail that must not leak" in host.output()  # logged, with its traceback


def test_access_log_is_one_json_line_per_request(host_factory):
    host = host_factory(APP_MODULE="hostapps:app")
    requests.get(f"{host.url}/hello", headers={"X-Request-ID": "abc.1"}, timeout=5)
    lines = [json.loads(line) for line in host.output().splitlines() if line.startswith("{")]
    access = [e for e in lines if e["logger"] == "access" and e.get("path") == "/hello"]
    assert len(access) == 1
    entry = access[0]
    assert entry["request_id"] == "abc.1"
    assert entry["method"] == "GET"
    assert entry["status"] == 200
    assert entry["duration_ms"] >= 0
    assert entry["replica"] == socket.gethostname()


def test_real_ip_comes_from_the_proxy_header(host_factory):
    """nginx overwrites X-Real-IP; the host trusts it (and only nginx can reach the host)."""
    host = host_factory(APP_MODULE="hostapps:app")
    r = requests.get(f"{host.url}/ip", headers={"X-Real-IP": "203.0.113.7"}, timeout=5)
    assert r.text == "203.0.113.7"


def test_sigterm_finishes_the_request_in_flight_and_exits_0(host_factory):
    host = host_factory(APP_MODULE="hostapps:app", SHUTDOWN_TIMEOUT="10")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(requests.get, f"{host.url}/slow", timeout=10)
        time.sleep(0.5)  # the request is inside the app now
        sent = time.monotonic()
        host.proc.send_signal(signal.SIGTERM)
        response = slow.result()
    assert response.status_code == 200
    assert response.text == "slow done"
    assert host.proc.wait(timeout=15) == 0
    assert time.monotonic() - sent < 15
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{host.url}/hello", timeout=2)


def test_open_websockets_get_1001_on_shutdown(host_factory):
    host = host_factory(APP_MODULE="hostapps:app")

    async def scenario() -> tuple[int | None, str | None]:
        ws = await connect(f"ws://127.0.0.1:{host.port}/ws")
        hello = json.loads(await ws.read_message())
        assert hello["type"] == "hello"
        ws.write_message("ping")
        assert await ws.read_message() == "pong"
        host.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(ws.read_message(), 10) is None  # closed by the server
        return ws.close_code, ws.close_reason

    code, _ = asyncio.run(closing(scenario()))
    assert code == 1001
    assert host.proc.wait(timeout=15) == 0


# --- with the real app and the test Postgres --------------------------------------------------


@pytest.fixture(scope="module")
def app_env():
    """Environment for the real app on the test database, with migrations applied."""
    url = os.environ.get("TEST_DATABASE_URL")
    assert url, "TEST_DATABASE_URL is not set: run through `make test-integration`"
    env = {
        "APP_ENV": "production",
        "DATABASE_URL": url,
        "SECRET_KEY": secrets.token_urlsafe(48),
        "JWT_SECRET_KEY": secrets.token_urlsafe(48),
        "ADMIN_USERNAME": "admin",
        "ADMIN_PASSWORD": secrets.token_urlsafe(24),
    }
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "setup-db"],
        env={**os.environ, **env},
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return env


def register_and_login(base: str) -> dict[str, str]:
    creds = {"username": f"u{secrets.token_hex(6)}", "password": secrets.token_urlsafe(16)}
    assert requests.post(f"{base}/api/auth/register", json=creds, timeout=10).status_code == 201
    r = requests.post(f"{base}/api/auth/login", json=creds, timeout=10)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def next_event(ws, kind: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        message = await asyncio.wait_for(ws.read_message(), deadline - time.monotonic())
        assert message is not None, "websocket closed"
        event = json.loads(message)
        if event.get("type") == kind:
            return event


def test_websocket_gets_events_from_another_process(host_factory, app_env, tmp_path):
    upload_dir = str(tmp_path / "uploads")
    listener = host_factory(**app_env, UPLOAD_DIR=upload_dir)
    writer = host_factory(**app_env, UPLOAD_DIR=upload_dir)
    headers = register_and_login(writer.url)
    title = f"cross-process {secrets.token_hex(4)}"

    async def scenario() -> dict:
        ws = await connect(f"ws://127.0.0.1:{listener.port}/ws")
        await next_event(ws, "hello")
        r = await asyncio.to_thread(
            requests.post,
            f"{writer.url}/api/posts",
            json={"title": title, "body": "sent through the other process"},
            headers=headers,
            timeout=10,
        )
        assert r.status_code == 201, r.text
        return await next_event(ws, "post.created")

    event = asyncio.run(closing(scenario()))
    assert title in json.dumps(event)


def test_listener_reconnects_after_losing_its_connection(host_factory, app_env, tmp_path):
    import psycopg2

    upload_dir = str(tmp_path / "uploads")
    host = host_factory(**app_env, UPLOAD_DIR=upload_dir)
    headers = register_and_login(host.url)
    dsn = app_env["DATABASE_URL"].replace("postgresql+psycopg2", "postgresql")

    async def scenario() -> dict:
        ws = await connect(f"ws://127.0.0.1:{host.port}/ws")
        await next_event(ws, "hello")
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN app_events%%' AND pid <> pg_backend_pid()"
            )
            assert cur.fetchone()[0] >= 1
        conn.close()
        title = f"after reconnect {secrets.token_hex(4)}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # until the listener is back, events are missed
            r = await asyncio.to_thread(
                requests.post,
                f"{host.url}/api/posts",
                json={"title": title, "body": "x"},
                headers=headers,
                timeout=10,
            )
            assert r.status_code == 201, r.text
            try:
                return await next_event(ws, "post.created", timeout=1)
            except TimeoutError:
                continue
        raise AssertionError("no event after the listener's connection was cut")

    event = asyncio.run(closing(scenario()))
    assert event["type"] == "post.created"
    assert "event listener lost its connection" in host.output()
