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

import pytest
import requests
from tornado.websocket import websocket_connect

from tests.hostproc import Host
from tests.sioclient import Listener, close_all, upload
from tests.support import ROOT, figure, wait_for

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


def access_lines(host: Host, path: str) -> list[dict]:
    lines = [json.loads(line) for line in host.output().splitlines() if line.startswith("{")]
    return [e for e in lines if e["logger"] == "access" and e.get("path") == path]


def test_access_log_is_off_by_default(host_factory):
    """Behind nginx its access log is the one of record: the host writes no line per request."""
    host = host_factory(APP_MODULE="hostapps:app")
    assert requests.get(f"{host.url}/hello", timeout=5).status_code == 200
    assert requests.get(f"{host.url}/healthz", timeout=5).status_code == 200
    host.proc.send_signal(signal.SIGTERM)  # the output is complete once the process exits
    assert host.proc.wait(timeout=15) == 0
    assert access_lines(host, "/hello") == []
    assert access_lines(host, "/healthz") == []


def test_access_log_is_one_json_line_per_request(host_factory):
    host = host_factory(APP_MODULE="hostapps:app", ACCESS_LOG="1")
    requests.get(f"{host.url}/nap", headers={"X-Request-ID": "abc.1"}, timeout=5)
    access = access_lines(host, "/nap")
    assert len(access) == 1
    entry = access[0]
    assert entry["request_id"] == "abc.1"
    assert entry["method"] == "GET"
    assert entry["status"] == 200
    # The line times the whole request, the app's 200 ms sleep included, in milliseconds.
    assert 200 <= entry["duration_ms"] < 200_000, entry
    assert entry["replica"] == socket.gethostname()


def test_real_ip_comes_from_the_proxy_header(host_factory):
    """nginx overwrites X-Real-IP; the host trusts it (and only nginx can reach the host)."""
    host = host_factory(APP_MODULE="hostapps:app")
    r = requests.get(f"{host.url}/ip", headers={"X-Real-IP": "203.0.113.7"}, timeout=5)
    assert r.text == "203.0.113.7"


@pytest.mark.parametrize("front", ["httptools", "tornado"])
def test_sigterm_finishes_the_request_in_flight_and_exits_0(host_factory, front):
    """With either HTTP_FRONT: the request in flight is answered, then the process exits 0."""
    host = host_factory(APP_MODULE="hostapps:app", SHUTDOWN_TIMEOUT="10", HTTP_FRONT=front)
    assert f'"front": "{front}"' in host.output()
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(requests.get, f"{host.url}/slow", timeout=10)
        wait_for(lambda: "slow request inside the app" in host.output(), 10, "/slow to start", 0.02)
        sent = time.monotonic()
        host.proc.send_signal(signal.SIGTERM)
        response = slow.result()
    assert response.status_code == 200
    assert response.text == "slow done"
    assert host.proc.wait(timeout=15) == 0
    figure(
        f"host-sigterm-{front}",
        f"exited 0 {time.monotonic() - sent:.2f} s after SIGTERM, its 1.5 s request in flight "
        f"answered (SHUTDOWN_TIMEOUT=10, HTTP_FRONT={front})",
    )
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


# --- streamed responses ------------------------------------------------------------------------


def read_until(sock: socket.socket, marker: bytes, data: bytes = b"") -> bytes:
    """Read from sock until marker arrives (each recv bounded by the socket's timeout)."""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r} arrived: {data[-300:]!r}"
        data += chunk
        assert len(data) < 1 << 20, "far more than expected"
    return data


def host_lines(host: Host, logger: str) -> list[dict]:
    lines = [json.loads(line) for line in host.output().splitlines() if line.startswith("{")]
    return [e for e in lines if e["logger"] == logger]


