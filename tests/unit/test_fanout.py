"""The host's fan-out (flaskstack/realtime.py, sio.py), in one process on a real Tornado server.

A broadcast is framed once and put in the Outbox, which writes each stream's frames together at
the end of the IOLoop iteration; socket.io sessions on their own websocket get the same, and
the rest go through engine.io's queue. What is pinned here: frames as Tornado would write them,
order per client across both paths, a slow reader cut off at its buffer while the others get
everything, and the python-socketio / engine.io behaviour that the direct path relies on.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import engineio
import socketio
import tornado.httpserver
import tornado.web
import tornado.websocket
from engineio.async_drivers import tornado as eio_tornado
from engineio.async_socket import AsyncSocket
from socketio.async_pubsub_manager import AsyncPubSubManager
from tornado.websocket import websocket_connect

from tests.support import ROOT

sys.path.insert(0, str(ROOT / "deploy" / "tornado"))

from flaskstack import realtime
from flaskstack import sio as host_sio


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


async def serve(handlers: list[Any]) -> tuple[tornado.httpserver.HTTPServer, int]:
    """An HTTP server on a free 127.0.0.1 port for these handlers."""
    app = tornado.web.Application(handlers, websocket_max_message_size=64 * 1024)
    server = tornado.httpserver.HTTPServer(app)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    server.add_sockets([sock])
    return server, sock.getsockname()[1]


def unframe(data: bytes) -> list[bytes]:
    """The payloads of a run of unmasked websocket frames."""
    out = []
    while data:
        n, at = data[1] & 0x7F, 2
        if n == 126:
            n, at = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            n, at = struct.unpack("!Q", data[2:10])[0], 10
        assert data[0] == 0x81 and not data[1] & 0x80  # final text frame, unmasked
        out.append(data[at : at + n])
        data = data[at + n :]
    return out


# --- frames and the Outbox ---------------------------------------------------------------


def test_a_frame_is_what_tornado_writes_for_the_same_text():
    for size in (0, 125, 126, 65535, 65536):
        text = "é" * (size // 2) + "x" * (size % 2)
        written: list[bytes] = []
        params = tornado.websocket._WebSocketParams()
        proto = tornado.websocket.WebSocketProtocol13(SimpleNamespace(), False, params)
        proto.stream = SimpleNamespace(write=written.append)  # type: ignore[assignment]
        proto._write_frame(True, 0x1, text.encode())
        assert realtime.text_frame(text) == written[0]
        assert unframe(written[0]) == [text.encode()]


class FakeStream:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def test_the_outbox_writes_each_streams_frames_together_in_order():
    async def main() -> None:
        outbox = realtime.Outbox()
        a, b = FakeStream(), FakeStream()
        for stream, frame in ((a, b"1"), (b, b"x"), (a, b"2"), (a, b"3")):
            outbox.put(stream, frame)  # type: ignore[arg-type]
        assert a.writes == [] and b.writes == []  # nothing before the iteration ends
        await asyncio.sleep(0)
        assert (a.writes, b.writes) == ([b"123"], [b"x"])
        outbox.put(a, b"4")  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert a.writes == [b"123", b"4"]

    run(main)


# --- /ws: the Hub -------------------------------------------------------------------------


async def ws_server(hub: realtime.Hub) -> tuple[tornado.httpserver.HTTPServer, str]:
    state = {"draining": False}
    server, port = await serve(
        [(r"/ws", realtime.EventSocket, {"hub": hub, "origins": frozenset(), "state": state})]
    )
    return server, f"ws://127.0.0.1:{port}/ws"


def test_every_ws_client_gets_every_broadcast_in_order_after_its_hello():
    async def main() -> None:
        hub = realtime.Hub()
        server, url = await ws_server(hub)
        clients = [await websocket_connect(url) for _ in range(3)]
        for c in clients:
            assert json.loads(await c.read_message())["type"] == "hello"
        for i in range(50):
            hub.broadcast(json.dumps({"type": "post.created", "n": i}))
            if i % 7 == 0:
                await asyncio.sleep(0)  # some in one iteration, some apart
        for c in clients:
            got = [json.loads(await c.read_message())["n"] for _ in range(50)]
            assert got == list(range(50))
            c.write_message("ping")
            assert await c.read_message() == "pong"
            c.close()
        server.stop()

    run(main)


def silent_client(url: str) -> socket.socket:
    """A client that upgrades to a websocket and then reads nothing, with a small receive window."""
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", int(url.split(":")[2].split("/")[0])))
    slow.sendall(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    return slow


def test_a_slow_reader_is_cut_off_at_its_buffer_and_the_others_get_everything():
    async def main() -> None:
        hub = realtime.Hub(max_buffer=64 * 1024)
        server, url = await ws_server(hub)
        fast = await websocket_connect(url)
        await fast.read_message()  # hello
        slow = silent_client(url)
        while len(hub.sockets) < 2:
            await asyncio.sleep(0.01)
        body = "x" * 8000
        received: list[int] = []

        async def read_all() -> None:
            while len(received) < 1500:
                msg = await fast.read_message()
                assert msg is not None, "the fast client was cut off"
                received.append(json.loads(msg)["n"])

        reader = asyncio.ensure_future(read_all())
        for i in range(1500):  # 12 MB: far past what the kernel buffers for the slow one
            hub.broadcast(json.dumps({"type": "post.created", "n": i, "body": body}))
            await asyncio.sleep(0)
        await reader
        assert received == list(range(1500))
        assert len(hub.sockets) == 1  # the slow one is gone, cut off, not closed politely
        slow.close()
        fast.close()
        server.stop()

    run(main)


def test_drain_cuts_a_client_whose_buffer_cannot_take_the_close_frame():
    async def main() -> None:
        hub = realtime.Hub()
        server, url = await ws_server(hub)
        slow = silent_client(url)
        while not hub.sockets:
            await asyncio.sleep(0.01)
        (ws,) = hub.sockets
        stream = ws.ws_connection.stream
        while not stream.writing():  # until the kernel's buffers are full and Tornado holds some
            hub.broadcast(json.dumps({"type": "post.created", "body": "x" * 8000}))
            await asyncio.sleep(0)
        stream.max_write_buffer_size = 1  # no room left, not even for a close frame
        hub.close_all()  # must not raise: the drain goes on
        assert stream.closed()
        slow.close()
        server.stop()

    run(main)


# --- socket.io: DirectEmit ----------------------------------------------------------------


async def sio_server() -> tuple[socketio.AsyncServer, tornado.httpserver.HTTPServer, int]:
    app = SimpleNamespace(extensions={})  # no authenticate(): broadcasts only
    sio, handler = host_sio.build(app, frozenset(), {"draining": False}, None, "in-process")
    server, port = await serve([(r"/socket\.io/", handler)])
    return sio, server, port


async def sio_client(port: int) -> tuple[Any, str]:
    """A socket.io client over a websocket, by hand: connected, its hello read."""
    conn = await websocket_connect(f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket")
    assert (await conn.read_message()).startswith("0{")
    conn.write_message("40")
    # python-socketio sends the connect handler's emits (the hello) before its CONNECT packet.
    first, second = await conn.read_message(), await conn.read_message()
    assert first.startswith('42["hello"'), first
    connected = second
    assert connected.startswith("40{"), connected
    return conn, json.loads(connected[2:])["sid"]


def test_socketio_broadcasts_go_direct_and_keep_order_with_the_librarys_packets():
    async def main() -> None:
        sio, server, port = await sio_server()
        conn, sid = await sio_client(port)
        eio_sid = sio.manager.eio_sid_from_sid(sid, "/")
        assert sio.manager.direct_stream(eio_sid) is not None
        puts = []
        original = realtime.OUTBOX.put
        realtime.OUTBOX.put = lambda s, f: (puts.append(f), original(s, f))  # type: ignore[method-assign]
        try:
            for i in range(40):
                if i % 5 == 0:  # a callback makes a per-recipient packet: the library's queue
                    await sio.emit("lib", {"n": i}, to=sid, callback=lambda *a: None)
                else:
                    await sio.emit("post.created", {"n": i}, ignore_queue=True)
                if i % 3 == 0:
                    await asyncio.sleep(0)
        finally:
            realtime.OUTBOX.put = original  # type: ignore[method-assign]
        got = []
        for _ in range(40):
            msg = await conn.read_message()
            got.append(json.loads(msg[msg.index("[") :])[1]["n"])
        assert got == list(range(40))
        # Broadcasts went direct, except those that came while a callback's packet still sat
        # in the session's queue: they followed it through the queue.
        assert 0 < len(puts) <= 32
        # Past the buffer a socket.io client is cut off too: its stream is capped.
        handler = sio.environ[eio_sid]["tornado.handler"]
        assert handler.ws_connection.stream.max_write_buffer_size == realtime.MAX_CLIENT_BUFFER
        conn.close()
        server.stop()

    run(main)


def test_a_polling_session_gets_broadcasts_through_its_queue():
    async def main() -> None:
        sio, server, port = await sio_server()
        http = tornado.httpclient.AsyncHTTPClient()
        base = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling"
        opened = (await http.fetch(base)).body.decode()
        eio_sid = json.loads(opened[1:])["sid"]
        await http.fetch(f"{base}&sid={eio_sid}", method="POST", body="40")
        connected = (await http.fetch(f"{base}&sid={eio_sid}")).body.decode()
        assert '42["hello"' in connected and "\x1e40{" in connected
        assert sio.manager.direct_stream(eio_sid) is None
        await sio.emit("post.created", {"n": 1}, ignore_queue=True)
        got = (await http.fetch(f"{base}&sid={eio_sid}")).body.decode()
        assert got == '42["post.created",{"n":1}]'
        server.stop()

    import tornado.httpclient

    run(main)


# --- the library behaviour the direct path relies on --------------------------------------


def test_contract_local_delivery_of_the_channel_manager_is_direct_emit():
    """AsyncPubSubManager delivers locally with super().emit: DirectEmit must be next in the
    MRO, with AsyncManager.emit's signature."""
    mro = host_sio.ChannelManager.__mro__
    assert mro.index(host_sio.DirectEmit) == mro.index(AsyncPubSubManager) + 1
    assert "super().emit(" in inspect.getsource(AsyncPubSubManager.emit)
    ours = inspect.signature(host_sio.DirectEmit.emit).parameters
    theirs = inspect.signature(socketio.AsyncManager.emit).parameters
    assert list(ours)[: len(theirs) - 1] == list(theirs)[:-1]  # the same, then **kwargs


