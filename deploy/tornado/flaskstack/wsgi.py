"""The WSGI path: each request from the HTTP connection to one pool job and back.

A request for a native path (/healthz, /metrics, /ws, /socket.io/) is handed to the host's small
tornado.web application instead; everything else runs the WSGI app on a pool thread, never on
the IOLoop.

A body the app hands back whole (a list or tuple, or an iterable whose first chunk is all the
Content-Length it announced, which is every ordinary Flask response) goes out in one write with
its Content-Length. Any other body is streamed (Server-Sent Events, `stream_with_context`, a
large export): the pool thread iterates it and hands each chunk to the IOLoop as it comes, the
headers with the first, in HTTP/1.1 chunked encoding when the app set no Content-Length, and
never more than STREAM_WINDOW chunks ahead of what the socket took. A streamed response holds
its pool thread for as long as it runs, so APP_THREADS bounds how many stream at once, and a
client that went away is noticed only when the app yields its next chunk (an endless stream
should yield a heartbeat, e.g. an SSE comment, more often than nginx's proxy_read_timeout).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from functools import partial
from http import HTTPStatus
from io import BytesIO
from typing import Any, cast
from urllib.parse import unquote_to_bytes

import tornado.httputil
import tornado.web
from tornado.concurrent import future_add_done_callback
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPHeaders
from tornado.ioloop import IOLoop

from .contract import current_request_id, error_envelope, new_request_id, sane_request_id
from .metrics import RequestMetrics

log = logging.getLogger("host")
access_log = logging.getLogger("access")
REPLICA = socket.gethostname()
WSGIResponse = tuple[str, list[tuple[str, str]], bytes]  # status line, headers, whole body
# Chunks of a streamed body that the pool thread may hand to the IOLoop before the socket has
# taken them: what a slow client makes the host hold per stream, beyond the kernel's buffers.
STREAM_WINDOW = 8
# Seconds a streamed response may wait for the client to take a chunk before the host closes the
# connection (a client that stopped reading but keeps its connection open), like nginx's
# send_timeout.
STREAM_STALL_S = 60.0
END = object()  # a body iterator's end
# Served on the IOLoop; everything else is WSGI.
NATIVE_PATHS = frozenset({"/healthz", "/metrics", "/ws"})
NATIVE_PREFIX = "/socket.io/"  # socket.io's engine, on the IOLoop too
# RFC 3986's host (an IP literal, or reg-name characters) and an optional port. A comma is left
# out on purpose: repeated Host headers arrive joined by one, and RFC 9112 wants a 400 for them.
HOST = re.compile(r"(?:\[[0-9A-Za-z:.%]+\]|[A-Za-z0-9\-._~%!$&'()*+;=]*)(?::[0-9]*)?")


# The client's address as nginx, the host's one peer, forwards it (X-Real-IP, else the last
# X-Forwarded-For entry), checked by its characters only: an IPv4 or IPv6 literal. Tornado's
# `xheaders` reads the same headers but checks the address with getaddrinfo on every request.
# Measured here (the host alone on a small Flask app, wrk with 32 connections, process CPU per
# request, five alternating pairs): 191.8 us with xheaders, 183.8 us with this.
CLIENT_ADDRESS = re.compile(r"[0-9A-Fa-f:.]{2,45}")


def forwarded(headers: HTTPHeaders, peer: str, scheme: str) -> tuple[str, str]:
    """The client's address and the scheme it used, from nginx's headers; else the peer's."""
    return client_address(
        headers.get("X-Real-Ip"),
        headers.get("X-Forwarded-For"),
        headers.get("X-Scheme") or headers.get("X-Forwarded-Proto"),
        peer,
        scheme,
    )


def client_address(
    real_ip: str | None, chain: str | None, proto: str | None, peer: str, scheme: str
) -> tuple[str, str]:
    """`forwarded` on the header values themselves (X-Real-IP, X-Forwarded-For, X-Scheme or
    X-Forwarded-Proto), for a path that has no HTTPHeaders object."""
    address = real_ip
    if address is None and chain:
        address = chain.rpartition(",")[2].strip()
    if address is None or not CLIENT_ADDRESS.fullmatch(address):
        address = peer
    if proto:
        proto = proto.rpartition(",")[2].strip()
        if proto in ("http", "https"):
            scheme = proto
    return address, scheme


