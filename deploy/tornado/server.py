"""Tornado host process: one WSGI app in a thread pool, plus native /ws and /healthz.

A request for /healthz or /ws goes to a small tornado.web.Application on the IOLoop; every
other request goes from the HTTP connection to one pool job (WSGIPath), its body read once and
parsed only by the app.

One process per container; scale by containers. Everything here is a server knob read from
the environment (the Flask app reads its own config in create_app):

  HOST (127.0.0.1; the image sets 0.0.0.0)  PORT (8000)
  APP_MODULE ("app:create_app()")           the WSGI app, in gunicorn's "module:callable()" form
  APP_THREADS (16)                           WSGI thread pool size; size DB_POOL_SIZE to match
  MAX_UPLOAD_MB (10)                         request bodies above this (+1 MiB framing) are refused
  IDLE_TIMEOUT (75)                          seconds an idle keep-alive connection is kept; must
                                             exceed nginx's upstream keepalive_timeout (10 s) or
                                             reused connections race with our close: POSTs get 502
  SHUTDOWN_TIMEOUT (20)                      seconds the drain may take; below compose's 30 s grace
  SHUTDOWN_DELAY (0)                         seconds to keep serving after SIGTERM before the drain
                                             (5 on Swarm, whose DNS drops a task 2 s before SIGTERM)
  DATABASE_URL                               postgresql://... → LISTEN for events; else in-process
  CORS_ORIGINS                               extra origins allowed to open /ws
  LOG_LEVEL (INFO), LOG_FORMAT (json|text)
  ACCESS_LOG (0)                             1: one JSON line per request from the host. Off
                                             behind nginx, whose access log is the one of
                                             record; turn it on when the host faces clients
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import queue
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from io import BytesIO
from typing import Any, cast
from urllib.parse import unquote_to_bytes, urlsplit

import tornado.httpserver
import tornado.httputil
import tornado.web
import tornado.websocket
from tornado.ioloop import IOLoop

log = logging.getLogger("host")
access_log = logging.getLogger("access")
REPLICA = socket.gethostname()
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
EVENT_CHANNEL = "app_events"
WSGIResponse = tuple[str, list[tuple[str, str]], bytes]  # status line, headers, whole body
NATIVE_PATHS = frozenset({"/healthz", "/ws"})  # served on the IOLoop; everything else is WSGI
DRAIN_IDLE = 1.0  # seconds without a request before a draining host closes idle connections


def env_int(name: str, default: int) -> int:
    """Read a positive integer setting, failing loudly on nonsense."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    value = int(raw)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any `extra=` fields merged in."""

    RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self.RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def env_flag(name: str) -> bool:
    """Read an on/off setting: 1, true, yes or on mean on; unset means off."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name} must be 0 or 1, got {raw!r}")


def configure_logging() -> None:
    """Log to stdout, JSON by default; Tornado's own logging is off without parse_command_line."""
    handler = logging.StreamHandler(sys.stdout)
    if os.environ.get("LOG_FORMAT", "json").lower() == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        formatter = JsonFormatter()
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())


def load_wsgi_app(spec: str) -> Callable[..., Any]:
    """Import "module:attr" or "module:factory()", the form gunicorn takes."""
    module_name, _, expr = spec.partition(":")
    expr = expr or "application"
    call = expr.endswith("()")
    target: Any = importlib.import_module(module_name)
    for part in expr.removesuffix("()").split("."):
        target = getattr(target, part)
    return target() if call else target


def sane_request_id(environ: dict[str, Any]) -> str:
    """The client's X-Request-ID if it is safe to log and echo, else ""."""
    rid = environ.get("HTTP_X_REQUEST_ID", "")
    return rid if REQUEST_ID.match(rid) else ""


def error_body(status: int, code: str, message: str, request_id: str) -> bytes:
    """The API's error envelope, for the few responses the host writes itself."""
    error = {"status": status, "code": code, "message": message}
    return json.dumps({"error": error, "request_id": request_id}).encode()