def test_an_endless_event_stream_answers_before_it_ends(host_factory):
    """An endless generator (Server-Sent Events) gets its first events to the client at once:
    a host that buffered the body would never answer."""
    host = host_factory(APP_MODULE="hostapps:app")
    with requests.get(f"{host.url}/events", stream=True, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "text/event-stream"
        assert r.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in r.headers
        data = []
        for line in r.iter_lines():
            if line.startswith(b"data: "):
                data.append(line.removeprefix(b"data: "))
            if len(data) == 3:
                break
    assert data == [b"1", b"2", b"3"]


def test_a_generator_of_many_chunks_arrives_whole_and_in_order(host_factory):
    host = host_factory(APP_MODULE="hostapps:app", ACCESS_LOG="1")
    r = requests.get(f"{host.url}/chunks", headers={"X-Request-ID": "chunks.1"}, timeout=10)
    assert r.status_code == 200
    assert r.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in r.headers
    assert r.content == b"".join(b"%05d\n" % n for n in range(500))
    # The raw framing: chunks, then the last chunk that ends the body on a kept-alive connection.
    with socket.create_connection(("127.0.0.1", host.port), timeout=10) as sock:
        sock.sendall(b"GET /chunks HTTP/1.1\r\nHost: test\r\n\r\n")
        raw = read_until(sock, b"\r\n0\r\n\r\n")
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        rest = read_until(sock, b"hello from a minimal WSGI app")
    assert b"\r\nTransfer-Encoding: chunked\r\n" in raw
    assert rest.startswith(b"HTTP/1.1 200 ")
    # One access line once the stream is over (written after its last chunk went out), with
    # the bytes of the whole body.
    wait_for(lambda: access_lines(host, "/chunks"), 10, "the access line", poll=0.05)
    entry = next(e for e in access_lines(host, "/chunks") if e["request_id"] == "chunks.1")
    assert entry["status"] == 200
    assert entry["bytes"] == 500 * 6


def test_a_client_leaving_a_stream_frees_its_pool_thread(host_factory):
    """With one pool thread, a request after the client hung up on an endless stream is
    served: the host stopped iterating and closed the generator (its finally ran)."""
    host = host_factory(APP_MODULE="hostapps:app", APP_THREADS="1")
    with socket.create_connection(("127.0.0.1", host.port), timeout=10) as sock:
        sock.sendall(b"GET /events?left-early HTTP/1.1\r\nHost: test\r\n\r\n")
        read_until(sock, b"event: tick")
    r = requests.get(f"{host.url}/hello", timeout=10)  # queued behind the stream until it ends
    assert r.status_code == 200
    closed = [e for e in host_lines(host, "hostapps") if e["message"] == "event stream closed"]
    assert [e["stream"] for e in closed] == ["left-early"]
    metrics = requests.get(f"{host.url}/metrics", timeout=5).text
    assert "flaskstack_requests_in_flight 0.0" in metrics


def test_a_stream_failing_before_its_first_chunk_is_a_500_envelope(host_factory):
    host = host_factory(APP_MODULE="hostapps:app")
    r = requests.get(f"{host.url}/fail-first", headers={"X-Request-ID": "fail.1"}, timeout=10)
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"
    assert r.json()["request_id"] == "fail.1"
    assert "secret" not in r.text
    assert "secret detail of a failed stream" in host.output()


def test_a_stream_failing_after_its_headers_is_cut_short(host_factory):
    """The status line is out: the host logs the error and closes the connection, so the
    client sees a chunked body without its last chunk rather than waiting."""
    host = host_factory(APP_MODULE="hostapps:app")
    response = raw_request(host.port, b"GET /fail-later HTTP/1.1\r\nHost: test\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Transfer-Encoding: chunked" in head
    assert b"first chunk" in body
    assert not body.endswith(b"0\r\n\r\n")
    assert "the stream broke after its headers" in host.output()
    assert requests.get(f"{host.url}/hello", timeout=5).status_code == 200


def test_a_single_chunk_response_keeps_its_content_length(host_factory):
    host = host_factory(APP_MODULE="hostapps:app")
    r = requests.get(f"{host.url}/hello", timeout=5)
    assert r.headers["Content-Length"] == str(len(b"hello from a minimal WSGI app"))
    assert "Transfer-Encoding" not in r.headers


def test_head_on_a_plain_wsgi_app_sends_headers_only(host_factory):
    """The app returns its body for HEAD too; the host drops it, and the connection lives on."""
    host = host_factory(APP_MODULE="hostapps:app")
    with socket.create_connection(("127.0.0.1", host.port), timeout=10) as sock:
        sock.sendall(b"HEAD /hello HTTP/1.1\r\nHost: test\r\n\r\n")
        head = read_until(sock, b"\r\n\r\n")
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        rest = read_until(sock, b"hello from a minimal WSGI app")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Length: 29\r\n" in head
    assert rest.startswith(b"HTTP/1.1 200 "), rest[:200]  # no body bytes came before it


def test_flask_ordinary_and_streamed_responses(host_factory):
    """Werkzeug hands back an iterable, not a list: a whole response still goes out with its
    Content-Length, and a stream_with_context generator streams with its request at hand."""
    host = host_factory(APP_MODULE="hostapps:flask_app")
    r = requests.get(f"{host.url}/json", timeout=5)
    assert r.json() == {"hello": "from flask"}
    assert r.headers["Content-Length"] == str(len(r.content))
    assert "Transfer-Encoding" not in r.headers
    r = requests.get(f"{host.url}/stream?n=50", timeout=10)
    assert r.status_code == 200
    assert r.headers["Transfer-Encoding"] == "chunked"
    assert r.text == "".join(f"/stream line {n}\n" for n in range(50))
    assert r.headers["X-Served-By"] == socket.gethostname()


def test_sigterm_closes_a_stream_still_running_at_the_drain_deadline(host_factory):
    host = host_factory(APP_MODULE="hostapps:app", SHUTDOWN_TIMEOUT="2")
    with socket.create_connection(("127.0.0.1", host.port), timeout=10) as sock:
        sock.sendall(b"GET /events?at-drain HTTP/1.1\r\nHost: test\r\n\r\n")
        data = read_until(sock, b"event: tick")
        host.proc.send_signal(signal.SIGTERM)
        while chunk := sock.recv(65536):  # until the host closes it (recv bounded by 10 s)
            data += chunk
    assert not data.endswith(b"0\r\n\r\n")  # cut, not finished
    assert host.proc.wait(timeout=15) == 0
    assert "drain timed out" in host.output()
    closed = [e for e in host_lines(host, "hostapps") if e["message"] == "event stream closed"]
    assert [e["stream"] for e in closed] == ["at-drain"]


# --- the request id, for any app ---------------------------------------------------------------


def test_a_plain_wsgi_app_gets_the_request_id_in_its_headers_and_log_lines(host_factory):
    """No Flask, no middleware: the host sets current_request_id for the call and adds
    X-Request-ID and X-Served-By to the response."""
    host = host_factory(APP_MODULE="hostapps:app")
    r = requests.get(f"{host.url}/logged", headers={"X-Request-ID": "plain.7"}, timeout=5)
    assert r.headers["X-Request-ID"] == "plain.7"
    assert r.headers["X-Served-By"] == socket.gethostname()
    r = requests.get(f"{host.url}/logged", headers={"X-Request-ID": "not sane!"}, timeout=5)
    fresh = r.headers["X-Request-ID"]
    assert len(fresh) == 32 and fresh != "not sane!"
    r = requests.get(f"{host.url}/hello", headers={"X-Request-ID": "quiet.1"}, timeout=5)
    assert r.headers["X-Request-ID"] == "quiet.1"
    logged = [
        e for e in host_lines(host, "hostapps") if e["message"] == "a line from a plain WSGI app"
    ]
    assert [e["request_id"] for e in logged] == ["plain.7", fresh]
    assert all(e["request_id"] is None for e in host_lines(host, "host"))  # reset after each


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


def test_socketio_room_events_cross_processes_over_notify(host_factory, app_env, tmp_path):
    """A user's event committed in one process reaches their socket.io client on another."""
    upload_dir = str(tmp_path / "uploads")
    listener = host_factory(**app_env, UPLOAD_DIR=upload_dir)
    writer = host_factory(**app_env, UPLOAD_DIR=upload_dir)
    headers = register_and_login(writer.url)
    client = Listener(listener.url, headers["Authorization"].removeprefix("Bearer "), "polling")
    try:
        stored = upload(writer.url, headers, "n.txt", b"x")
        assert client.next("upload.stored")["upload"]["id"] == stored["id"]
    finally:
        close_all([client])


def test_a_socketio_servers_notify_reaches_another_process(app_env):
    """What one replica's socket.io manager publishes (Notifier) another's listener hears."""
    sys.path.insert(0, str(ROOT / "deploy" / "tornado"))
    from flaskstack.realtime import PostgresListener
    from flaskstack.sio import Notifier

    dsn = app_env["DATABASE_URL"].replace("postgresql+psycopg2", "postgresql")
    message = json.dumps({"method": "emit", "event": "x", "data": [secrets.token_hex(4)]})

    async def scenario() -> str:
        heard: asyncio.Queue[str] = asyncio.Queue()
        listener = PostgresListener(dsn, "app_events", heard.put_nowait)
        task = asyncio.create_task(listener.run())
        try:
            await asyncio.wait_for(listener.connected.wait(), 10)
            await Notifier(dsn, "app_events")(message)
            return await asyncio.wait_for(heard.get(), 10)
        finally:
            listener.close()
            task.cancel()

    assert asyncio.run(scenario()) == message


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


# --- bodies: read once by the host, parsed only by the app ------------------------------------

UPLOAD_LIMIT_MB = 1
BOUNDARY = "----flaskstack-test"


@pytest.fixture(scope="module")
def demo_host(app_env, tmp_path_factory):
    """The real app in the real host, with a 1 MiB upload limit so big bodies stay small."""
    tmp = tmp_path_factory.mktemp("demo-host")
    host = Host(tmp, **app_env, UPLOAD_DIR=str(tmp / "uploads"), MAX_UPLOAD_MB=str(UPLOAD_LIMIT_MB))
    yield host
    host.stop()


def broken_multipart() -> bytes:
    """A multipart body whose closing boundary never comes."""
    return (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="a.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
        "no closing boundary follows"
    ).encode()


BODY_CASES = {
    "multipart without its closing boundary": (
        "/api/uploads",
        f"multipart/form-data; boundary={BOUNDARY}",
        broken_multipart(),
    ),
    "multipart with no boundary at all": (
        "/api/uploads",
        "multipart/form-data",
        broken_multipart(),
    ),
    "multipart with a boundary that is never used": (
        "/api/uploads",
        'multipart/form-data; boundary="elsewhere"',
        broken_multipart(),
    ),
    "a form body on a JSON endpoint": (
        "/api/posts",
        "application/x-www-form-urlencoded",
        b"title=hello&body=world",
    ),
    "a urlencoded body that is not valid UTF-8 or percent-encoding": (
        "/api/posts",
        "application/x-www-form-urlencoded",
        b"title=%zz&%&body=\xff\xfe",
    ),
}


@pytest.mark.parametrize("case", BODY_CASES, ids=list(BODY_CASES))
def test_bad_bodies_get_the_apps_json_error(demo_host, case):
    """Tornado does not parse bodies on the WSGI path: each gets the app's 4xx envelope."""
    path, content_type, body = BODY_CASES[case]
    headers = {**register_and_login(demo_host.url), "Content-Type": content_type}
    headers["X-Request-ID"] = f"body-{secrets.token_hex(4)}"
    r = requests.post(f"{demo_host.url}{path}", data=body, headers=headers, timeout=10)
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["Content-Type"] == "application/json"
    envelope = r.json()
    assert envelope["error"]["status"] == r.status_code
    assert envelope["request_id"] == headers["X-Request-ID"]
    assert "<html" not in r.text.lower()


def test_urlencoded_body_is_parsed_by_the_app_alone(demo_host):
    """/api/echo shows the form as Werkzeug read it, bytes Tornado would have refused included."""
    r = requests.post(
        f"{demo_host.url}/api/echo",
        data=b"a=1&a=2&odd=%zz&blank=",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.json()["form"] == {"a": ["1", "2"], "odd": ["%zz"], "blank": [""]}


def test_body_over_the_apps_limit_gets_its_413(demo_host):
    """Over MAX_UPLOAD_MB but within the host's framing allowance: Flask answers 413."""
    body = b"x" * (UPLOAD_LIMIT_MB * 1024 * 1024 + 10)
    r = requests.post(
        f"{demo_host.url}/api/echo",
        data=body,
        headers={"Content-Type": "application/octet-stream"},
        timeout=10,
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def test_body_over_the_hosts_limit_gets_a_413_envelope_unread(demo_host):
    """A Content-Length past the host's max_body_size is answered before the body is read."""
    length = (UPLOAD_LIMIT_MB + 1) * 1024 * 1024 + 1
    with socket.create_connection(("127.0.0.1", demo_host.port), timeout=10) as sock:
        sock.sendall(
            (
                "POST /api/echo HTTP/1.1\r\nHost: test\r\nX-Request-ID: too-big.1\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
            ).encode()
            + b"x" * 1024
        )
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in head
    envelope = json.loads(body)
    assert envelope["error"]["code"] == "payload_too_large"
    assert envelope["request_id"] == "too-big.1"
    # The process is unharmed: the next connection is served.
    assert requests.get(f"{demo_host.url}/healthz", timeout=5).status_code == 200


def test_app_log_lines_under_the_host_carry_the_request_id(host_factory):
    """One log line for host and app: the app's own warning, written in a pool thread, has the
    request's id and the same fields as the host's lines."""
    host = host_factory(
        APP_ENV="production",
        SECRET_KEY=secrets.token_urlsafe(48),
        JWT_SECRET_KEY=secrets.token_urlsafe(48),
        # Nothing listens on port 1: /readyz fails and the app logs why.
        DATABASE_URL="postgresql+psycopg2://nobody:nothing@127.0.0.1:1/none",
        DB_CONNECT_TIMEOUT="1",
    )
    r = requests.get(f"{host.url}/readyz", headers={"X-Request-ID": "ready.1"}, timeout=10)
    assert r.status_code == 503
    host.proc.send_signal(signal.SIGTERM)
    assert host.proc.wait(timeout=15) == 0
    lines = [json.loads(line) for line in host.output().splitlines() if line.startswith("{")]
    app_lines = [e for e in lines if e["logger"].startswith("app.")]
    host_lines = [e for e in lines if e["logger"] == "host"]
    assert app_lines and host_lines
    assert [e["request_id"] for e in app_lines] == ["ready.1"] * len(app_lines)
    assert all(e["request_id"] is None for e in host_lines)  # written outside any request
    for entry in app_lines + host_lines:
        assert {"ts", "level", "logger", "message", "request_id"} <= entry.keys()
        assert entry["level"] == entry["level"].lower()


def raw_request(port: int, request: bytes) -> bytes:
    """Send raw bytes to the host and return everything it answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    return response


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n", b"400"),
        (b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", b"400"),
        (b"GET /hello HTTP/1.1\r\nHost: bad host\r\nConnection: close\r\n\r\n", b"400"),
        (b"GET /hello HTTP/1.1\r\nHost: x/y\r\nConnection: close\r\n\r\n", b"400"),
        (b"GET /hello HTTP/1.0\r\n\r\n", b"200"),  # HTTP/1.0 does not require Host
        (b"GET /hello HTTP/1.1\r\nHost: [::1]:8000\r\nConnection: close\r\n\r\n", b"200"),
    ],
    ids=["missing", "repeated", "space", "slash", "http/1.0 without", "ipv6 literal"],
)
def test_host_header_is_checked_on_the_wsgi_path(host_factory, request_bytes, status):
    """RFC 9112: a missing (HTTP/1.1), malformed or repeated Host is a 400, before the app."""
    host = host_factory(APP_MODULE="hostapps:app")
    response = raw_request(host.port, request_bytes)
    assert response.split(b" ", 2)[1] == status, response[:200]
