"""The realtime side: native /ws websockets and the events they carry.

Events come from Postgres (LISTEN on the app's channel, so a post created on any replica reaches
every replica's sockets) or, without Postgres, from the app's in-process bus.

A broadcast is framed once and the same bytes go to every client's stream: no task, no
encoding and no frame per recipient (socket.io's broadcasts take the same path, sio.py). The
frames of one IOLoop iteration are written to each client together, at its end (Outbox): when
events come faster than they are sent, several reach a client in one write.
What a client leaves unread is capped (MAX_CLIENT_BUFFER): past it the client is cut off, so a
slow reader never holds memory or anyone else's events, and it reconnects like any client
whose connection dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
from collections.abc import Callable
from typing import Any

import tornado.websocket
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError

from .contract import EVENT_CHANNEL, listen_dsn
from .wsgi import REPLICA

log = logging.getLogger("host")
# Bytes a websocket client may leave unread (a few thousand events) before it is cut off.
MAX_CLIENT_BUFFER = 1024 * 1024


def text_frame(message: str) -> bytes:
    """One websocket text frame as a server sends it (RFC 6455 5.2: final, unmasked, no
    compression); the same bytes serve every client of an uncompressed connection."""
    data = message.encode("utf-8")
    n = len(data)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + data
    if n <= 0xFFFF:
        return struct.pack("!BBH", 0x81, 126, n) + data
    return struct.pack("!BBQ", 0x81, 127, n) + data


def open_stream(handler: tornado.websocket.WebSocketHandler) -> IOStream | None:
    """The stream under an open websocket, where frames are written as they are; None when the
    connection is closing or the handler compresses (its frames then differ per client)."""
    conn = handler.ws_connection
    if conn is None or conn.is_closing() or handler.get_compression_options() is not None:
        return None
    stream: IOStream | None = getattr(conn, "stream", None)
    return None if stream is None or stream.closed() else stream


def cap_buffer(handler: tornado.websocket.WebSocketHandler, limit: int) -> None:
    """Refuse writes that would leave more than `limit` bytes unsent to this client (called
    from open(), when the connection has its stream)."""
    stream = open_stream(handler)
    if stream is not None:
        stream.max_write_buffer_size = limit


class Outbox:
    """Frames waiting for the end of this IOLoop iteration, by stream, in the order given.

    Everything this host sends to a websocket outside the libraries goes through here, so its
    order per client is the order of put(). A flush is a callback scheduled at the first put:
    anything scheduled after that put (engine.io's writer woken by a later packet, say) runs
    after the flush, so it cannot overtake a frame put before it.
    """

    def __init__(self) -> None:
        self.pending: dict[IOStream, list[bytes]] = {}

    def put(self, stream: IOStream, frame: bytes) -> None:
        frames = self.pending.get(stream)
        if frames is not None:
            frames.append(frame)
            return
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending[stream] = [frame]

    def flush(self) -> None:
        """Write what is waiting: one write per stream."""
        pending, self.pending = self.pending, {}
        for stream, frames in pending.items():
            write_frame(stream, frames[0] if len(frames) == 1 else b"".join(frames))


OUTBOX = Outbox()


def write_frame(stream: IOStream, frame: bytes) -> bool:
    """Write a frame; False when the client is gone, or is cut off now for being too slow."""
    try:
        stream.write(frame)  # its Future may be dropped: IOStream retrieves its exception
    except StreamBufferFullError:
        cut_off(stream)
        return False
    except StreamClosedError:
        return False
    return True


def cut_off(stream: IOStream) -> None:
    """Drop a client that has more unread than its buffer holds: close its TCP connection
    without a close frame (that would only queue behind the rest). Its handler's on_close runs
    as for any lost connection, and the client reconnects."""
    log.warning(
        "realtime client too slow, disconnected",
        extra={"unread_limit_bytes": stream.max_write_buffer_size},
    )
    stream.close()


def close_gently(handler: tornado.websocket.WebSocketHandler, code: int, reason: str) -> None:
    """Close with a close frame, or cut the connection when the client's buffer is full."""
    try:
        handler.close(code, reason)
    except StreamBufferFullError:
        cut_off_handler(handler)


def cut_off_handler(handler: tornado.websocket.WebSocketHandler) -> None:
    """cut_off() the stream of a websocket handler, if it still has one."""
    stream = getattr(handler.ws_connection, "stream", None)
    if stream is not None:
        cut_off(stream)


class Hub:
    """The open websockets of this process; touched only on the IOLoop thread."""

    def __init__(self, max_buffer: int = MAX_CLIENT_BUFFER) -> None:
        self.sockets: set[EventSocket] = set()
        self.max_buffer = max_buffer

    def broadcast(self, message: str) -> None:
        """Send one event to every client: framed once, written to each stream."""
        frame = text_frame(message)
        for ws in list(self.sockets):
            if not ws.send_frame(frame):
                self.sockets.discard(ws)

    def close_all(self) -> None:
        """Close every socket with 1001 Going Away, so clients reconnect elsewhere."""
        OUTBOX.flush()  # what was sent before goes out before the close frame
        for ws in list(self.sockets):
            close_gently(ws, 1001, "server shutting down")


class EventSocket(tornado.websocket.WebSocketHandler):
    """GET /ws: pushes every `post.created` event; `ping` is answered with `pong`."""

    def initialize(self, hub: Hub, origins: frozenset[str], state: dict[str, bool]) -> None:
        self.hub, self.origins, self.state = hub, origins, state

    def set_default_headers(self) -> None:
        self.set_header("X-Served-By", REPLICA)

    def check_origin(self, origin: str) -> bool:
        return origin in self.origins or super().check_origin(origin)

    def get_compression_options(self) -> None:
        # Off (Tornado's default, said here because the Hub relies on it): one frame serves
        # every client only when no connection compresses its own.
        return None

    def open(self) -> None:
        if self.state["draining"]:
            self.close(1001, "server shutting down")
            return
        cap_buffer(self, self.hub.max_buffer)
        self.hub.sockets.add(self)
        self.send(json.dumps({"type": "hello", "replica": REPLICA}))

    def send_frame(self, frame: bytes) -> bool:
        """Send a ready frame, in order with every other message to this client; False when
        the connection is closing."""
        stream = open_stream(self)
        if stream is None:
            return False
        OUTBOX.put(stream, frame)
        return True

    def send(self, message: str) -> None:
        self.send_frame(text_frame(message))

    def on_message(self, message: str | bytes) -> None:
        if message == "ping":
            self.send("pong")
            return
        try:
            kind = json.loads(message).get("type")
        except (ValueError, AttributeError):
            kind = None
        if kind == "ping":
            self.send(json.dumps({"type": "pong"}))
        else:
            self.send(json.dumps({"type": "error", "message": "send ping"}))

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
