"""A lean socket.io client for Locust users: one websocket on a blocking socket, no threads.

Under Locust the socket is gevent's, so a user's task sends while a greenlet of its own reads
(`packets`). It speaks what a load scenario needs and nothing more: engine.io v4 over the
websocket transport (the open packet, pong for ping), the default namespace, events with or
without an acknowledgement id, and acknowledgements. Frames are parsed by wsclient.parse_frames,
all the frames of a read in one call, and every packet of a read gets that read's clock reading,
so the client's own parsing is not what the latencies measure. `Acks` and `stamp`/`latency_ms`
are the bookkeeping: which acknowledgements are due, and how old a message that carries its send
time is when it arrives.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from loadtest.wsclient import mask_frame, parse_frames, upgrade_request

# (kind, name or ack id, data, time the bytes arrived): kind "event" (name, its first
# argument) or "ack" (id, the list of arguments).
Packet = tuple[str, Any, Any, float]
PATH = "/socket.io/?EIO=4&transport=websocket"


def encode_event(event: str, data: Any, ack_id: int | None = None) -> str:
    """A socket.io EVENT packet on the default namespace (`42`, then the ack id if any)."""
    return "42" + ("" if ack_id is None else str(ack_id)) + json.dumps([event, data])


def decode(message: str, now: float) -> Packet | None:
    """An EVENT or ACK packet of the default namespace as a Packet; None for anything else."""
    if message.startswith("42"):
        body = json.loads(message[2 + _digits(message, 2) :])
        return ("event", body[0], body[1] if len(body) > 1 else None, now)
    if message.startswith("43"):
        n = _digits(message, 2)
        if n:
            return ("ack", int(message[2 : 2 + n]), json.loads(message[2 + n :]), now)
    return None


def _digits(text: str, at: int) -> int:
    n = 0
    while at + n < len(text) and text[at + n].isdigit():
        n += 1
    return n


def stamp(now: float) -> str:
    """A message's send time, as text it can carry (the server passes it on untouched)."""
    return f"{now:.6f}"


def latency_ms(text: object, now: float) -> float | None:
    """How long ago, in ms, a message stamped by `stamp` was sent; None if it carries no stamp."""
    try:
        return (now - float(text)) * 1000  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


class Acks:
    """The acknowledgements a connection waits for: their ids and when each was asked for."""

    def __init__(self) -> None:
        self.pending: dict[int, float] = {}
        self.next_id = 0

    def add(self, now: float) -> int:
        """A fresh ack id, due from `now`."""
        ack_id = self.next_id
        self.next_id += 1
        self.pending[ack_id] = now
        return ack_id

    def done(self, ack_id: int, now: float) -> float | None:
        """The round trip in ms of an acknowledgement that came; None if not asked for (or
        already given up on)."""
        sent = self.pending.pop(ack_id, None)
        return None if sent is None else (now - sent) * 1000

    def expired(self, now: float, timeout: float) -> list[float]:
        """Give up on the acknowledgements older than `timeout` seconds; their ages in ms."""
        late = [i for i, sent in self.pending.items() if now - sent > timeout]
        return [(now - self.pending.pop(i)) * 1000 for i in late]


class Connection:
    """One socket.io connection over a websocket; `open` it, then `emit` and read `packets`.

    Every read times out after `timeout` seconds until `hold` is called, so a set-up that the
    server never answers fails instead of waiting for ever."""

    def __init__(self, url: str, timeout: float = 10) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "ws"):
            raise ValueError(f"{url}: only http:// or ws:// (no TLS here)")
        self.timeout = timeout
        self.sock = socket.create_connection((parts.hostname, parts.port or 80), timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()
        self.lock = threading.Lock()  # the task and the reader both write (pong)
        self.closed = False
        self.texts = self._texts()
        self.sock.sendall(upgrade_request(parts.netloc, PATH))
        while b"\r\n\r\n" not in self.buffer:
            self._recv()
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if status.split(b" ")[1:2] != [b"101"]:
            raise ConnectionError(f"no upgrade: {status.decode(errors='replace')}")
        self.buffer = bytearray(rest)

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the server")
        self.buffer += data

    def _texts(self) -> Iterator[tuple[str, float]]:
        """Each text message as it is parsed, with the time its read arrived; answers pings."""
        while True:
            frames, used = parse_frames(self.buffer)
            now = time.time()
            del self.buffer[:used]
            for opcode, payload in frames:
                if opcode == 0x1:
                    text = payload.decode("utf-8")
                    if text == "2":  # engine.io ping
                        self.send("3")
                    else:
                        yield text, now
                elif opcode == 0x8:
                    return
            self._recv()

    def open(self, auth: dict[str, Any] | None = None) -> str:
        """Connect the default namespace; its socket.io sid. Refused: ConnectionRefusedError."""
        for text, _ in self.texts:
            if text.startswith("0{"):  # engine.io open
                self.send("40" + (json.dumps(auth) if auth else ""))
            elif text.startswith("40"):
                return json.loads(text[2:] or "{}").get("sid", "")
            elif text.startswith("44"):
                raise ConnectionRefusedError(text[2:])
        raise ConnectionError("closed before the namespace was connected")

    def hold(self) -> None:
        """From here a read waits as long as the server stays quiet (until now: `timeout`)."""
        self.sock.settimeout(None)

    def packets(self) -> Iterator[Packet]:
        """Events and acknowledgements as they arrive, until the connection ends."""
        try:
            for text, now in self.texts:
                packet = decode(text, now)
                if packet is not None:
                    yield packet
        except OSError:
            if not self.closed:
                raise

    def send(self, text: str) -> None:
        frame = mask_frame(text.encode("utf-8"))
        with self.lock:
            self.sock.sendall(frame)

    def emit(self, event: str, data: Any, ack_id: int | None = None) -> None:
        self.send(encode_event(event, data, ack_id))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            with self.lock:
                self.sock.sendall(mask_frame(b"41"))  # leave the namespace
                self.sock.sendall(mask_frame(b"\x03\xe8", 0x8))  # 1000, normal closure
        except OSError:
            pass
        self.sock.close()