def base_environ(
    method: str, target: str, version: str, host: str, remote: str, scheme: str
) -> dict[str, Any]:
    """A WSGI environ (PEP 3333) but for the headers and wsgi.input, which the caller adds: the
    request line's, the server's and the wsgi.* keys. Both of the host's paths build theirs
    here (WSGIExchange for Tornado's, front.py for httptools')."""
    path, _, query = target.partition("?")
    name, _, port = host.rpartition(":") if host.rfind(":") > host.rfind("]") else (host, "", "")
    return {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
        "REMOTE_ADDR": remote,
        "SERVER_NAME": name,
        "SERVER_PORT": port or ("443" if scheme == "https" else "80"),
        "SERVER_PROTOCOL": version,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def check_host(start_line: tornado.httputil.RequestStartLine, headers: HTTPHeaders) -> None:
    """Refuse a missing (HTTP/1.1), malformed or repeated Host header, as Tornado's own request
    object does: the connection answers 400 and closes (RFC 9112, section 3.2)."""
    host = headers.get("Host")
    if host is None:
        if start_line.version != "HTTP/1.0":
            raise tornado.httputil.HTTPInputError("Missing Host header")
    elif not HOST.fullmatch(host):
        raise tornado.httputil.HTTPInputError(f"Invalid Host header: {host!r}")


def error_response(status: int, request_id: str) -> WSGIResponse:
    """A whole response (status line, headers, body) carrying the API's error envelope."""
    body = json.dumps(error_envelope(status, request_id)).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("X-Request-ID", request_id),
        ("X-Served-By", REPLICA),
    ]
    return f"{status} {HTTPStatus(status).phrase}", headers, body


