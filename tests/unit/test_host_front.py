"""The host's front (flaskstack/front.py) on real sockets: what it serves itself, and what it
hands to Tornado's HTTP/1 code with the bytes it had read.

A plain WSGI app and a small native application run behind one Front on an ephemeral port, in
a thread of their own; each test talks to it over raw sockets, so pipelining, HTTP/1.0,
chunked bodies and broken requests are sent exactly as written.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import tornado.httpserver
import tornado.web
import tornado.websocket

from flaskstack import front
from flaskstack.front import MAX_HEAD, Front
from flaskstack.wsgi import WorkerPool, WSGIPath

MAX_BODY = 4096
release = threading.Event()  # /wait returns once this is set


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
    path = environ["PATH_INFO"]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (f"chunk{n}\n".encode() for n in range(50))
    if path == "/sized-stream":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return iter([b"01234", b"56789"])
    if path == "/bad-header":
        start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: b=c")])
        return [b"no"]
    if path == "/wrong-length":
        start_response("200 OK", [("Content-Length", "10")])
        return [b"12345"]
    if path == "/not-modified":
        start_response("304 Not Modified", [("ETag", '"x"')])
        return [b""]
    if path == "/wait":
        release.wait(10)
    body = environ["wsgi.input"].read()
    keys = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "REMOTE_ADDR", "SERVER_NAME")
    seen = {key: environ.get(key) for key in keys}
    seen |= {
        "port": environ["SERVER_PORT"],
        "scheme": environ["wsgi.url_scheme"],
        "type": environ.get("CONTENT_TYPE"),
        "multi": environ.get("HTTP_X_MULTI"),
        "body_sha": hashlib.sha256(body).hexdigest(),
        "body_len": len(body),
    }
    payload = json.dumps(seen).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [payload]


class Health(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish({"status": "ok"})


class Echo(tornado.websocket.WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.write_message(message)


class Served:
    """One Front on 127.0.0.1, its loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.clients: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.pool = WorkerPool(4)
        native = tornado.web.Application([(r"/healthz", Health), (r"/ws", Echo)])
        self.path = WSGIPath(wsgi_app, self.pool, native, MAX_BODY, access_lines=False)
        self.tornado = tornado.httpserver.HTTPServer(self.path, max_body_size=MAX_BODY)
        self.front = Front(self.path, self.tornado, MAX_BODY, idle_timeout=75)
        await self.front.listen(0, "127.0.0.1")
        assert self.front.server is not None
        self.port = self.front.server.sockets[0].getsockname()[1]

    def call(self, function: Any) -> Any:
        """Run function() on the front's loop and return its result."""
        done = threading.Event()
        out: list[Any] = []
        self.loop.call_soon_threadsafe(lambda: (out.append(function()), done.set()))
        assert done.wait(10)
        return out[0]

    def on_front(self) -> int:
        return self.call(lambda: len(self.front.connections))

    def on_tornado(self) -> int:
        return self.call(lambda: len(self.front.tornado._connections))

    def close(self) -> None:
        for sock in self.clients:
            sock.close()
        asyncio.run_coroutine_threadsafe(self.front.close_all(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.pool.shutdown(2)


@pytest.fixture
def served() -> Iterator[Served]:
    release.clear()
    server = Served()
    yield server
    release.set()
    server.close()


def connect(served: Served) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    served.clients.append(sock)
    return sock


def read_response(reader: Any) -> tuple[int, dict[str, str], bytes]:
    """One response from a socket's file: status, headers (last of each name), body."""
    status_line = reader.readline()
    if not status_line:
        raise ConnectionError("closed before a response")
    code = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if code in (100, 101, 304):
        return code, headers, b""
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int(reader.readline().strip(), 16):
            body += reader.read(size)
            reader.readline()
        reader.readline()
        return code, headers, body
    if "content-length" in headers:
        return code, headers, reader.read(int(headers["content-length"]))
    return code, headers, reader.read()


def request(method: str = "GET", path: str = "/echo", body: bytes = b"", **extra: str) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: example.test:8000"]
    if body:
        head.append(f"Content-Length: {len(body)}")
    head += [f"{name.replace('_', '-')}: {value}" for name, value in extra.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_keep_alive_requests_are_served_by_the_front_with_the_environ_the_app_expects(
    served: Served,
) -> None:
    sock = connect(served)
    reader = sock.makefile("rb")
    body = os.urandom(3000)
    for n in range(3):
        sock.sendall(
            request(
                "POST",
                f"/caf%C3%A9/{n}?q=1&r=2",
                body,
                Content_Type="application/octet-stream",
                X_Real_IP="203.0.113.9",
                X_Forwarded_Proto="https",
            )
        )
        code, headers, raw = read_response(reader)
        seen = json.loads(raw)
        assert code == 200
        assert "connection" not in headers
        assert seen == {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": f"/caf\xc3\xa9/{n}",
            "QUERY_STRING": "q=1&r=2",
            "REMOTE_ADDR": "203.0.113.9",
            "SERVER_NAME": "example.test",
            "port": "8000",
            "scheme": "https",
            "type": "application/octet-stream",
            "multi": None,
            "body_sha": hashlib.sha256(body).hexdigest(),
            "body_len": 3000,
        }
        assert headers["x-request-id"] and headers["x-served-by"]
    assert (served.on_front(), served.on_tornado()) == (1, 0)
    sock.close()


def test_a_body_arriving_in_pieces_reaches_the_app_whole(served: Served) -> None:
    sock = connect(served)
    body = os.urandom(MAX_BODY)
    data = request("PUT", "/echo", body)
    for offset in range(0, len(data), 700):
        sock.sendall(data[offset : offset + 700])
    code, _, raw = read_response(sock.makefile("rb"))
    assert code == 200
    assert json.loads(raw)["body_sha"] == hashlib.sha256(body).hexdigest()


def test_repeated_headers_are_joined_with_a_comma(served: Served) -> None:
    sock = connect(served)
    sock.sendall(b"GET /echo HTTP/1.1\r\nHost: h\r\nX-Multi: a\r\nX-Multi: b\r\n\r\n")
    _, _, raw = read_response(sock.makefile("rb"))
    assert json.loads(raw)["multi"] == "a,b"


def test_pipelined_requests_go_to_tornado_and_are_answered_in_order(served: Served) -> None:
    sock = connect(served)
    reader = sock.makefile("rb")
    sock.sendall(request(path="/echo?n=1") + request(path="/echo?n=2") + request(path="/echo?n=3"))
    answers = [json.loads(read_response(reader)[2])["QUERY_STRING"] for _ in range(3)]
    assert answers == ["n=1", "n=2", "n=3"]
    assert (served.on_front(), served.on_tornado()) == (0, 1)


def test_a_request_sent_while_the_first_is_in_the_pool_waits_its_turn(served: Served) -> None:
    sock = connect(served)
    reader = sock.makefile("rb")
    sock.sendall(request(path="/wait"))
    while not served.call(lambda: served.path.in_flight):
        pass  # the first request is in the pool: the second cannot share its read
    sock.sendall(request(path="/echo?after=1"))
    release.set()
    assert json.loads(read_response(reader)[2])["PATH_INFO"] == "/wait"
    assert json.loads(read_response(reader)[2])["QUERY_STRING"] == "after=1"
    assert served.on_front() == 1


def test_a_native_path_is_tornados_for_one_request_then_the_connection_closes(
    served: Served,
) -> None:
    sock = connect(served)
    reader = sock.makefile("rb")
    sock.sendall(request(path="/echo"))
    assert read_response(reader)[0] == 200
    sock.sendall(request(path="/healthz"))
    code, headers, body = read_response(reader)
    assert (code, json.loads(body)) == (200, {"status": "ok"})
    assert headers["connection"] == "close"
    assert reader.read() == b""  # closed: the next request opens a connection on the front


def test_a_websocket_upgrade_is_handed_over_and_works(served: Served) -> None:
    sock = connect(served)
    reader = sock.makefile("rb")
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        request(
            path="/ws",
            Upgrade="websocket",
            Connection="Upgrade",
            Sec_WebSocket_Key=key,
            Sec_WebSocket_Version="13",
        )
    )
    code, headers, _ = read_response(reader)
    assert code == 101
    accept = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()  # noqa: S324
    assert headers["sec-websocket-accept"] == base64.b64encode(accept).decode()
    mask = os.urandom(4)
    payload = b"hello"
    sock.sendall(
        bytes([0x81, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )
    assert reader.read(2 + len(payload)) == bytes([0x81, len(payload)]) + payload


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"GET /echo HTTP/1.0\r\n\r\n", 200),  # HTTP/1.0, no Host
        (
            b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n",
            200,
        ),
        (b"GET /echo HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /echo HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n", 400),
        (b"NOT-HTTP\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 99999\r\n\r\n", 413),
    ],
)
def test_requests_the_front_does_not_take_get_tornados_answer(
    served: Served, data: bytes, expected: int
) -> None:
    sock = connect(served)
    sock.sendall(data)
    code, _, body = read_response(sock.makefile("rb"))
    assert code == expected
    if expected == 413:
        assert json.loads(body)["error"]["code"] == "payload_too_large"
    if expected == 200 and b"chunked" in data:
        assert json.loads(body)["body_len"] == 3


def test_expect_100_continue_gets_its_interim_response(served: Served) -> None:
    sock = connect(served)
    reader = sock.makefile("rb")
    sock.sendall(
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    )
    assert read_response(reader)[0] == 100
    sock.sendall(b"abc")
    code, _, body = read_response(reader)
    assert (code, json.loads(body)["body_len"]) == (200, 3)


def test_a_head_longer_than_tornados_limit_goes_to_tornado(served: Served) -> None:
    sock = connect(served)
    sock.sendall(b"GET /echo HTTP/1.1\r\nHost: h\r\nX-Big: " + b"x" * (MAX_HEAD + 10))
    # Tornado closes a connection whose head passes max_header_size, unanswered.
    assert sock.makefile("rb").read() == b""
    assert served.on_front() == 0


def test_connection_close_is_honoured(served: Served) -> None:
    sock = connect(served)
    sock.sendall(request(Connection="close"))
    reader = sock.makefile("rb")
    code, headers, _ = read_response(reader)
    assert (code, headers["connection"]) == (200, "close")
    assert reader.read() == b""


def test_head_and_304_carry_no_body(served: Served) -> None:
    sock = connect(served)
    reader = sock.makefile("rb")
    sock.sendall(request("HEAD", "/echo"))
    status_line = reader.readline()
    head = b""
    while (line := reader.readline()) != b"\r\n":
        head += line
    assert status_line.startswith(b"HTTP/1.1 200") and b"Content-Length: " in head
    sock.sendall(request(path="/not-modified"))
    code, headers, _ = read_response(reader)
    assert code == 304 and "content-length" not in headers
    sock.sendall(request(path="/echo"))  # the connection is still in step
    assert read_response(reader)[0] == 200


@pytest.mark.parametrize("path", ["/bad-header", "/wrong-length"])
def test_a_response_the_client_could_misread_closes_the_connection_unanswered(
    served: Served, path: str
) -> None:
    """A header with CR or LF, or a body other than its Content-Length: nothing is sent."""
    sock = connect(served)
    sock.sendall(request(path=path))
    assert sock.makefile("rb").read() == b""


def test_streamed_bodies_arrive_whole_chunked_or_sized_and_keep_the_connection(
    served: Served,
) -> None:
    sock = connect(served)
    reader = sock.makefile("rb")
    sock.sendall(request(path="/stream"))
    code, headers, body = read_response(reader)
    assert headers["transfer-encoding"] == "chunked"
    assert body == b"".join(f"chunk{n}\n".encode() for n in range(50))
    sock.sendall(request(path="/sized-stream"))
    code, headers, body = read_response(reader)
    assert (code, headers["content-length"], body) == (200, "10", b"0123456789")
    sock.sendall(request(path="/echo"))
    assert read_response(reader)[0] == 200
    assert served.on_front() == 1


def test_stop_refuses_new_connections_and_closes_kept_ones_after_their_answer(
    served: Served,
) -> None:
    sock = connect(served)
    reader = sock.makefile("rb")
    sock.sendall(request(path="/echo"))
    assert read_response(reader)[0] == 200
    served.call(served.front.stop)
    with pytest.raises(ConnectionRefusedError):
        connect(served)
    sock.sendall(request(path="/echo"))
    code, headers, _ = read_response(reader)
    assert (code, headers["connection"]) == (200, "close")
    assert reader.read() == b""


def test_an_idle_connection_is_closed_after_the_idle_timeout(served: Served) -> None:
    def shorten() -> None:
        served.front.idle_timeout = 0.5

    served.call(shorten)
    sock = connect(served)
    reader = sock.makefile("rb")
    sock.sendall(request(path="/echo"))
    assert read_response(reader)[0] == 200
    assert reader.read() == b""  # the sweep closed it; the socket's own timeout is 10 s
    assert served.on_front() == 0


def test_a_large_body_is_not_kept_twice_and_a_request_pipelined_behind_it_is_refused(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past RAW_KEPT the raw bytes are dropped (no hand-over is possible then): the first
    request is answered, the connection closes, and the client sends the second again."""
    monkeypatch.setattr(front, "RAW_KEPT", 1000)
    body = os.urandom(3000)
    sock = connect(served)
    reader = sock.makefile("rb")
    sock.sendall(request("POST", "/echo", body))  # alone: served, the connection kept
    code, headers, raw = read_response(reader)
    assert (code, json.loads(raw)["body_len"], "connection" in headers) == (200, 3000, False)
    sock.sendall(request("POST", "/echo", body) + request(path="/echo?second=1"))
    code, headers, raw = read_response(reader)
    assert (code, json.loads(raw)["body_len"], headers["connection"]) == (200, 3000, "close")
    assert reader.read() == b""
