"""The host's reading of nginx's client headers, and its hand-over of responses to the IOLoop."""

from __future__ import annotations

import asyncio
import threading

import pytest
from tornado.httputil import HTTPHeaders
from tornado.ioloop import IOLoop

from flaskstack.wsgi import Inbox, forwarded


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Real-IP": "203.0.113.7"}, ("203.0.113.7", "http")),
        ({"X-Real-IP": "2001:db8::1", "X-Forwarded-Proto": "https"}, ("2001:db8::1", "https")),
        ({"X-Forwarded-For": "198.51.100.1, 203.0.113.8"}, ("203.0.113.8", "http")),
        ({"X-Real-IP": "203.0.113.7", "X-Forwarded-For": "198.51.100.1"}, ("203.0.113.7", "http")),
        ({"X-Scheme": "https", "X-Forwarded-Proto": "http"}, ("10.0.0.2", "https")),
        ({"X-Forwarded-Proto": "http, https"}, ("10.0.0.2", "https")),
        ({}, ("10.0.0.2", "http")),
    ],
)
def test_the_client_is_the_one_nginx_names(headers: dict, expected: tuple[str, str]) -> None:
    assert forwarded(HTTPHeaders(headers), "10.0.0.2", "http") == expected


@pytest.mark.parametrize(
    "value", ["", "evil.example", "1.2.3.4\r\nX: y", "<script>", "::1 ::2", "9" * 46]
)
def test_a_header_that_is_no_address_leaves_the_peers(value: str) -> None:
    headers = HTTPHeaders({"X-Real-IP": value, "X-Forwarded-Proto": "gopher"})
    assert forwarded(headers, "10.0.0.2", "http") == ("10.0.0.2", "http")


def test_the_inbox_runs_calls_in_order_with_one_wake_up_for_a_burst(monkeypatch) -> None:
    loop = asyncio.new_event_loop()
    try:
        ran: list[int] = []
        wakeups: list[object] = []

        async def scenario() -> None:
            ioloop = IOLoop.current()
            inbox = Inbox(ioloop)
            real_add = ioloop.add_callback
            monkeypatch.setattr(
                ioloop, "add_callback", lambda *a: (wakeups.append(a), real_add(*a))
            )

            def burst() -> None:  # a pool thread finishing 50 responses while the loop waits
                for n in range(50):
                    inbox.put(ran.append, n)

            thread = threading.Thread(target=burst)
            thread.start()
            thread.join()
            await asyncio.sleep(0.05)
            assert ran == list(range(50))
            assert len(wakeups) == 1
            inbox.put(ran.append, 50)  # after the run: a wake-up of its own
            await asyncio.sleep(0.05)
            assert ran[-1] == 50 and len(wakeups) == 2

        loop.run_until_complete(scenario())
    finally:
        loop.close()


def test_a_failing_call_does_not_stop_the_ones_after_it(caplog) -> None:
    loop = asyncio.new_event_loop()
    ran: list[str] = []

    async def scenario() -> None:
        inbox = Inbox(IOLoop.current())
        inbox.put(lambda: 1 / 0)
        inbox.put(ran.append, "next")
        await asyncio.sleep(0.05)

    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert ran == ["next"]
    assert "could not be handed" in caplog.text