class WorkerPool:
    """APP_THREADS threads that run the WSGI app, one job per request, never on the IOLoop.

    What `concurrent.futures.ThreadPoolExecutor` does, without what this host never uses: a
    Future per job (and its Condition), two locks and an idle-semaphore check per submit. A
    request needs none of it: its job hands the response back with IOLoop.add_callback.
    Measured here on the host alone (examples/hello, wrk with 32 keep-alive connections, five
    alternating runs), process CPU per request: 0.52 ms with the executor, 0.47 ms with this
    pool, and about 10 % more requests/s.
    """

    def __init__(self, threads: int) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self._work, name=f"wsgi-{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self.threads:
            thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue one job for the next free thread (safe from any thread)."""
        self.jobs.put(job)

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                job()
            except Exception:
                log.exception("a pool job failed")

    def shutdown(self, timeout: float | None = None) -> None:
        """Let the threads finish what is queued, then stop them; blocks until they have, or
        for at most `timeout` seconds (a thread still inside the app then stays behind: the
        threads are daemons and do not keep the process alive)."""
        for _ in self.threads:
            self.jobs.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self.threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        busy = sum(thread.is_alive() for thread in self.threads)
        if busy:
            log.warning("pool threads still inside the app at exit", extra={"threads": busy})


class Inbox:
    """Calls from pool threads to the IOLoop, with one wake-up for all that queue meanwhile.

    IOLoop.add_callback wakes the loop with a write to its self-pipe on every call: a system
    call per response, and a read and a loop pass on the other side. A response that finishes
    while the loop is busy waits here and goes out in the pass already scheduled. Measured here
    (the host alone on a small Flask app, wrk with 32 connections, process CPU per request, five
    alternating pairs): 228 us with a wake-up per response, 212 us with this.
    """

    def __init__(self, loop: IOLoop) -> None:
        self.loop = loop
        self.calls: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self.scheduled = False  # a run is scheduled and has not started emptying the deque

    def put(self, call: Callable[..., None], *args: Any) -> None:
        """Run call(*args) on the IOLoop, after those put before it (safe from any thread)."""
        self.calls.append((call, args))
        if not self.scheduled:
            # Two threads may both get here; the second run then finds the deque empty.
            self.scheduled = True
            self.loop.add_callback(self.run)

    def run(self) -> None:
        # Cleared before emptying: a call put from now on schedules a run of its own.
        self.scheduled = False
        calls = self.calls
        while calls:
            call, args = calls.popleft()
            try:
                call(*args)
            except Exception:
                log.exception("a response could not be handed to its connection")


class WSGIPath(tornado.httputil.HTTPServerConnectionDelegate):
    """The host's request router: /healthz, /metrics, /ws and /socket.io/ to Tornado's web app,
    the rest to WSGI.

    Every request that is not one of the native paths goes straight from the HTTP connection
    to one pool job, with no `tornado.web.RequestHandler` in between. A handler (Tornado's
    `FallbackHandler` route, or `RuleRouter`'s adapter for a plain callable) would parse form
    and multipart bodies before Flask parses them again, and a body Tornado cannot parse would
    get its HTML 400 page instead of the API's JSON error. Measured here on the host alone
    (wrk, 32 keep-alive connections, three alternating runs), process CPU per request: a bare
    WSGI app 0.78 ms through a FallbackHandler with an access line per request, 0.47 ms on this
    path with the pool below and the access line off; the demo app's /bench/json 1.33-1.43 ms
    before, 0.93 ms after (its own lighter middleware included).
    """

    def __init__(
        self,
        wsgi_app: Callable[..., Any],
        pool: WorkerPool,
        native: tornado.web.Application,
        max_body: int,
        access_lines: bool,
        metrics: RequestMetrics | None = None,
    ) -> None:
        self.wsgi_app = wsgi_app
        self.metrics = metrics
        self.pool = pool
        self.native = native
        self.max_body = max_body
        self.access_lines = access_lines
        self.inbox: Inbox | None = None  # made on the IOLoop, at the first request
        self.in_flight = 0  # requests inside the pool; read and written on the IOLoop only
        self.last_activity = 0.0  # monotonic time a request last started or finished

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        return WSGIExchange(self, server_conn, request_conn)

    def run_app(
        self, environ: dict[str, Any], received: float, exchange: WSGIExchange, loop: IOLoop
    ) -> None:
        """Call the app on a pool thread and hand its response to the IOLoop.

        Call, iteration and close happen in this one job (Tornado's own container hops to the
        pool three times a request), and no exception escapes it: with an executor, Tornado
        6.6 would otherwise send nothing and leave the client (nginx) waiting for its timeout.
        An exception before anything was sent becomes the 500 envelope; one while a body
        streams is logged and closes the connection (the client sees a truncated response).
        `received` (monotonic) is when the request was queued, so its latency counts the wait,
        and a streamed response's the whole stream.

        The request's id (its X-Request-ID when sane, else a new one) is `current_request_id`
        for the whole call, so any app's log lines carry it, and a response without
        X-Request-ID or X-Served-By gets them here (the same id, REPLICA).
        """
        seen: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
            seen["status"], seen["headers"] = status, headers
            return seen.setdefault("written", []).append

        rid = sane_request_id(environ.get("HTTP_X_REQUEST_ID")) or new_request_id()
        token = current_request_id.set(rid)
        result: Iterable[bytes] | None = None
        streamed = False
        try:
            result = self.wsgi_app(environ, start_response)
            chunks: Iterator[bytes] | None = None
            if type(result) is list or type(result) is tuple:
                body: Any = b"".join(result)
            else:
                chunks = iter(result)
                body = next(chunks, END)  # start_response may come with the first chunk
                if body is END:
                    body, chunks = b"", None
            if seen.get("written"):  # the legacy write() callable
                body = b"".join([*seen["written"], body])
            status, headers = seen["status"], list(seen["headers"])
            # One pass over the headers, to the last of these three the app set.
            length, response_id, served = None, None, False
            for name, value in headers:
                key = name.lower()
                if key == "content-length":
                    length = value
                elif key == "x-request-id":
                    response_id = value
                elif key == "x-served-by":
                    served = True
                else:
                    continue
                if served and response_id is not None and length is not None:
                    break
            if response_id is None:
                headers.append(("X-Request-ID", rid))
                response_id = rid
            if not served:
                headers.append(("X-Served-By", REPLICA))
            # An iterable is whole when its first chunk is all the length it announced.
            if chunks is not None and not (
                length and length.isdigit() and int(length) == len(body)
            ):
                if environ["REQUEST_METHOD"] == "HEAD":
                    body = None  # no body to send, and its length is unknown
                else:
                    body = self.stream(exchange, loop, status, headers, body, chunks)
                    streamed = True
        except Exception:
            log.exception("unhandled exception escaped the WSGI app", extra={"request_id": rid})
            status, headers, body = error_response(500, rid)
            response_id = rid
        finally:
            if hasattr(result, "close"):
                try:
                    result.close()  # type: ignore[union-attr]
                except Exception:
                    log.exception("closing the WSGI response failed")
            current_request_id.reset(token)
        elapsed = time.monotonic() - received
        if self.metrics is not None:
            self.metrics.observe(environ, status, elapsed)
        if self.access_lines:
            access_log.info(
                "request",
                extra={
                    "request_id": response_id,
                    "method": environ.get("REQUEST_METHOD"),
                    "path": environ.get("PATH_INFO"),
                    "status": int(status.split(" ", 1)[0]),
                    "duration_ms": round(elapsed * 1000, 2),
                    "bytes": body if streamed else len(body or b""),
                    "remote_ip": environ.get("REMOTE_ADDR"),
                    "replica": REPLICA,
                },
            )
        if streamed:
            loop.add_callback(exchange.streamed)
        else:  # the inbox exists: the exchange made it before it queued this job
            cast(Inbox, self.inbox).put(exchange.respond, status, headers, body)

    def stream(
        self,
        exchange: WSGIExchange,
        loop: IOLoop,
        status: str,
        headers: list[tuple[str, str]],
        first: bytes,
        chunks: Iterator[bytes],
    ) -> int:
        """Send a body as the app produces it; return how many bytes it produced.

        Runs on the pool thread until the body ends, the connection goes away or the iterator
        raises. Once the headers are handed over, nothing escapes: an error is logged and the
        connection closed, since the client has its status line already.
        """
        if type(first) is not bytes:
            raise TypeError(f"a WSGI body yields bytes, not {type(first).__name__}")
        out = ChunkStream(exchange, loop)
        loop.add_callback(out.start, status, headers, first)
        produced = len(first)
        try:
            for chunk in chunks:
                if type(chunk) is not bytes:
                    raise TypeError(f"a WSGI body yields bytes, not {type(chunk).__name__}")
                if not out.offer(chunk):
                    break  # the client went away: the caller closes the iterable now
                produced += len(chunk)
            else:
                out.end()
        except Exception:
            log.exception("the WSGI response failed after its headers were sent")
            loop.add_callback(out.abort)
        return produced


class ChunkStream:
    """One streamed response body, between its pool thread and the IOLoop.

    The pool thread offers chunks; the IOLoop writes them one write at a time (HTTP1Connection
    keeps only its latest write's future), joining whatever queued meanwhile, and gives their
    slots back when the socket has taken them. The thread waits for a slot before each chunk,
    so a slow client holds the app back instead of the host buffering its body. `closed` (the
    connection went away: the client, an error, the drain) wakes a waiting thread and stops it.
    """

    def __init__(self, exchange: WSGIExchange, loop: IOLoop) -> None:
        self.connection = cast(HTTP1Connection, exchange.connection)
        self.exchange = exchange
        self.loop = loop
        self.slots = threading.Semaphore(STREAM_WINDOW)
        self.done = threading.Event()  # the response ended, one way or another
        self.closed = False  # written on the IOLoop, read by the pool thread
        # The rest only on the IOLoop.
        self.queued: list[bytes] = []
        self.in_write = 0  # offered chunks in the write under way
        self.writing = False
        self.ending = False
        self.close_delimited = False

    # --- the pool thread ----------------------------------------------------------------------

    def offer(self, chunk: bytes) -> bool:
        """Hand one chunk to the IOLoop once a slot is free; False when the stream is over."""
        if not self.slots.acquire(timeout=STREAM_STALL_S):
            log.warning("a streamed response stalled: its client took nothing; closing it")
            self.loop.add_callback(self.abort)
            return False
        if self.closed:
            return False
        self.loop.add_callback(self.push, chunk)
        return True

    def end(self) -> None:
        """The body is complete: finish the response and wait until its last write is done."""
        self.loop.add_callback(self.finish)
        if not self.done.wait(STREAM_STALL_S):
            log.warning("a streamed response stalled: its client took nothing; closing it")
            self.loop.add_callback(self.abort)

    # --- the IOLoop ---------------------------------------------------------------------------

    def start(self, status: str, headers: list[tuple[str, str]], first: bytes) -> None:
        """Send the status line and headers with the first chunk."""
        connection = self.connection
        if connection.stream.closed():  # the client left while the app worked
            self.on_close()
            return
        # After the request was read, a closed connection is reported here only.
        connection.set_close_callback(self.on_close)
        connection.stream.set_nodelay(True)  # each chunk goes out now; finish() resets it
        code, _, reason = status.partition(" ")
        header_obj = tornado.httputil.HTTPHeaders()
        for name, value in headers:
            header_obj.add(name, value)
        start_line = self.exchange.start_line
        if "Content-Length" not in header_obj and start_line and start_line.version != "HTTP/1.1":
            self.close_delimited = True  # HTTP/1.0 has no chunks: the body ends at the close
        self.writing = True
        try:
            future = connection.write_headers(
                tornado.httputil.ResponseStartLine("HTTP/1.1", int(code), reason),
                header_obj,
                chunk=first,
            )
        except Exception:
            log.exception("the streamed response's headers could not be sent")
            self.abort()
            return
        future_add_done_callback(future, self.written)

    def push(self, chunk: bytes) -> None:
        if self.closed:
            return
        self.queued.append(chunk)
        if not self.writing:
            self.write()

    def write(self) -> None:
        chunks, self.queued = self.queued, []
        self.writing, self.in_write = True, len(chunks)
        try:
            future = self.connection.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        except Exception:  # more than its Content-Length: Tornado closed the connection
            log.exception("the streamed response could not be written")
            self.abort()
            return
        future_add_done_callback(future, self.written)

    def written(self, _future: object) -> None:
        self.writing = False
        if self.in_write:
            self.slots.release(self.in_write)
            self.in_write = 0
        if self.closed:
            return
        if self.queued:
            self.write()
        elif self.ending:
            self.finish()

    def finish(self) -> None:
        """The body is complete: end the response once the last write is done."""
        self.ending = True
        if self.writing or self.closed:
            return
        self.closed = True
        try:
            if self.close_delimited:
                self.connection.close()
            else:
                self.connection.finish()
        except Exception:  # fewer bytes than its Content-Length: Tornado closed the connection
            log.exception("the streamed response ended short of its Content-Length")
        self.done.set()

    def abort(self) -> None:
        """Close the connection (the client sees a truncated response) and stop the thread."""
        if self.done.is_set():
            return  # already finished: the connection may serve its next request by now
        self.connection.close()  # clears the close callback: report the close ourselves
        self.on_close()

    def on_close(self) -> None:
        self.closed = True
        self.slots.release()  # wakes the pool thread if it waits for a slot
        self.done.set()


class WSGIExchange(tornado.httputil.HTTPMessageDelegate):
    """One request on a connection: handed to the native app, or run through the WSGI app."""

    def __init__(
        self, path: WSGIPath, server_conn: object, connection: tornado.httputil.HTTPConnection
    ) -> None:
        self.path = path
        self.server_conn = server_conn
        self.connection = connection
        self.native: tornado.httputil.HTTPMessageDelegate | None = None
        self.start_line: tornado.httputil.RequestStartLine | None = None
        self.headers: tornado.httputil.HTTPHeaders | None = None
        self.chunks: list[bytes] = []

    def headers_received(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        start_line = cast(tornado.httputil.RequestStartLine, start_line)
        path = start_line.path.partition("?")[0]
        if path in NATIVE_PATHS or path.startswith(NATIVE_PREFIX):
            self.native = self.path.native.start_request(self.server_conn, self.connection)
            # Tornado's request object copies the client's address and scheme from the
            # connection's context when it is built, here: give it nginx's, then put back the
            # peer's for the connection's next request.
            context = self.connection.context  # type: ignore[attr-defined]
            peer, scheme = context.remote_ip, context.protocol
            context.remote_ip, context.protocol = forwarded(headers, peer, scheme)
            try:
                return self.native.headers_received(start_line, headers)
            finally:
                context.remote_ip, context.protocol = peer, scheme
        check_host(start_line, headers)
        self.start_line, self.headers = start_line, headers
        length = headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.path.max_body:
            self.refuse_too_large(headers)
        return None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.native is not None:
            return self.native.data_received(chunk)
        self.chunks.append(chunk)
        return None

    def finish(self) -> None:
        if self.native is not None:
            self.native.finish()
            return
        environ = self.environ()
        path, loop = self.path, IOLoop.current()
        if path.inbox is None:
            path.inbox = Inbox(loop)
        path.in_flight += 1
        path.last_activity = received = time.monotonic()
        path.pool.submit(partial(path.run_app, environ, received, self, loop))

    def on_connection_close(self) -> None:
        if self.native is not None:
            self.native.on_connection_close()
        self.chunks = []

    def environ(self) -> dict[str, Any]:
        """The WSGI environ (PEP 3333) of this request, its body whole."""
        start_line = cast(tornado.httputil.RequestStartLine, self.start_line)
        headers = cast(tornado.httputil.HTTPHeaders, self.headers)
        context = self.connection.context  # type: ignore[attr-defined]
        remote, scheme = forwarded(headers, context.remote_ip, context.protocol)
        host = headers.get("Host") or "127.0.0.1"
        environ = base_environ(
            start_line.method, start_line.path, start_line.version, host, remote, scheme
        )
        environ["wsgi.input"] = BytesIO(b"".join(self.chunks))
        self.chunks = []
        for key, value in headers.items():
            if key == "Content-Type":
                environ["CONTENT_TYPE"] = value
            elif key == "Content-Length":
                environ["CONTENT_LENGTH"] = value
            else:
                environ["HTTP_" + key.replace("-", "_").upper()] = value
        return environ

    def respond(self, status: str, headers: list[tuple[str, str]], body: bytes | None) -> None:
        """Write the app's whole response; runs on the IOLoop once the pool job is done.

        `body` None: a HEAD answered by a streaming body, whose length is unknown.
        """
        self.path.in_flight -= 1
        self.path.last_activity = time.monotonic()
        code, _, reason = status.partition(" ")
        header_obj = tornado.httputil.HTTPHeaders()
        for name, value in headers:
            header_obj.add(name, value)
        if body is not None and code != "304" and "Content-Length" not in header_obj:
            header_obj["Content-Length"] = str(len(body))
        start_line = tornado.httputil.ResponseStartLine("HTTP/1.1", int(code), reason)
        request_line = cast(tornado.httputil.RequestStartLine, self.start_line)
        if request_line.method == "HEAD" or code == "304":
            body = None  # headers only: Tornado refuses a body here and drops the connection
        try:
            self.connection.write_headers(start_line, header_obj, chunk=body)
            self.connection.finish()
        except Exception:  # e.g. a header with CR or LF, or a body longer than its length
            log.exception("the WSGI response could not be sent")
            self.connection.close()

    def streamed(self) -> None:
        """A streamed response's pool job is over: it no longer counts as in flight."""
        self.path.in_flight -= 1
        self.path.last_activity = time.monotonic()

    def refuse_too_large(self, headers: tornado.httputil.HTTPHeaders) -> None:
        """Answer 413 in the JSON envelope before reading the body, then close the connection.

        Behind nginx this never happens (its client_max_body_size is lower); a direct client
        would otherwise get Tornado's bare 400 once the body passed max_body_size.
        """
        rid = sane_request_id(headers.get("X-Request-ID")) or new_request_id()
        status, response_headers, body = error_response(413, rid)
        head = [f"HTTP/1.1 {status}"]
        head += [f"{name}: {value}" for name, value in response_headers]
        head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
        stream = self.connection.detach()  # type: ignore[attr-defined]
        stream.write("\r\n".join(head).encode("latin-1") + body).add_done_callback(
            lambda _: stream.close()
        )
