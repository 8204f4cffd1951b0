"""socket.io on every replica: python-socketio's AsyncServer in Tornado mode, beside /ws.

Fan-out needs no broker. Each replica LISTENs on the app's Postgres channel (realtime.py) and
hands every message to Fanout: an app event goes to this replica's own clients (all of them, or
one room), and a message from another replica's socket.io server goes to ChannelManager, the
python-socketio manager whose pub/sub backend is that same channel. So an emit, a room change or a
disconnect made on one replica reaches the connections on every other one. Without Postgres the
app's in-process bus feeds Fanout, and there is only one process to reach.

An emit without a callback is encoded once and, to every session on a websocket of its own,
given one ready frame, written with /ws's at the end of the IOLoop iteration (realtime.py); a
session still polling or upgrading, or one whose engine.io queue is not yet flushed, gets the
packet through that queue as python-socketio would send it. Per session, order is kept either
way.

A Flask-SocketIO app's handlers are served here too (sioapp.py): its events run on the pool,
and what its code asks of `socketio.server` is done by this server, so across replicas.

Connections authenticate with the API's JWT (the socket.io `auth` payload) and join their user's
room, unless a Flask-SocketIO app has a connect handler of its own, which then decides; origins
are CORS_ORIGINS plus the page's own. On drain every engine.io session is cut
without socket.io's disconnect packet, which clients take as a transport loss: they reconnect,
through nginx, to another replica.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import engineio
import socketio
import tornado.web
import tornado.websocket
from engineio import packet as eio_packet
from socketio import packet as sio_packet
from socketio.async_pubsub_manager import AsyncPubSubManager
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamBufferFullError

from . import metrics
from .contract import current_request_id, error_envelope, new_request_id, sane_request_id
from .realtime import (
    MAX_CLIENT_BUFFER,
    OUTBOX,
    Hub,
    cap_buffer,
    cut_off_handler,
    open_stream,
    text_frame,
)
from .sioapp import AppServer, attach
from .wsgi import REPLICA

log = logging.getLogger("host")
MAX_NOTIFY_BYTES = 7999  # Postgres refuses a NOTIFY payload of 8000 bytes or more
# socket.io packets a client may send: the longest polling body or websocket frame accepted.
# Clients here only connect and receive; 64 KiB is far above any packet they send.
MAX_CLIENT_PACKET = 64 * 1024
# The replica names nginx routes to: Docker's container short ids, which its DNS resolves.
ROUTABLE_NAME = re.compile(r"[0-9a-f]{12}")


class DirectEmit(socketio.AsyncManager):
    """python-socketio's manager, delivering an emit without a task per recipient.

    The library makes a task per recipient, each queueing the packet for the session's writer
    task, which frames it with Tornado's write_message (a task more). Here the packet is
    encoded and framed once, and each session on a websocket of its own gets the frame through
    the Outbox (realtime.py), written at the end of this IOLoop iteration. The rest go through
    engine.io's queue as before.
    An emit with a callback (a packet id per recipient) or binary data is the library's.
    """

    async def emit(  # type: ignore[override]
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        room = to or room
        if namespace not in self.rooms:
            return
        args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
        encoded = None
        if callback is None:
            pkt = self.server.packet_class(
                sio_packet.EVENT, namespace=namespace, data=[event, *args]
            )
            encoded = pkt.encode()
        if not isinstance(encoded, str):  # a callback, or binary attachments
            await super().emit(
                event, data, namespace, room=room, skip_sid=skip_sid, callback=callback
            )
            return
        message = eio_packet.Packet(eio_packet.MESSAGE, encoded)
        frame = text_frame(message.encode())
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        queued = []
        for sid, eio_sid in self.get_participants(namespace, room):
            if sid in skip:
                continue
            stream = self.direct_stream(eio_sid)
            if stream is None:
                queued.append(asyncio.create_task(self.server._send_eio_packet(eio_sid, message)))
            else:
                OUTBOX.put(stream, frame)
        if queued:
            await asyncio.wait(queued)

    def direct_stream(self, eio_sid: str) -> IOStream | None:
        """The stream of a session that may take a frame now, or None: the packet then goes
        through its engine.io queue.

        Only a session opened on a websocket (its connect request is that websocket: a
        polling one, upgraded or not, keeps its queue), not closing, and whose queue holds
        nothing unsent. engine.io's writer counts a packet done (task_done) only once it has
        resumed, and it then writes all it took before yielding again (its Tornado driver's
        send does not suspend): with no unfinished packet, everything queued before is on the
        stream. A packet queued after this frame wakes the writer after the Outbox's flush.
        """
        sock = self.server.eio.sockets.get(eio_sid)
        if sock is None or sock.closing or sock.closed or sock.upgrading or not sock.upgraded:
            return None
        if sock.queue._unfinished_tasks:  # asyncio.Queue's count that join() waits on
            return None
        environ = self.server.environ.get(eio_sid) or {}
        handler = environ.get("tornado.handler")
        if not isinstance(handler, tornado.websocket.WebSocketHandler):
            return None
        return open_stream(handler)


class ChannelManager(AsyncPubSubManager, DirectEmit):
    """python-socketio's pub/sub manager over Postgres LISTEN/NOTIFY.

    What this replica's server publishes goes out through `send` (a NOTIFY on the app's channel);
    what every replica publishes, this one's included, comes back through feed(). `send` is None
    without Postgres: one process, and what it publishes goes straight back to its own feed().
    Local delivery (AsyncPubSubManager's `super().emit`) is DirectEmit's: it comes after
    AsyncPubSubManager in this class's MRO.
    """

    name = "postgres-notify"

    def __init__(self, send: Callable[[str], Awaitable[None]] | None, channel: str) -> None:
        super().__init__(channel=channel)
        self.send = send
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def _publish(self, data: dict[str, Any]) -> None:
        if self.send is None:
            # One process: what a broker would echo back to every server, this one included,
            # goes straight to this server's listener (python-socketio's pub/sub managers
            # deliver locally only what they hear back).
            self.feed(data)
            return
        payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        size = len(payload.encode("utf-8"))
        if size > MAX_NOTIFY_BYTES:
            raise ValueError(
                f"socket.io message is {size} bytes, over Postgres NOTIFY's 8000-byte limit: "
                "it cannot reach the other replicas"
            )
        await self.send(payload)

    async def _listen(self) -> AsyncIterator[dict[str, Any]]:  # type: ignore[override]
        while True:
            yield await self.inbox.get()

    def feed(self, message: dict[str, Any]) -> None:
        """A message another replica's server published (called on the IOLoop)."""
        self.inbox.put_nowait(message)


class Notifier:
    """NOTIFY on its own autocommit connection, from a worker thread, one at a time."""

    def __init__(self, dsn: str, channel: str) -> None:
        self.dsn, self.channel = dsn, channel
        self.conn: Any = None
        self.lock = threading.Lock()

    def _send(self, payload: str) -> None:
        import psycopg2

        with self.lock:
            for attempt in (1, 2):  # once more on a fresh connection if the old one died
                try:
                    if self.conn is None or self.conn.closed:
                        self.conn = psycopg2.connect(self.dsn, connect_timeout=3)
                        self.conn.autocommit = True
                    with self.conn.cursor() as cur:
                        cur.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))
                    return
                except (psycopg2.OperationalError, psycopg2.InterfaceError):
                    if self.conn is not None:
                        self.conn.close()
                    self.conn = None
                    if attempt == 2:
                        raise

    async def __call__(self, payload: str) -> None:
        await IOLoop.current().run_in_executor(None, self._send, payload)