def test_contract_engineio_keeps_the_tornado_handler_in_the_environ():
    handler = SimpleNamespace(
        request=SimpleNamespace(
            body=b"", path="/socket.io/", query="", method="GET", version="HTTP/1.1", headers={}
        )
    )
    environ = eio_tornado.translate_request(handler)
    assert environ["tornado.handler"] is handler


def test_contract_engineio_tornado_websocket_send_does_not_suspend():
    """The writer sends what it took without yielding: its send only calls write_message."""
    sent: list[str] = []
    ws = eio_tornado.WebSocket(None, None)
    ws.tornado_handler = SimpleNamespace(write_message=lambda m, binary: sent.append(m))
    coro = ws.send("4hi")
    try:
        coro.send(None)
    except StopIteration:
        pass
    else:  # pragma: no cover - the contract is broken
        coro.close()
        raise AssertionError("engine.io's Tornado send suspended")
    assert sent == ["4hi"]


def test_contract_a_queued_packet_is_unfinished_until_the_writer_has_it():
    """engine.io's poll() calls task_done only once the waiting writer has resumed: until then
    the queue counts the packet unfinished, so direct_stream() sends nothing past it."""

    async def main() -> None:
        server = engineio.AsyncServer(async_mode="asgi")
        sock = AsyncSocket(server, "s")
        waiting = asyncio.ensure_future(sock.poll())
        await asyncio.sleep(0)
        sock.queue.put_nowait("packet")
        assert sock.queue._unfinished_tasks == 1
        while not waiting.done():
            assert sock.queue._unfinished_tasks == 1
            await asyncio.sleep(0)
        assert waiting.result() == ["packet"]
        assert sock.queue._unfinished_tasks == 0

    run(main)
