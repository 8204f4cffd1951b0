"""The realtime side: native /ws websockets and the events they carry.

Events come from Postgres (LISTEN on the app's channel, so a post created on any replica reaches
every replica's sockets) or, without Postgres, from the app's in-process bus.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import tornado.websocket
from tornado.ioloop import IOLoop

from .contract import EVENT_CHANNEL, listen_dsn
from .wsgi import REPLICA

log = logging.getLogger("host")


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

    def __init__(self, dsn: str, channel: str, on_event: Callable[[str], None]) -> None:
        self.dsn, self.channel, self.on_event = dsn, channel, on_event
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
            log.info("event listener connected", extra={"channel": self.channel})
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
            cur.execute(f"LISTEN {self.channel}")
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


def listen_target(wsgi_app: Any) -> tuple[str, str] | None:
    """Where to LISTEN for events: (libpq address, channel), or None without Postgres.

    The demo app says so itself (`app.events.listen_target`, from its own database URL and the
    shared channel). Another app that NOTIFYs on the shared channel is heard on DATABASE_URL.
    """
    bus = getattr(wsgi_app, "extensions", {}).get("events")
    if bus is not None and hasattr(bus, "listen_target"):
        return bus.listen_target(wsgi_app)
    dsn = listen_dsn(os.environ.get("DATABASE_URL"))
    return (dsn, EVENT_CHANNEL) if dsn else None


def subscribe_in_process(wsgi_app: Any, on_event: Callable[[str], None]) -> bool:
    """Without Postgres, take events straight from the app's in-process bus, if it has one."""
    bus = getattr(wsgi_app, "extensions", {}).get("events")
    if bus is None or not hasattr(bus, "subscribe"):
        return False
    loop = IOLoop.current()
    # The bus calls us on a pool thread; add_callback is the one thread-safe IOLoop method.
    bus.subscribe(lambda event: loop.add_callback(on_event, json.dumps(event)))
    return True