class Fanout:
    """Hands each message heard on the app's channel to this replica's clients.

    A message with a `method` is a socket.io server's (ChannelManager's format). Anything else is
    an app event, a JSON object with a `type` and, for a room, a `to`: /ws clients get the ones
    without `to` (they carry no identity), socket.io clients get each as the event named by its
    type, with the object (less `to`) as its data.
    """

    def __init__(self, hub: Hub, sio: socketio.AsyncServer | None) -> None:
        self.hub, self.sio = hub, sio
        self.pending: set[asyncio.Future[Any]] = set()

    def __call__(self, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            log.warning("unreadable event ignored", extra={"bytes": len(payload)})
            return
        if not isinstance(message, dict):
            return
        if "method" in message:
            if self.sio is not None:
                self.sio.manager.feed(message)
            return
        room = message.pop("to", None)
        if room is None:
            self.hub.broadcast(payload)
        kind = message.get("type")
        if self.sio is not None and isinstance(kind, str):
            # Only to this replica's clients: every replica heard the same NOTIFY.
            task = asyncio.ensure_future(self.sio.emit(kind, message, to=room, ignore_queue=True))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)


class Engine(engineio.AsyncServer):
    """engine.io's server: session ids that name their replica, errors in the JSON envelope.

    A long-polling session is many requests, and all must reach the replica that holds it.
    Its id starts with the replica's container name (Docker's DNS resolves it on the stack's
    network), so nginx routes by the id alone (nginx.conf, map $io_upstream).
    """

    def generate_id(self) -> str:
        sid: str = super().generate_id()
        return f"{REPLICA}.{sid}" if ROUTABLE_NAME.fullmatch(REPLICA) else sid

    def _error(self, status: int, line: str, message: str) -> dict[str, Any]:
        rid = current_request_id.get() or new_request_id()
        body = json.dumps(error_envelope(status, rid, message)).encode()
        return {"status": line, "headers": [("Content-Type", "application/json")], "response": body}

    def _bad_request(self, message: str | None = None) -> dict[str, Any]:
        return self._error(400, "400 BAD REQUEST", message or "Bad socket.io request.")

    def _method_not_found(self) -> dict[str, Any]:
        return self._error(405, "405 METHOD NOT ALLOWED", "Method not allowed.")

    def _unauthorized(self, message: str | None = None) -> dict[str, Any]:
        return self._error(401, "401 UNAUTHORIZED", message or "Unauthorized.")


