"""A lean websocket client for the realtime scenario's receivers.

Tornado's client reads every frame with three awaits (header, length, payload) and a callback:
at 15,000 messages a second that is the clients', not the server's, CPU being measured. This one
is an asyncio Protocol that parses every frame of a TCP read in one call and stamps them with
one clock reading, the time they arrived. It speaks what the receivers need and nothing more:
the opening handshake, text frames from the server (unfragmented: the host never fragments),
masked text frames to it, pong for ping, close. `upgrade_request` and `parse_frames` are also
what loadtest/sioclient.py, the blocking socket.io client of Locust users, speaks with.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

OnText = Callable[[str, float], None]  # a text message and the time its bytes arrived


def mask_frame(data: bytes, opcode: int = 0x1) -> bytes:
    """A final client frame (RFC 6455 5.2), masked as every client frame must be."""
    mask = os.urandom(4)
    n = len(data)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n <= 0xFFFF:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    key = (mask * (n // 4 + 1))[:n]
    body = (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + body


def upgrade_request(host: str, path: str) -> bytes:
    """The opening handshake's request (RFC 6455 4.1) for `path` on `host`."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n"
    ).encode()


def parse_frames(buf: bytearray | bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The complete server frames at the start of `buf`, as (opcode, payload), and the bytes they
    took; a frame not yet whole stays for the next read. Server frames are never masked."""
    frames: list[tuple[int, bytes]] = []
    at, size = 0, len(buf)
    while size - at >= 2:
        opcode, length, head = buf[at] & 0x0F, buf[at + 1] & 0x7F, 2
        if length == 126:
            if size - at < 4:
                break
            length, head = int.from_bytes(buf[at + 2 : at + 4], "big"), 4
        elif length == 127:
            if size - at < 10:
                break
            length, head = int.from_bytes(buf[at + 2 : at + 10], "big"), 10
        if size - at < head + length:
            break
        frames.append((opcode, bytes(buf[at + head : at + head + length])))
        at += head + length
    return frames, at


class FrameClient(asyncio.Protocol):
    """One websocket connection; `on_text` gets each text message as it is parsed."""

    def __init__(self, host: str, path: str, on_text: OnText) -> None:
        self.request = upgrade_request(host, path)
        self.on_text = on_text
        self.buffer = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buffer[: self.buffer.find(b"\r\n")])
            if status.split(b" ")[1:2] != [b"101"]:
                self._fail(ConnectionError(f"no upgrade: {status.decode(errors='replace')}"))
                return
            del self.buffer[: end + 4]
            self.upgraded = True
            self.opened.set_result(None)
        self._frames(time.time())

    def _frames(self, now: float) -> None:
        frames, used = parse_frames(self.buffer)
        del self.buffer[:used]
        for opcode, payload in frames:
            if opcode == 0x1:
                self.on_text(payload.decode("utf-8"), now)
            elif opcode == 0x9:  # ping: answer with its payload
                self.write(mask_frame(payload, 0xA))
            elif opcode == 0x8:  # close: the server is done
                self.close()

    def write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def send(self, text: str) -> None:
        self.write(mask_frame(text.encode("utf-8")))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.write(mask_frame(b"\x03\xe8", 0x8))  # 1000, normal closure
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("closed before the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)


async def connect(url: str, on_text: OnText, timeout: float = 30) -> FrameClient:
    """Open a websocket to `url` (ws:// or wss://); return once the server has upgraded it."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    host = parts.netloc
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(
        loop.create_connection(
            lambda: FrameClient(host, path or "/", on_text),
            parts.hostname,
            port,
            ssl=ssl.create_default_context() if secure else None,
        ),
        timeout,
    )
    await asyncio.wait_for(client.opened, timeout)
    return client
