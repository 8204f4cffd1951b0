"""The host's listener: ordinary requests parsed in C (httptools), everything else to Tornado.

Every connection starts here, on an asyncio Protocol. An ordinary request (HTTP/1.1, a valid
Host, no body or a Content-Length within MAX_UPLOAD_MB, one request at a time, not a native
path) is parsed by httptools, run on the pool by WSGIPath.run_app exactly as before, and its
response written straight to the transport. Any other request hands its connection to
Tornado's HTTP/1 code, with the bytes read so far, and the connection stays there: /ws,
/socket.io/, /healthz and /metrics (the native application), a pipelined request, HTTP/1.0,
chunked or `Expect: 100-continue` bodies, an upgrade, an oversized head or body, a missing or
malformed Host, and anything httptools cannot parse. So every answer those get (the 413
envelope, the 400 for a malformed request, the websocket handshake, keep-alive rules) is the
host's Tornado path's, unchanged; the front adds a faster path, not a second set of rules.

Why: Tornado's HTTP/1 code (its header parsing in Python, an IOStream read and a coroutine per
request, an HTTPHeaders object each way) was most of the host's own cost. Measured here on the
host alone (a small Flask app's JSON view, wrk with 32 keep-alive connections, process CPU per
request, six alternating pairs): 249 us and 4,313 requests/s with Tornado parsing every
request, 146 us and 7,254 requests/s with this front.

HTTP_FRONT=tornado turns the front off: Tornado's HTTPServer then listens itself, as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from functools import partial
from io import BytesIO
from typing import Any, cast

import httptools
import tornado.httpserver
import tornado.iostream
from tornado.httputil import HTTPHeaders, RequestStartLine, ResponseStartLine
from tornado.ioloop import IOLoop

from .wsgi import (
    HOST,
    NATIVE_PATHS,
    NATIVE_PREFIX,
    Inbox,
    WSGIPath,
    base_environ,
    client_address,
)

log = logging.getLogger("host")
# Tornado's own limit on a request's head (max_header_size); a longer one goes to Tornado,
# which refuses it as before.
MAX_HEAD = 65536
# Bytes a client may send ahead while its request is in the pool before the front stops
# reading from it (nginx never sends ahead; a pipelining client goes to Tornado).
MAX_AHEAD = 65536
# A body larger than this is not also kept as raw bytes for a hand-over to Tornado (that would
# hold an upload twice): a client that pipelines behind one gets its first answer, and the
# connection then closes, so it sends the rest again (RFC 9112, section 9.3.2).
RAW_KEPT = 65536
SWEEP_S = 1.0  # how often idle and stalled connections are looked for
BODY_TIMEOUT_S = 60.0  # a request's head and body must arrive within this (Tornado's body_timeout)


class Handoff(Exception):
    """This connection goes to Tornado's HTTP/1 code from here on."""


def prefixed_stream(sock: socket.socket, prefix: bytes) -> tornado.iostream.IOStream:
    """A Tornado IOStream on `sock` that holds the bytes the front already read from it.

    They go in its read buffer, where its every read looks first. (Served from read_from_fd
    instead, a read that stops at its max_bytes would then wait on the socket for bytes that
    are already here.)
    """
    stream = tornado.iostream.IOStream(sock)
    stream._read_buffer += prefix
    stream._read_buffer_size += len(prefix)
    return stream