def error_response(
    status: int, code: str, request_id: str
) -> tuple[str, list[tuple[str, str]], bytes]:
    """A whole WSGI-style response (status line, headers, body) carrying the error envelope."""
    phrase = HTTPStatus(status).phrase
    body = error_body(status, code, f"{phrase}.", request_id)
    headers = [
        ("Content-Type", "application/json"),
        ("X-Request-ID", request_id),
        ("X-Served-By", REPLICA),
    ]
    return f"{status} {phrase}", headers, body


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
    """The host's request router: /healthz and /ws to Tornado's web app, the rest to WSGI.

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
    ) -> None:
        self.wsgi_app = wsgi_app
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

    def run_app(self, environ: dict[str, Any]) -> WSGIResponse:
        """Call the app on a pool thread; return its status, headers and whole body.

        Call, iteration and close happen in this one job (Tornado's own container hops to the
        pool three times a request), and no exception escapes it: with an executor, Tornado
        6.6 would otherwise send nothing and leave the client (nginx) waiting for its timeout.
        """
        started = time.monotonic()
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
            rid = sane_request_id(environ) or uuid.uuid4().hex
            log.exception("unhandled exception escaped the WSGI app", extra={"request_id": rid})
            status, headers, body = error_response(500, "internal_error", rid)
        finally:
            if hasattr(result, "close"):
                try:
                    result.close()  # type: ignore[union-attr]
                except Exception:
                    log.exception("closing the WSGI response failed")
        if self.access_lines:
            header_map = {k.lower(): v for k, v in headers}
            access_log.info(
                "request",
                extra={
                    "request_id": header_map.get("x-request-id") or sane_request_id(environ),
                    "method": environ.get("REQUEST_METHOD"),
                    "path": environ.get("PATH_INFO"),
                    "status": int(status.split(" ", 1)[0]),
                    "duration_ms": round((time.monotonic() - started) * 1000, 2),
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
        if start_line.path.partition("?")[0] in NATIVE_PATHS:
            self.native = self.path.native.start_request(self.server_conn, self.connection)
            return self.native.headers_received(start_line, headers)
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
        path.last_activity = time.monotonic()
        loop = IOLoop.current()

        def job() -> None:
            response = path.run_app(environ)
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
        rid = headers.get("X-Request-ID", "")
        status, response_headers, body = error_response(
            413, "payload_too_large", rid if REQUEST_ID.match(rid) else uuid.uuid4().hex
        )
        head = [f"HTTP/1.1 {status}"]
        head += [f"{name}: {value}" for name, value in response_headers]
        head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
        stream = self.connection.detach()  # type: ignore[attr-defined]
        stream.write("\r\n".join(head).encode("latin-1") + body).add_done_callback(
            lambda _: stream.close()
        )


class Hub:
    """The open websockets of this process; touched only on the IOLoop thread."""

    def __init__(self) -> None:
        self.sockets: set[EventSocket] = set()

    def broadcast(self, message: str) -> None:
        """Send one event to every client."""
        for ws in list(self.sockets):
            try:
                ws.write_message(message)
            except tornado.websocket.WebSocketClosedError:
                self.sockets.discard(ws)

    def close_all(self) -> None:
        """Close every socket with 1001 Going Away, so clients reconnect elsewhere."""
        for ws in list(self.sockets):
            ws.close(1001, "server shutting down")


class BaseHandler(tornado.web.RequestHandler):
    """Native handlers carry the same identity headers as the WSGI app."""

    def set_default_headers(self) -> None:
        rid = self.request.headers.get("X-Request-ID", "")
        self.request_id = rid if REQUEST_ID.match(rid) else uuid.uuid4().hex
        self.set_header("X-Request-ID", self.request_id)
        self.set_header("X-Served-By", REPLICA)
        self.set_header("Content-Type", "application/json")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        code = "not_found" if status_code == 404 else "http_error"
        self.finish(error_body(status_code, code, self._reason, self.request_id))


class HealthHandler(BaseHandler):
    """Liveness without a pool thread: answers even when every worker is busy."""

    def initialize(self, state: dict[str, bool]) -> None:
        self.state = state

    def get(self) -> None:
        if self.state["draining"]:
            self.set_status(503)
            self.finish({"status": "draining", "replica": REPLICA})
        else:
            self.finish({"status": "ok", "replica": REPLICA})


class EventSocket(tornado.websocket.WebSocketHandler):
    """GET /ws: pushes every `post.created` event; `ping` is answered with `pong`."""

    def initialize(self, hub: Hub, origins: frozenset[str], state: dict[str, bool]) -> None:
        self.hub, self.origins, self.state = hub, origins, state

    def set_default_headers(self) -> None:
        self.set_header("X-Served-By", REPLICA)

    def check_origin(self, origin: str) -> bool:
        return origin in self.origins or super().check_origin(origin)

    def open(self) -> None:
        if self.state["draining"]:
            self.close(1001, "server shutting down")
            return
        self.hub.sockets.add(self)
        self.write_message(json.dumps({"type": "hello", "replica": REPLICA}))

    def on_message(self, message: str | bytes) -> None:
        if message == "ping":
            self.write_message("pong")
            return
        try:
            kind = json.loads(message).get("type")
        except (ValueError, AttributeError):
            kind = None
        if kind == "ping":
            self.write_message(json.dumps({"type": "pong"}))
        else:
            self.write_message(json.dumps({"type": "error", "message": "send ping"}))

    def on_close(self) -> None:
        self.hub.sockets.discard(self)


class PostgresListener:
    """LISTEN on the app's channel with psycopg2 on the IOLoop; reconnects with backoff."""

    def __init__(self, dsn: str, on_event: Callable[[str], None]) -> None:
        self.dsn, self.on_event = dsn, on_event
        self.conn: Any = None
        self.fd: int | None = None
        self.closed = False
        self.connected = asyncio.Event()
        self.lost = asyncio.Event()

    async def run(self) -> None:
        """Connect, listen, and reconnect whenever the database goes away."""
        import psycopg2
        import psycopg2.extensions

        delay = 0.5
        loop = IOLoop.current()
        while not self.closed:
            try:
                # connect() blocks: keep it off the event loop.
                conn = await loop.run_in_executor(None, self._connect, psycopg2)
            except psycopg2.Error as exc:
                log.warning(
                    "event listener cannot connect, retrying",
                    extra={"error": str(exc).strip(), "retry_s": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.5
            self.conn, self.fd = conn, conn.fileno()
            self.lost.clear()
            loop.add_handler(self.fd, self._on_readable, IOLoop.READ)
            self.connected.set()
            log.info("event listener connected", extra={"channel": EVENT_CHANNEL})
            await self.lost.wait()
            self.connected.clear()
            if not self.closed:
                log.warning("event listener lost its connection, reconnecting")

    def _connect(self, psycopg2: Any) -> Any:
        # TCP keepalives notice a silently vanished server within about 20 s.
        conn = psycopg2.connect(
            self.dsn,
            connect_timeout=3,
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=2,
        )
        conn.set_isolation_level(0)  # autocommit: LISTEN takes effect at once
        with conn.cursor() as cur:
            cur.execute(f"LISTEN {EVENT_CHANNEL}")
        return conn

    def _on_readable(self, fd: int, events: int) -> None:
        try:
            self.conn.poll()
        except Exception as exc:
            log.warning("event listener poll failed", extra={"error": str(exc).strip()})
            self._drop()
            return
        while self.conn.notifies:
            self.on_event(self.conn.notifies.pop(0).payload)

    def _drop(self) -> None:
        """Unregister and close the connection, and wake run() to reconnect."""
        # Unregister first and by the saved number: a failed poll() has already closed the
        # socket, and a new HTTP connection may get the same fd number at any moment.
        if self.fd is not None:
            IOLoop.current().remove_handler(self.fd)
            self.fd = None
        if self.conn is not None and not self.conn.closed:
            self.conn.close()
        self.lost.set()

    def close(self) -> None:
        self.closed = True
        self._drop()


def listener_dsn(database_url: str) -> str | None:
    """The libpq form of a SQLAlchemy Postgres URL, or None for other databases."""
    scheme = urlsplit(database_url).scheme
    if scheme.split("+")[0] not in ("postgresql", "postgres"):
        return None
    return "postgresql" + database_url[len(scheme) :]


def subscribe_in_process(wsgi_app: Any, on_event: Callable[[str], None]) -> bool:
    """Without Postgres, take events straight from the app's in-process bus, if it has one."""
    bus = getattr(wsgi_app, "extensions", {}).get("events")
    if bus is None or not hasattr(bus, "subscribe"):
        return False
    loop = IOLoop.current()
    # The bus calls us on a pool thread; add_callback is the one thread-safe IOLoop method.
    bus.subscribe(lambda event: loop.add_callback(on_event, json.dumps(event)))
    return True


def log_native_request(handler: tornado.web.RequestHandler) -> None:
    """The access line of a native request (/healthz, /ws), when ACCESS_LOG is on."""
    access_log.info(
        "request",
        extra={
            "request_id": getattr(handler, "request_id", ""),
            "method": handler.request.method,
            "path": handler.request.path,
            "status": handler.get_status(),
            "duration_ms": round(handler.request.request_time() * 1000, 2),
            "remote_ip": handler.request.remote_ip,
            "replica": REPLICA,
        },
    )


async def drain(
    server: tornado.httpserver.HTTPServer,
    wsgi: WSGIPath,
    hub: Hub,
    state: dict[str, bool],
    timeout: float,
) -> None:
    """Stop accepting, finish requests in flight, then close the idle keep-alive connections."""
    state["draining"] = True
    server.stop()  # new connections are refused: nginx retries those on another replica
    # Requests that still arrive on kept-alive connections get `Connection: close`.
    server.conn_params.no_keep_alive = True
    hub.close_all()
    deadline = time.monotonic() + timeout
    # Done when nothing is in flight and no request has come for DRAIN_IDLE: by then nginx has
    # benched this replica (its first refused connection does that, max_fails=1) or sends it
    # nothing, and it drops a cached connection the moment we close it. Waiting for nginx's own
    # keepalive_timeout instead (10 s) would keep this address alive past the bench, and nginx
    # would then try it after it vanished: a 1 s connect timeout, and a 502 if its DNS refresh
    # lands meanwhile. HTTPServer keeps its open connections in `_connections`.
    while getattr(server, "_connections", None) and time.monotonic() < deadline:
        quiet = time.monotonic() - wsgi.last_activity
        if wsgi.in_flight == 0 and quiet >= DRAIN_IDLE:
            break
        await asyncio.sleep(0.05)
    if wsgi.in_flight:
        log.warning("drain timed out", extra={"in_flight": wsgi.in_flight})
    await server.close_all_connections()


async def main() -> None:
    configure_logging()
    host = os.environ.get("HOST", "127.0.0.1")
    port = env_int("PORT", 8000)
    threads = env_int("APP_THREADS", 16)
    max_body = env_int("MAX_UPLOAD_MB", 10) * 1024 * 1024 + 1024 * 1024
    shutdown_timeout = float(env_int("SHUTDOWN_TIMEOUT", 20))
    shutdown_delay = float(os.environ.get("SHUTDOWN_DELAY", "0") or 0)
    access_lines = env_flag("ACCESS_LOG")
    origins = frozenset(
        o.strip() for o in os.environ.get("CORS_ORIGINS", "").split(",") if o.strip()
    )

    wsgi_app = load_wsgi_app(os.environ.get("APP_MODULE", "app:create_app()"))
    pool = WorkerPool(threads)
    hub = Hub()
    state = {"draining": False}
    native = tornado.web.Application(
        [
            (r"/healthz", HealthHandler, {"state": state}),
            (r"/ws", EventSocket, {"hub": hub, "origins": origins, "state": state}),
        ],
        # Pings keep idle sockets alive through nginx's proxy_read_timeout and find dead peers.
        websocket_ping_interval=20,
        websocket_ping_timeout=30,
        log_function=log_native_request if access_lines else lambda handler: None,
    )
    wsgi = WSGIPath(wsgi_app, pool, native, max_body, access_lines)
    # xheaders: the one layer that trusts proxy headers (nginx overwrites all of them).
    server = tornado.httpserver.HTTPServer(
        wsgi,
        xheaders=True,
        max_body_size=max_body,
        idle_connection_timeout=env_int("IDLE_TIMEOUT", 75),
        body_timeout=60,
    )
    server.listen(port, address=host)

    listener = None
    dsn = listener_dsn(os.environ.get("DATABASE_URL", ""))
    if dsn:
        listener = PostgresListener(dsn, hub.broadcast)
        listener_task = asyncio.create_task(listener.run())
    elif not subscribe_in_process(wsgi_app, hub.broadcast):
        log.info("no event source: /ws sends only hello and pong")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "serving",
        extra={"address": f"http://{host}:{port}", "threads": threads, "replica": REPLICA},
    )
    await stop.wait()

    if shutdown_delay:
        # Keep serving while the orchestrator's DNS forgets this replica (Swarm removes a task
        # from DNS 2 s before SIGTERM; nginx re-resolves every 5 s), then drain.
        log.info("serving on before draining", extra={"delay_s": shutdown_delay})
        await asyncio.sleep(shutdown_delay)
    log.info("draining", extra={"timeout_s": shutdown_timeout})
    await drain(server, wsgi, hub, state, shutdown_timeout)
    if listener is not None:
        listener.close()
        listener_task.cancel()
    # Requests are done; wait for nothing else in the pool (e.g. a stray background job).
    await loop.run_in_executor(None, pool.shutdown)
    log.info("stopped")


if __name__ == "__main__":
    asyncio.run(main())