class Server(socketio.AsyncServer):
    """python-socketio's server on Engine, closing a connection that sends a bad packet, and
    running a Flask-SocketIO app's handlers (sioapp.py) on the pool."""

    # Set by build(): the app's Flask-SocketIO handlers (when it has some), the replica's drain
    # state, and the event names /metrics counts by name.
    app: AppServer | None = None
    state: dict[str, bool]
    counted: frozenset[str] = frozenset({"connect"})

    def _engineio_server_class(self) -> type[engineio.AsyncServer]:
        return Engine

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except ValueError as exc:  # undecodable, unknown or unexpected packet
            # python-socketio would log it and carry on; the sender is broken or hostile, so
            # its connection ends here (engine.io close) and no other one notices.
            log.warning("bad socket.io packet, connection closed", extra={"error": str(exc)})
            sock = self.eio.sockets.get(eio_sid)
            if sock is not None:
                await end_session(sock)  # engine.io's close packet, then the transport ends

    async def _handle_connect(self, eio_sid: str, namespace: str, data: Any) -> None:
        metrics.SOCKETIO_EVENTS.labels(event="connect").inc()
        await super()._handle_connect(eio_sid, namespace, data)

    async def _handle_event(self, eio_sid: str, namespace: str, id: Any, data: Any) -> None:
        event = data[0] if isinstance(data, list) and data else None
        # Only names the app registered get a label of their own: a client cannot grow the
        # metric's series by sending made-up names.
        name = event if isinstance(event, str) and event in self.counted else "other"
        metrics.SOCKETIO_EVENTS.labels(event=name).inc()
        await super()._handle_event(eio_sid, namespace, id, data)

    async def _trigger_event(self, event: str, namespace: str, *args: Any) -> Any:
        if event == "connect" and self.state["draining"]:
            raise socketio.exceptions.ConnectionRefusedError("server shutting down")
        app = self.app
        if app is None or not app.handles(event, namespace):
            return await super()._trigger_event(event, namespace, *args)
        try:
            return await app.trigger(event, namespace, *args)
        except (socketio.exceptions.ConnectionRefusedError, ConnectionRefusedError):
            raise  # the app refused the connection: python-socketio tells the client why
        except Exception:
            # Flask-SocketIO has already given it to the app's on_error handler, if any. A
            # failed event gets no acknowledgement and its connection stays; a failed connect
            # handler refuses the connection. Nothing goes further up: a ValueError reaching
            # _handle_eio_message would be taken for a bad packet and close the connection.
            log.exception(
                "socket.io handler failed", extra={"event": event, "namespace": namespace}
            )
            if event == "connect":
                return False
            return self.not_handled


def allowed_origin(origins: frozenset[str]) -> Callable[[str, dict[str, Any]], bool]:
    """CORS_ORIGINS plus the page's own origin (nginx passes the public Host and scheme)."""

    def check(origin: str, environ: dict[str, Any]) -> bool:
        if origin in origins:
            return True
        scheme = environ.get("HTTP_X_FORWARDED_PROTO", environ.get("wsgi.url_scheme", "http"))
        return origin == f"{scheme.split(',')[0].strip()}://{environ.get('HTTP_HOST', '')}"

    return check