class Front:
    """The listening socket, its connections, and the two ways a connection leaves it."""

    def __init__(
        self,
        path: WSGIPath,
        tornado_server: tornado.httpserver.HTTPServer,
        max_body: int,
        idle_timeout: float,
    ) -> None:
        self.path = path
        # Keeps its connection alive: a websocket, a pipelining or HTTP/1.0 client, ...
        self.tornado = tornado_server
        # One request, then the connection closes: the native paths' ordinary requests
        # (/healthz, /metrics, socket.io's polling), so a keep-alive connection of nginx's
        # does not stay on Tornado's slower path for the requests after them.
        self.oneshot = tornado.httpserver.HTTPServer(
            tornado_server.request_callback,
            no_keep_alive=True,
            max_body_size=max_body,
            idle_connection_timeout=idle_timeout,
            body_timeout=BODY_TIMEOUT_S,
        )
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.connections: set[FrontConnection] = set()
        self.draining = False
        self.server: asyncio.Server | None = None
        self.sweeper: asyncio.TimerHandle | None = None
        self.loop: IOLoop = None  # type: ignore[assignment]  # set by listen()

    async def listen(self, port: int, host: str) -> None:
        loop = asyncio.get_running_loop()
        self.loop = IOLoop.current()
        # Tornado's listen backlog, so the two listeners queue alike.
        self.server = await loop.create_server(
            partial(FrontConnection, self), host, port, reuse_address=True, backlog=128
        )
        self.sweeper = loop.call_later(SWEEP_S, self.sweep)

    def stop(self) -> None:
        """Refuse new connections; requests that arrive on open ones get `Connection: close`."""
        self.draining = True
        if self.server is not None:
            self.server.close()
        for server in (self.tornado, self.oneshot):
            server.conn_params.no_keep_alive = True

    def open_connections(self) -> int:
        tornado_open = len(self.tornado._connections) + len(self.oneshot._connections)
        return len(self.connections) + tornado_open

    async def close_all(self) -> None:
        """Close every connection: an idle one once what it was sent is out, one still
        streaming (the drain's deadline passed) at once."""
        for connection in list(self.connections):
            if connection.busy:
                connection.transport.abort()
            else:
                connection.transport.close()
        if self.sweeper is not None:
            self.sweeper.cancel()
        await self.tornado.close_all_connections()
        await self.oneshot.close_all_connections()

    def sweep(self) -> None:
        """Close connections idle past IDLE_TIMEOUT, or stuck mid-request past BODY_TIMEOUT_S."""
        now = time.monotonic()
        for connection in list(self.connections):
            if connection.busy:
                continue  # the pool has its request; a stream watches its own client
            limit = BODY_TIMEOUT_S if connection.run_size else self.idle_timeout
            if now - connection.last_read > limit:
                connection.transport.close()
        self.sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self.sweep)

    def hand_to_tornado(self, connection: FrontConnection, prefix: bytes, oneshot: bool) -> None:
        """Give the connection's socket, and the bytes read from it, to Tornado's HTTP/1 code."""
        transport = connection.transport
        sock = transport.get_extra_info("socket")
        own = socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
        self.connections.discard(connection)
        connection.handed = True
        transport.abort()  # closes the front's copy only: the socket lives on in `own`
        server = self.oneshot if oneshot else self.tornado
        server.handle_stream(prefixed_stream(own, prefix), connection.peer)


