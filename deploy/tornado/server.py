"""Tornado host process: one WSGI app in a thread pool, plus native /ws and /healthz.

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
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import tornado.httpserver
import tornado.httputil
import tornado.web
import tornado.websocket
import tornado.wsgi
from tornado.ioloop import IOLoop

log = logging.getLogger("host")
access_log = logging.getLogger("access")
REPLICA = socket.gethostname()
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
EVENT_CHANNEL = "app_events"
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


class HostContainer(tornado.wsgi.WSGIContainer):
    """Tornado's WSGIContainer, with the whole WSGI call in one executor job per request.

    The stock handle_request hops to the pool three times per request (the call, each body
    chunk, the end of the iterator); doing call, iteration and close in one job saved about
    0.2 ms of CPU per request here (0.51 to 0.58 ms instead of 0.74 to 0.78 ms for a trivial
    app, on a busy machine). The job also logs one JSON access line and never lets an
    exception escape: with an executor, Tornado 6.6 would otherwise send nothing and leave the
    client (nginx) waiting for its timeout.
    """

    in_flight = 0  # requests inside the pool; read and written on the IOLoop thread only
    last_activity = 0.0  # monotonic time a request last started or finished

    async def handle_request(self, request: tornado.httputil.HTTPServerRequest) -> None:
        self.in_flight += 1
        self.last_activity = time.monotonic()
        try:
            status, headers, body = await IOLoop.current().run_in_executor(
                self.executor, self.run_app, self.environ(request)
            )
        finally:
            self.in_flight -= 1
            self.last_activity = time.monotonic()
        code, reason = status.split(" ", 1)
        header_obj = tornado.httputil.HTTPHeaders()
        for name, value in headers:
            header_obj.add(name, value)
        if code != "304" and "Content-Length" not in header_obj:
            header_obj["Content-Length"] = str(len(body))
        connection = request.connection
        if connection is None:  # typed Optional; always set for a server request
            return
        start_line = tornado.httputil.ResponseStartLine("HTTP/1.1", int(code), reason)
        connection.write_headers(start_line, header_obj, chunk=body)
        connection.finish()

    def run_app(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        """Call the app on a pool thread; return its status, headers and whole body."""
        started = time.monotonic()
        seen: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
            seen["status"], seen["headers"] = status, headers
            return seen.setdefault("written", []).append

        result: Iterable[bytes] | None = None
        try:
            result = self.wsgi_application(environ, start_response)
            body = b"".join([*seen.get("written", []), *result])
            status, headers = seen["status"], list(seen["headers"])
        except Exception:
            rid = sane_request_id(environ) or uuid.uuid4().hex
            log.exception("unhandled exception escaped the WSGI app", extra={"request_id": rid})
            body = error_body(500, "internal_error", "Internal server error.", rid)
            status = "500 Internal Server Error"
            headers = [
                ("Content-Type", "application/json"),
                ("X-Request-ID", rid),
                ("X-Served-By", REPLICA),
            ]
        finally:
            if hasattr(result, "close"):
                try:
                    result.close()  # type: ignore[union-attr]
                except Exception:
                    log.exception("closing the WSGI response failed")
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


async def drain(
    server: tornado.httpserver.HTTPServer,
    container: HostContainer,
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
        quiet = time.monotonic() - container.last_activity
        if container.in_flight == 0 and quiet >= DRAIN_IDLE:
            break
        await asyncio.sleep(0.05)
    if container.in_flight:
        log.warning("drain timed out", extra={"in_flight": container.in_flight})
    await server.close_all_connections()


async def main() -> None:
    configure_logging()
    host = os.environ.get("HOST", "127.0.0.1")
    port = env_int("PORT", 8000)
    threads = env_int("APP_THREADS", 16)
    max_body = env_int("MAX_UPLOAD_MB", 10) * 1024 * 1024 + 1024 * 1024
    shutdown_timeout = float(env_int("SHUTDOWN_TIMEOUT", 20))
    shutdown_delay = float(os.environ.get("SHUTDOWN_DELAY", "0") or 0)
    origins = frozenset(
        o.strip() for o in os.environ.get("CORS_ORIGINS", "").split(",") if o.strip()
    )

    wsgi_app = load_wsgi_app(os.environ.get("APP_MODULE", "app:create_app()"))
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsgi")
    container = HostContainer(wsgi_app, executor=executor)
    hub = Hub()
    state = {"draining": False}
    application = tornado.web.Application(
        [
            (r"/healthz", HealthHandler, {"state": state}),
            (r"/ws", EventSocket, {"hub": hub, "origins": origins, "state": state}),
            (r".*", tornado.web.FallbackHandler, {"fallback": container}),
        ],
        # Pings keep idle sockets alive through nginx's proxy_read_timeout and find dead peers.
        websocket_ping_interval=20,
        websocket_ping_timeout=30,
        log_function=lambda handler: access_log.info(
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
        ),
    )
    # xheaders: the one layer that trusts proxy headers (nginx overwrites all of them).
    server = tornado.httpserver.HTTPServer(
        application,
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
    await drain(server, container, hub, state, shutdown_timeout)
    if listener is not None:
        listener.close()
        listener_task.cancel()
    # Requests are done; wait for nothing else in the pool (e.g. a stray background job).
    await loop.run_in_executor(None, executor.shutdown, True)
    log.info("stopped")


if __name__ == "__main__":
    asyncio.run(main())
