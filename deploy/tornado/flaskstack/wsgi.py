"""The WSGI path: each request from the HTTP connection to one pool job and back.

A request for a native path (/healthz, /metrics, /ws, /socket.io/) is handed to the host's small
tornado.web application instead; everything else runs the WSGI app on a pool thread, never on
the IOLoop.
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
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from io import BytesIO
from typing import Any, cast
from urllib.parse import unquote_to_bytes

import tornado.httputil
import tornado.web
from tornado.httputil import HTTPHeaders
from tornado.ioloop import IOLoop

from .contract import error_envelope, new_request_id, sane_request_id
from .metrics import RequestMetrics

log = logging.getLogger("host")
access_log = logging.getLogger("access")
REPLICA = socket.gethostname()
WSGIResponse = tuple[str, list[tuple[str, str]], bytes]  # status line, headers, whole body
# Served on the IOLoop; everything else is WSGI.
NATIVE_PATHS = frozenset({"/healthz", "/metrics", "/ws"})
NATIVE_PREFIX = "/socket.io/"  # socket.io's engine, on the IOLoop too
# RFC 3986's host (an IP literal, or reg-name characters) and an optional port. A comma is left
# out on purpose: repeated Host headers arrive joined by one, and RFC 9112 wants a 400 for them.
HOST = re.compile(r"(?:\[[0-9A-Za-z:.%]+\]|[A-Za-z0-9\-._~%!$&'()*+;=]*)(?::[0-9]*)?")


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

    def shutdown(self) -> None:
        """Let the threads finish what is queued, then stop them; blocks until they have."""
        for _ in self.threads:
            self.jobs.put(None)
        for thread in self.threads:
            thread.join()


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
        self.in_flight = 0  # requests inside the pool; read and written on the IOLoop only
        self.last_activity = 0.0  # monotonic time a request last started or finished

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        return WSGIExchange(self, server_conn, request_conn)

    def run_app(self, environ: dict[str, Any], received: float) -> WSGIResponse:
        """Call the app on a pool thread; return its status, headers and whole body.

        Call, iteration and close happen in this one job (Tornado's own container hops to the
        pool three times a request), and no exception escapes it: with an executor, Tornado
        6.6 would otherwise send nothing and leave the client (nginx) waiting for its timeout.
        `received` (monotonic) is when the request was queued, so its latency counts the wait.
        """
        seen: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
            seen["status"], seen["headers"] = status, headers
            return seen.setdefault("written", []).append

        result: Iterable[bytes] | None = None
        try:
            result = self.wsgi_app(environ, start_response)
            body = b"".join([*seen.get("written", []), *result])
            status, headers = seen["status"], list(seen["headers"])
        except Exception:
            rid = sane_request_id(environ.get("HTTP_X_REQUEST_ID")) or new_request_id()
            log.exception("unhandled exception escaped the WSGI app", extra={"request_id": rid})
            status, headers, body = error_response(500, rid)
        finally:
            if hasattr(result, "close"):
                try:
                    result.close()  # type: ignore[union-attr]
                except Exception:
                    log.exception("closing the WSGI response failed")
        if self.metrics is not None:
            self.metrics.observe(environ, status, time.monotonic() - received)
        if self.access_lines:
            header_map = {k.lower(): v for k, v in headers}
            access_log.info(
                "request",
                extra={
                    "request_id": header_map.get("x-request-id")
                    or sane_request_id(environ.get("HTTP_X_REQUEST_ID")),
                    "method": environ.get("REQUEST_METHOD"),
                    "path": environ.get("PATH_INFO"),
                    "status": int(status.split(" ", 1)[0]),
                    "duration_ms": round((time.monotonic() - received) * 1000, 2),
                    "bytes": len(body),
                    "remote_ip": environ.get("REMOTE_ADDR"),
                    "replica": REPLICA,
                },
            )
        return status, headers, body


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
            return self.native.headers_received(start_line, headers)
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
        # The environ is built here, on the IOLoop: the proxy adapter (xheaders) undoes the
        # client address it applied to the connection as soon as this method returns.
        environ = self.environ()
        path = self.path
        path.in_flight += 1
        path.last_activity = received = time.monotonic()
        loop = IOLoop.current()

        def job() -> None:
            response = path.run_app(environ, received)
            loop.add_callback(self.respond, *response)  # the one thread-safe IOLoop call

        path.pool.submit(job)

    def on_connection_close(self) -> None:
        if self.native is not None:
            self.native.on_connection_close()
        self.chunks = []

    def environ(self) -> dict[str, Any]:
        """The WSGI environ (PEP 3333) of this request, its body whole."""
        start_line = cast(tornado.httputil.RequestStartLine, self.start_line)
        headers = cast(tornado.httputil.HTTPHeaders, self.headers)
        context = self.connection.context  # type: ignore[attr-defined]
        path, _, query = start_line.path.partition("?")
        host = headers.get("Host") or "127.0.0.1"
        name, _, port = (
            host.rpartition(":") if host.rfind(":") > host.rfind("]") else (host, "", "")
        )
        scheme = context.protocol
        environ: dict[str, Any] = {
            "REQUEST_METHOD": start_line.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "REMOTE_ADDR": context.remote_ip,
            "SERVER_NAME": name,
            "SERVER_PORT": port or ("443" if scheme == "https" else "80"),
            "SERVER_PROTOCOL": start_line.version,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scheme,
            "wsgi.input": BytesIO(b"".join(self.chunks)),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        self.chunks = []
        for key, value in headers.items():
            if key == "Content-Type":
                environ["CONTENT_TYPE"] = value
            elif key == "Content-Length":
                environ["CONTENT_LENGTH"] = value
            else:
                environ["HTTP_" + key.replace("-", "_").upper()] = value
        return environ

    def respond(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        """Write the app's response; runs on the IOLoop once the pool job is done."""
        self.path.in_flight -= 1
        self.path.last_activity = time.monotonic()
        code, _, reason = status.partition(" ")
        header_obj = tornado.httputil.HTTPHeaders()
        for name, value in headers:
            header_obj.add(name, value)
        if code != "304" and "Content-Length" not in header_obj:
            header_obj["Content-Length"] = str(len(body))
        start_line = tornado.httputil.ResponseStartLine("HTTP/1.1", int(code), reason)
        self.connection.write_headers(start_line, header_obj, chunk=body)
        self.connection.finish()

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