def quiet_logger(name: str) -> logging.Logger:
    """A library logger at warning level that keeps to the root (JSON) handler."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.WARNING)
    return logger


def build(
    wsgi_app: Any,
    origins: frozenset[str],
    state: dict[str, bool],
    send: Callable[[str], Awaitable[None]] | None,
    channel: str,
    submit: Callable[[Callable[[], None]], None] | None = None,
) -> tuple[socketio.AsyncServer, type[tornado.web.RequestHandler]]:
    """The socket.io server and the Tornado handler that serves /socket.io/.

    `submit` runs a job on the replica's pool: a Flask-SocketIO app's handlers run there.
    """
    sio = Server(
        async_mode="tornado",
        client_manager=ChannelManager(send, channel),
        cors_allowed_origins=allowed_origin(origins),
        max_http_buffer_size=MAX_CLIENT_PACKET,
        # A ping every 20 s finds dead peers within 40 s; both are below nginx's 60 s
        # proxy_read_timeout on /socket.io/, so a long-poll is never cut by the proxy.
        ping_interval=20,
        ping_timeout=20,
        # Their records go through the host's JSON logging; per-packet chatter (info) is off.
        logger=quiet_logger("socketio"),
        engineio_logger=quiet_logger("engineio"),
    )
    # Start the manager's listener now, not at the first connection: messages heard before then
    # would otherwise wait in its inbox and reach clients that connected after them.
    sio.manager_initialized = True
    sio.manager.initialize()
    sio.state = state
    if submit is not None:
        sio.app = attach(wsgi_app, sio, submit)
    if sio.app is not None:
        sio.counted = frozenset({"connect", *sio.app.event_names()})
        # The app's namespaces are accepted; those without a connect handler of the app's
        # accept every client, as python-socketio does.
        namespaces = sio.app.served_namespaces()
        sio.namespaces = "*" if "*" in namespaces else sorted({"/", *namespaces})
    bus = getattr(wsgi_app, "extensions", {}).get("events")
    authenticate = getattr(bus, "authenticate", None)
    if authenticate is None and sio.app is None:
        log.info("the app has no realtime authenticate(): socket.io clients get broadcasts only")

    @sio.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        # Reached only when the app has no connect handler of its own for "/" (Server's
        # _trigger_event gives the event to the app's when it has one), and not draining.
        if authenticate is not None:
            loop = asyncio.get_running_loop()
            try:
                room = await loop.run_in_executor(None, authenticate, wsgi_app, auth)
            except PermissionError as exc:
                raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
            except Exception:  # the database is down, say: refuse now rather than hang
                log.exception("socket.io login could not be checked")
                raise socketio.exceptions.ConnectionRefusedError(
                    "login cannot be checked right now; retry"
                ) from None
            await sio.enter_room(sid, room)
        if sio.app is not None:
            return  # the app's clients get only the app's events: its names are its own
        # Which replica holds the session, as /ws says in its hello; to this socket alone.
        hello = {"type": "hello", "replica": REPLICA}
        await sio.emit("hello", hello, to=sid, ignore_queue=True)

    base: type[tornado.web.RequestHandler] = socketio.get_tornado_handler(sio)

    class SocketIOHandler(base):  # type: ignore[valid-type,misc]
        """/socket.io/: engine.io's handler, with the host's headers and a drain gate."""

        def set_default_headers(self) -> None:
            self.set_header("X-Served-By", REPLICA)

        def get_compression_options(self) -> None:
            # engine.io's handler turns permessage-deflate on: a zlib stream per connection,
            # run for every event to every client, to save a few bytes on messages of a few
            # hundred. Off, as on /ws: DirectEmit's one frame for everyone relies on it.
            return None

        async def open(self, *args: Any, **kwargs: Any) -> None:
            cap_buffer(self, MAX_CLIENT_BUFFER)
            await super().open(*args, **kwargs)

        def close(self, code: int | None = None, reason: str | None = None) -> None:
            # engine.io closes the websocket when a write fails; past the client's buffer the
            # close frame cannot be queued either, and the connection is cut instead.
            try:
                super().close(code, reason)
            except StreamBufferFullError:
                cut_off_handler(self)

        def prepare(self) -> None:
            rid = sane_request_id(self.request.headers.get("X-Request-ID")) or new_request_id()
            current_request_id.set(rid)  # engine.io's error bodies (Engine) carry it
            # A new session on a draining replica would be cut at once: refuse it, so the
            # client's retry goes to another replica. Existing sessions carry `sid`.
            if state["draining"] and not self.get_query_argument("sid", ""):
                self.set_status(503)
                self.set_header("Content-Type", "application/json")
                self.finish(error_envelope(503, rid))

    return sio, SocketIOHandler


async def end_session(sock: Any, abort: bool = False) -> None:
    """Close one engine.io session and end its transport now: a websocket closes, a
    long-poll returns. `abort` skips engine.io's close packet.

    engine.io's `close(wait=False)` only marks the session closed; its transport notices at
    its next packet. The `None` on the session's queue (engine.io's own end-of-stream
    marker) wakes it at once. With DirectEmit.direct_stream, where this host touches engine.io's
    internals.
    """
    await sock.close(wait=False, abort=abort)
    sock.queue.put_nowait(None)


async def close_all(sio: socketio.AsyncServer) -> None:
    """Cut every engine.io session without socket.io's disconnect packet, so clients reconnect.

    A disconnect packet tells a client the server meant it, and python-socketio and the
    JavaScript client then stay away. A lost transport makes them reconnect, and nginx sends
    them to a replica that is not draining.
    """
    for sock in list(sio.eio.sockets.values()):
        await end_session(sock, abort=True)