class FrontConnection(asyncio.Protocol):
    """One client connection on the front: its parser, its one request, and its response."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer: Any = ("", 0)
        self.handed = False  # the connection is Tornado's now
        self.gone = False  # the client went away
        self.busy = False  # a request is in the pool, or its response is being sent
        self.run: list[bytes] = []  # bytes read since the last request was dispatched
        self.run_size = 0
        self.keep_raw = True  # `run` holds them all (not past RAW_KEPT of body)
        self.ahead: list[bytes] = []  # bytes read while busy, parsed once the response is out
        self.ahead_size = 0
        self.last_read = time.monotonic()
        self.close_callback: Callable[[], None] | None = None
        self.flushed: list[asyncio.Future[None]] = []  # stream writes waiting for the socket
        self.reset()

    def reset(self) -> None:
        self.keep_raw = True
        self.messages = 0
        self.url = b""
        self.header_list: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []  # the body's pieces, until a second one comes
        self.body_buffer: BytesIO | None = None  # then the body, written as it arrives
        self.environ: dict[str, Any] | None = None
        self.complete = False
        self.keep_alive = True
        # A streamed response's framing (ChunkStream drives it through the methods below).
        self.method = "GET"
        self.chunking = False
        self.remaining: int | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername") or ("", 0)
        self.front.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        if self.busy:
            self.ahead.append(data)
            self.ahead_size += len(data)
            if self.ahead_size > MAX_AHEAD:
                self.transport.pause_reading()
            return
        self.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handed:
            return
        self.front.connections.discard(self)
        self.gone = True
        self.release_writers()
        callback, self.close_callback = self.close_callback, None
        if callback is not None:
            callback()

    def pause_writing(self) -> None:
        pass  # a stream's write futures wait in `flushed` until resume_writing

    def resume_writing(self) -> None:
        self.release_writers()

    # --- parsing ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self.keep_raw:
            self.run.append(data)
        self.run_size += len(data)
        try:
            self.parser.feed_data(data)
            if self.environ is None and self.run_size > MAX_HEAD:
                raise Handoff
        except (httptools.HttpParserError, httptools.HttpParserUpgrade, Handoff):
            if self.keep_raw:
                self.hand_over()
            elif self.complete:  # a large request, then a pipelined one: answer it, then close
                self.keep_alive = False
                self.dispatch()
            else:
                self.transport.abort()
            return
        if self.complete:
            self.dispatch()

    def hand_over(self) -> None:
        native = self.environ is None and self.messages == 1 and self.is_native()
        prefix = b"".join(self.run)
        self.run = []
        self.front.hand_to_tornado(self, prefix, oneshot=native and not self.upgrade())

    def is_native(self) -> bool:
        path = self.url.partition(b"?")[0]
        return path.decode("latin-1") in NATIVE_PATHS or path.startswith(NATIVE_PREFIX.encode())

    def upgrade(self) -> bool:
        return any(name.lower() == b"upgrade" for name, _ in self.header_list)

    def on_message_begin(self) -> None:
        self.messages += 1
        if self.messages > 1:
            raise Handoff  # a second request in the same read: a pipelining client

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_list.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        if parser.get_http_version() != "1.1" or parser.should_upgrade() or self.is_native():
            raise Handoff
        self.keep_alive = parser.should_keep_alive()
        self.method = parser.get_method().decode("latin-1")
        environ: dict[str, Any] = {}  # the headers first: they decide whether the front serves
        for raw_name, raw_value in self.header_list:
            name = raw_name.decode("latin-1").upper().replace("-", "_")
            value = raw_value.decode("latin-1")
            if name == "CONTENT_TYPE" or name == "CONTENT_LENGTH":
                key = name
            elif name == "TRANSFER_ENCODING" or name == "EXPECT":
                raise Handoff  # chunked or 100-continue bodies: Tornado's code reads those
            else:
                key = "HTTP_" + name
            if key in environ:
                environ[key] += "," + value  # repeated headers, joined as Tornado does
            else:
                environ[key] = value
        host = environ.get("HTTP_HOST")
        if host is None or not HOST.fullmatch(host):
            raise Handoff  # Tornado answers a missing or malformed Host with its 400
        length = environ.get("CONTENT_LENGTH")
        if length is not None and not (length.isdigit() and int(length) <= self.front.max_body):
            raise Handoff  # over MAX_UPLOAD_MB: Tornado's path answers the 413 envelope unread
        remote, scheme = client_address(
            environ.get("HTTP_X_REAL_IP"),
            environ.get("HTTP_X_FORWARDED_FOR"),
            environ.get("HTTP_X_SCHEME") or environ.get("HTTP_X_FORWARDED_PROTO"),
            self.peer[0],
            "http",
        )
        url = self.url.decode("latin-1")
        environ.update(base_environ(self.method, url, "HTTP/1.1", host, remote, scheme))
        self.environ = environ
        if length is not None and int(length) > RAW_KEPT:
            self.keep_raw, self.run = False, []

    def on_body(self, body: bytes) -> None:
        if self.body_buffer is not None:
            self.body_buffer.write(body)
        elif self.body:  # a second piece: from here on the body is written once, not joined
            self.body_buffer = BytesIO()
            self.body_buffer.write(self.body.pop())
            self.body_buffer.write(body)
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    def dispatch(self) -> None:
        environ = cast(dict[str, Any], self.environ)
        buffer = self.body_buffer
        if buffer is None:
            buffer = BytesIO(self.body[0] if self.body else b"")  # shares the piece, no copy
        else:
            buffer.seek(0)
        environ["wsgi.input"] = buffer
        self.run, self.run_size = [], 0
        self.busy = True
        path, loop = self.front.path, self.front.loop
        if path.inbox is None:
            path.inbox = Inbox(loop)
        path.in_flight += 1
        path.last_activity = received = time.monotonic()
        path.pool.submit(partial(path.run_app, environ, received, self, loop))

    def next_request(self) -> None:
        """The response is out: parse whatever the client sent meanwhile."""
        self.busy = False
        self.reset()
        if self.ahead:
            data = b"".join(self.ahead)
            self.ahead, self.ahead_size = [], 0
            self.transport.resume_reading()
            self.feed(data)

    # --- a whole response (WSGIPath.run_app's exchange) ---------------------------------------

    def respond(self, status: str, headers: list[tuple[str, str]], body: bytes | None) -> None:
        """Write the app's whole response; runs on the IOLoop once the pool job is done.

        The same rules as Tornado's path: a Content-Length unless the app set one (none on a
        304), no body on HEAD or 304, `Connection: close` when the client asked for it or the
        host is draining, and a header with CR or LF, or a body other than the Content-Length
        the app set, closes the connection unanswered.
        """
        path = self.front.path
        path.in_flight -= 1
        path.last_activity = time.monotonic()
        if self.gone:
            return
        try:
            code, _, reason = status.partition(" ")
            lines = [f"HTTP/1.1 {int(code)} {reason}\r\n"]
            length = None
            for name, value in headers:
                lines.append(f"{name}: {value}\r\n")
                if length is None and len(name) == 14 and name.lower() == "content-length":
                    length = value
            head = "".join(lines)
            if head.count("\n") != len(lines) or head.count("\r") != len(lines):
                raise ValueError(f"CR or LF inside a response header: {headers!r}")
            if body is not None and code != "304":
                if length is None:
                    head += f"Content-Length: {len(body)}\r\n"
                elif self.method != "HEAD" and int(length) != len(body):
                    raise ValueError(f"{len(body)} body bytes under Content-Length: {length}")
            keep = self.keep_alive and not self.front.draining
            if not keep:
                head += "Connection: close\r\n"
            data = head.encode("latin-1") + b"\r\n"
            if body and self.method != "HEAD" and code != "304":
                data += body
            self.transport.write(data)
        except Exception:
            log.exception("the WSGI response could not be sent")
            self.transport.abort()
            return
        if keep:
            self.next_request()
        else:
            self.transport.close()

    def streamed(self) -> None:
        """A streamed response's pool job is over: it no longer counts as in flight."""
        path = self.front.path
        path.in_flight -= 1
        path.last_activity = time.monotonic()

    # --- a streamed response: the subset of HTTP1Connection that ChunkStream uses --------------

    @property
    def connection(self) -> FrontConnection:
        return self

    @property
    def stream(self) -> FrontConnection:
        return self

    @property
    def start_line(self) -> RequestStartLine:
        return RequestStartLine(self.method, self.url.decode("latin-1"), "HTTP/1.1")

    def closed(self) -> bool:
        return self.gone or self.transport.is_closing()

    def set_nodelay(self, value: bool) -> None:
        pass  # asyncio sets TCP_NODELAY on every TCP transport

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        self.close_callback = callback

    def write_headers(
        self, start_line: ResponseStartLine, headers: HTTPHeaders, chunk: bytes | None = None
    ) -> asyncio.Future[None]:
        code = start_line.code
        self.chunking = (
            code not in (204, 304)
            and code >= 200
            and self.method != "HEAD"
            and "Content-Length" not in headers
            and "Transfer-Encoding" not in headers
        )
        if self.chunking:
            headers["Transfer-Encoding"] = "chunked"
        elif "Content-Length" in headers:
            self.remaining = int(headers["Content-Length"])
        if not (self.keep_alive and not self.front.draining):
            headers["Connection"] = "close"
            self.keep_alive = False
        lines = [f"HTTP/1.1 {code} {start_line.reason}"]
        lines += [f"{name}: {value}" for name, value in headers.get_all()]
        for line in lines:
            if "\r" in line or "\n" in line:
                raise ValueError(f"CR or LF inside a response header: {line!r}")
        # Each write's future is done when the socket has taken it, as with Tornado's.
        self.transport.set_write_buffer_limits(high=0)
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return self.write(chunk or b"")

    def write(self, chunk: bytes) -> asyncio.Future[None]:
        if self.remaining is not None:
            self.remaining -= len(chunk)
            if self.remaining < 0:
                self.transport.abort()
                raise ValueError("a streamed body went past its Content-Length")
        if chunk:
            self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self.chunking else chunk)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.gone or not self.transport.get_write_buffer_size():
            future.set_result(None)
        else:
            self.flushed.append(future)
        return future

    def finish(self) -> None:
        if self.remaining:
            self.transport.abort()
            raise ValueError("a streamed body ended short of its Content-Length")
        if self.chunking:
            self.transport.write(b"0\r\n\r\n")
        self.close_callback = None
        if self.keep_alive:
            self.next_request()
        else:
            self.transport.close()

    def close(self) -> None:
        """Cut the connection now (ChunkStream reports the close itself)."""
        self.close_callback = None
        self.transport.abort()

    def release_writers(self) -> None:
        waiting, self.flushed = self.flushed, []
        for future in waiting:
            if not future.done():
                future.set_result(None)
