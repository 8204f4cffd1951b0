"""The host's streamed responses between pool thread and IOLoop, with a connection stand-in.

tests/integration/test_server.py streams through the real process and sockets; here the client
is a fake HTTP1Connection whose writes complete (or never do) as each test needs, so the bound
on what the app may run ahead of a client, and the wake-up when a client leaves, are exact.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from tornado.concurrent import Future
from tornado.httputil import RequestStartLine
from tornado.ioloop import IOLoop

from flaskstack import wsgi


class FakeStream:
    def __init__(self) -> None:
        self.is_closed = False

    def closed(self) -> bool:
        return self.is_closed

    def set_nodelay(self, value: bool) -> None:
        pass


class FakeConnection:
    """An HTTP1Connection whose client takes every write at once, or (stuck) none."""

    def __init__(self, stuck: bool) -> None:
        self.stuck = stuck
        self.stream = FakeStream()
        self.close_callback: Any = None
        self.sent: list[bytes] = []
        self.writes = 0
        self.finished = False

    def future(self) -> Future[None]:
        future: Future[None] = Future()
        if not self.stuck:
            future.set_result(None)
        return future

    def set_close_callback(self, callback: Any) -> None:
        self.close_callback = callback

    def write_headers(self, start_line: Any, headers: Any, chunk: bytes | None = None) -> Future:
        self.sent.append(chunk or b"")
        return self.future()

    def write(self, chunk: bytes) -> Future[None]:
        self.writes += 1
        self.sent.append(chunk)
        return self.future()

    def finish(self) -> None:
        self.finished = True

    def close(self) -> None:
        self.stream.is_closed = True

    def drop(self) -> None:
        """The client goes away: Tornado reports it through the close callback."""
        self.stream.is_closed = True
        self.close_callback()


def exchange(connection: FakeConnection) -> SimpleNamespace:
    done: list[bool] = []
    return SimpleNamespace(
        connection=connection,
        start_line=RequestStartLine("GET", "/", "HTTP/1.1"),
        streamed=lambda: done.append(True),
        done=done,
    )


def host() -> wsgi.WSGIPath:
    return wsgi.WSGIPath(None, None, None, 0, access_lines=False)  # type: ignore[arg-type]


def test_a_client_that_takes_nothing_holds_the_app_to_the_window(monkeypatch):
    """No write completes: the app produces STREAM_WINDOW chunks past the first, then waits
    for a slot; after STREAM_STALL_S the host closes the connection and stops iterating."""
    monkeypatch.setattr(wsgi, "STREAM_STALL_S", 0.3)
    produced: list[int] = []

    def body():
        while True:
            produced.append(len(produced))
            yield b"chunk"

    connection = FakeConnection(stuck=True)

    async def scenario() -> int:
        return await asyncio.wait_for(
            asyncio.to_thread(
                host().stream, exchange(connection), IOLoop.current(), "200 OK", [], b"1st", body()
            ),
            10,
        )

    assert asyncio.run(scenario()) == len(b"1st") + wsgi.STREAM_WINDOW * len(b"chunk")
    assert len(produced) == wsgi.STREAM_WINDOW + 1  # the last one waited for a slot in vain
    assert connection.writes == 0  # one write at a time: the headers' never completed
    assert connection.stream.closed()


def test_a_client_leaving_wakes_the_waiting_pool_thread_and_closes_the_body():
    """The producer waits for a slot; the client leaves: the thread stops at once (long before
    STREAM_STALL_S), the body's close() runs and the request stops counting as in flight."""
    connection = FakeConnection(stuck=True)
    ex = exchange(connection)
    closed: list[bool] = []
    loops: list[IOLoop] = []

    def app(environ: dict, start_response: Any):
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return events()

    def events():
        try:
            n = 0
            while True:
                n += 1
                if n == wsgi.STREAM_WINDOW + 2:  # the window is full: this one will wait
                    loops[0].add_callback(connection.drop)
                yield b"data: %d\n\n" % n
        finally:
            closed.append(True)

    path = wsgi.WSGIPath(app, None, None, 0, access_lines=False)  # type: ignore[arg-type]
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/events"}

    async def scenario() -> None:
        loops.append(IOLoop.current())
        await asyncio.wait_for(asyncio.to_thread(path.run_app, environ, 0.0, ex, loops[0]), 10)
        await asyncio.sleep(0)  # let the IOLoop run what the job handed it last

    asyncio.run(scenario())
    assert closed == [True]
    assert ex.done == [True]


def test_a_body_arrives_whole_and_in_order_then_the_response_finishes():
    connection = FakeConnection(stuck=False)
    ex = exchange(connection)
    chunks = [b"%04d," % n for n in range(300)]

    async def scenario() -> int:
        return await asyncio.wait_for(
            asyncio.to_thread(
                host().stream, ex, IOLoop.current(), "200 OK", [], chunks[0], iter(chunks[1:])
            ),
            10,
        )

    assert asyncio.run(scenario()) == len(b"".join(chunks))
    assert b"".join(connection.sent) == b"".join(chunks)
    assert connection.finished
    assert not connection.stream.closed()
