"""The Tornado host process: one WSGI app on a thread pool, plus native /healthz, /metrics, /ws
and /socket.io/.

One process per container; scale by containers. Every connection starts on the front
(flaskstack/front.py), which parses ordinary requests with httptools and hands any other
connection to Tornado's HTTP/1 code. A request for /healthz, /metrics, /ws or /socket.io/ goes
to a small tornado.web.Application on the IOLoop; every other request goes from the connection
to one pool job (flaskstack/wsgi.py), its body read once and parsed only by the app. Websockets
and their events are flaskstack/realtime.py, socket.io flaskstack/sio.py, the metrics
flaskstack/metrics.py; the knobs, read once from the environment, flaskstack/settings.py.

This file is the process: it builds those parts, serves, and drains on SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

import socketio
import tornado.httpserver
import tornado.web

from flaskstack import metrics
from flaskstack import sio as socketio_host
from flaskstack.contract import error_envelope, new_request_id, sane_request_id
from flaskstack.front import BODY_TIMEOUT_S, Front
from flaskstack.realtime import (
    EventSocket,
    Hub,
    PostgresListener,
    listen_target,
    subscribe_in_process,
)
from flaskstack.settings import Settings, configure_logging, load_wsgi_app
from flaskstack.wsgi import REPLICA, WorkerPool, WSGIPath

log = logging.getLogger("host")
access_log = logging.getLogger("access")
DRAIN_IDLE = 1.0  # seconds without a request before a draining host closes idle connections
POOL_STOP_S = 2.0  # seconds the pool threads get to leave the app once connections are closed


class BaseHandler(tornado.web.RequestHandler):
    """Native handlers carry the same identity headers as the WSGI app."""

    def set_default_headers(self) -> None:
        rid = sane_request_id(self.request.headers.get("X-Request-ID"))
        self.request_id = rid or new_request_id()
        self.set_header("X-Request-ID", self.request_id)
        self.set_header("X-Served-By", REPLICA)
        self.set_header("Content-Type", "application/json")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish(error_envelope(status_code, self.request_id))


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


class MetricsHandler(BaseHandler):
    """GET /metrics for Prometheus, on the IOLoop: a busy pool never delays a scrape."""

    def initialize(self, registry: metrics.CollectorRegistry) -> None:
        self.registry = registry

    def get(self) -> None:
        accept = self.request.headers.get("Accept", "")
        body, content_type = metrics.exposition(self.registry, accept)
        self.set_header("Content-Type", content_type)
        self.finish(body)


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


class TornadoListener:
    """HTTP_FRONT=tornado: Tornado's HTTPServer listens itself, as the front's stand-in."""

    def __init__(self, server: tornado.httpserver.HTTPServer) -> None:
        self.server = server

    def stop(self) -> None:
        self.server.stop()
        # Requests that still arrive on kept-alive connections get `Connection: close`.
        self.server.conn_params.no_keep_alive = True

    def open_connections(self) -> int:
        return len(self.server._connections)

    async def close_all(self) -> None:
        await self.server.close_all_connections()


async def drain(
    server: Front | TornadoListener,
    wsgi: WSGIPath,
    hub: Hub,
    sio: socketio.AsyncServer,
    state: dict[str, bool],
    timeout: float,
) -> None:
    """Stop accepting, finish requests in flight, then close the idle keep-alive connections."""
    state["draining"] = True
    # New connections are refused (nginx retries those on another replica), and requests that
    # still arrive on kept-alive connections get `Connection: close`.
    server.stop()
    hub.close_all()
    await socketio_host.close_all(sio)
    deadline = time.monotonic() + timeout
    # Done when nothing is in flight and no request has come for DRAIN_IDLE: by then nginx has
    # benched this replica (its first refused connection does that, max_fails=1) or sends it
    # nothing, and it drops a cached connection the moment we close it. Waiting for nginx's own
    # keepalive_timeout instead (10 s) would keep this address alive past the bench, and nginx
    # would then try it after it vanished: a 1 s connect timeout, and a 502 if its DNS refresh
    # lands meanwhile.
    while server.open_connections() and time.monotonic() < deadline:
        quiet = time.monotonic() - wsgi.last_activity
        if wsgi.in_flight == 0 and quiet >= DRAIN_IDLE:
            break
        await asyncio.sleep(0.05)
    if wsgi.in_flight:
        log.warning("drain timed out", extra={"in_flight": wsgi.in_flight})
    await server.close_all()


async def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings)
    wsgi_app = load_wsgi_app(settings.app_module)
    pool = WorkerPool(settings.threads)
    hub = Hub()
    state = {"draining": False}
    target = listen_target(wsgi_app)
    notifier = socketio_host.Notifier(*target) if target else None
    channel = target[1] if target else "in-process"
    sio, sio_handler = socketio_host.build(
        wsgi_app, settings.origins, state, notifier, channel, pool.submit
    )
    native = tornado.web.Application(
        [
            (r"/healthz", HealthHandler, {"state": state}),
            (r"/metrics", MetricsHandler, {"registry": metrics.REGISTRY}),
            (r"/ws", EventSocket, {"hub": hub, "origins": settings.origins, "state": state}),
            (r"/socket\.io/", sio_handler),
        ],
        # Pings keep idle /ws sockets alive through nginx's proxy_read_timeout and find dead
        # peers (socket.io sessions run engine.io's own pings).
        websocket_ping_interval=20,
        websocket_ping_timeout=20,
        # Clients send pings and socket.io control packets; a bigger frame closes that one
        # connection with 1009 (message too big).
        websocket_max_message_size=socketio_host.MAX_CLIENT_PACKET,
        log_function=log_native_request if settings.access_log else lambda handler: None,
    )
    metrics.keep_flask_routes()
    counted = metrics.RequestMetrics(metrics.REGISTRY)
    wsgi = WSGIPath(wsgi_app, pool, native, settings.max_body, settings.access_log, counted)
    # The one layer that trusts proxy headers (nginx overwrites all of them): WSGIPath reads the
    # client's address and scheme from them (wsgi.forwarded), for the app and the native paths.
    tornado_server = tornado.httpserver.HTTPServer(
        wsgi,
        max_body_size=settings.max_body,
        idle_connection_timeout=settings.idle_timeout,
        body_timeout=BODY_TIMEOUT_S,
    )
    server: Front | TornadoListener
    if settings.front == "httptools":
        server = Front(wsgi, tornado_server, settings.max_body, settings.idle_timeout)
        await server.listen(settings.port, settings.host)
    else:
        tornado_server.listen(settings.port, address=settings.host)
        server = TornadoListener(tornado_server)

    listener = None
    fanout = socketio_host.Fanout(hub, sio)
    if target:
        listener = PostgresListener(*target, fanout)
        listener_task = asyncio.create_task(listener.run())
    elif not subscribe_in_process(wsgi_app, fanout):
        log.info("no event source: /ws and socket.io send no events")
    metrics.REGISTRY.register(
        metrics.HostCollector(
            threads=settings.threads,
            in_flight=lambda: wsgi.in_flight,
            waiting=pool.jobs.qsize,
            pools=lambda: metrics.sqlalchemy_pools(wsgi_app),
            clients=lambda: {"ws": len(hub.sockets), "socketio": len(sio.eio.sockets)},
            listener_up=lambda: listener.connected.is_set() if listener else None,
            draining=lambda: state["draining"],
        )
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "serving",
        extra={
            "address": f"http://{settings.host}:{settings.port}",
            "threads": settings.threads,
            "front": settings.front,
            "replica": REPLICA,
        },
    )
    await stop.wait()

    if settings.shutdown_delay:
        # Keep serving while the orchestrator's DNS forgets this replica (Swarm removes a task
        # from DNS 2 s before SIGTERM; nginx re-resolves every 5 s), then drain.
        log.info("serving on before draining", extra={"delay_s": settings.shutdown_delay})
        await asyncio.sleep(settings.shutdown_delay)
    log.info("draining", extra={"timeout_s": settings.shutdown_timeout})
    await drain(server, wsgi, hub, sio, state, settings.shutdown_timeout)
    if listener is not None:
        listener.close()
        listener_task.cancel()
    # Requests are done; wait for nothing else in the pool (e.g. a stray background job). A
    # stream cut at the deadline ends when its app yields again; one that never does (a
    # generator blocked on an event that does not come) is not waited for past POOL_STOP_S.
    await loop.run_in_executor(None, pool.shutdown, POOL_STOP_S)
    log.info("stopped")


if __name__ == "__main__":
    asyncio.run(main())
