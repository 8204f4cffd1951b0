"""socket.io in the host without Postgres: the app's in-process bus feeds it (`make dev`'s case).

The host runs as a real process on SQLite; python-socketio's own client connects to it. The
routing of channel messages (Fanout) and the manager's NOTIFY limit are checked directly.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest
import requests
import socketio

from tests.sioclient import Listener, close_all, login
from tests.support import ROOT

sys.path.insert(0, str(ROOT / "deploy" / "tornado"))

from flaskstack import sio as host_sio


def test_broadcasts_reach_everyone_and_a_users_events_only_them(sqlite_host):
    base = sqlite_host.url
    token, headers = login(base)
    other_token, other_headers = login(base)
    mine = [Listener(base, token, "websocket"), Listener(base, token, "polling")]
    other = Listener(base, other_token, "websocket")
    try:
        r = requests.post(
            f"{base}/api/uploads", files={"file": ("a.txt", b"mine")}, headers=headers, timeout=10
        )
        assert r.status_code == 201, r.text
        for c in mine:
            assert c.next("upload.stored")["upload"]["id"] == r.json()["id"]
        r = requests.post(
            f"{base}/api/posts", json={"title": "t", "body": "b"}, headers=other_headers, timeout=10
        )
        assert r.status_code == 201, r.text
        for c in [*mine, other]:
            assert c.next("post.created")["post"]["id"] == r.json()["id"]
        # The post came after the upload on the one bus, so the other user never gets it.
        assert "upload.stored" not in [e for e, _ in other.seen]
    finally:
        close_all([*mine, other])


def test_a_bad_token_is_refused(sqlite_host):
    for token in (None, "forged.token.value"):
        with pytest.raises(socketio.exceptions.ConnectionError):
            Listener(sqlite_host.url, token)


class FakeHub:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def broadcast(self, message: str) -> None:
        self.sent.append(message)


class FakeManager:
    def __init__(self) -> None:
        self.fed: list[dict[str, Any]] = []

    def feed(self, message: dict[str, Any]) -> None:
        self.fed.append(message)


class FakeServer:
    def __init__(self) -> None:
        self.manager = FakeManager()
        self.emits: list[tuple[str, Any, Any]] = []

    async def emit(self, event: str, data: Any, to: Any = None, ignore_queue: bool = False):
        assert ignore_queue, "an app event is emitted to this replica's clients only"
        self.emits.append((event, data, to))


def route(*payloads: str) -> tuple[FakeHub, FakeServer]:
    hub, sio = FakeHub(), FakeServer()

    async def main() -> None:
        fanout = host_sio.Fanout(hub, sio)  # type: ignore[arg-type]
        for payload in payloads:
            fanout(payload)
        await asyncio.sleep(0)

    asyncio.run(main())
    return hub, sio


def test_a_broadcast_event_goes_to_ws_and_socketio():
    payload = json.dumps({"type": "post.created", "post": {"id": 1}})
    hub, sio = route(payload)
    assert hub.sent == [payload]
    assert sio.emits == [("post.created", {"type": "post.created", "post": {"id": 1}}, None)]


def test_a_room_event_goes_to_that_room_on_socketio_only():
    hub, sio = route(json.dumps({"type": "upload.stored", "upload": {"id": 2}, "to": "user:7"}))
    assert hub.sent == []
    assert sio.emits == [
        ("upload.stored", {"type": "upload.stored", "upload": {"id": 2}}, "user:7")
    ]


def test_a_socketio_servers_message_goes_to_the_manager_only():
    message = {"method": "emit", "event": "x", "data": [1], "host_id": "other"}
    hub, sio = route(json.dumps(message))
    assert (hub.sent, sio.emits, sio.manager.fed) == ([], [], [message])


def test_unreadable_or_untyped_messages_are_dropped():
    hub, sio = route("not json", "[1, 2]", json.dumps({"no": "type"}))
    assert sio.emits == []
    assert hub.sent == [json.dumps({"no": "type"})]  # /ws passes on what it cannot type


def test_the_manager_refuses_what_notify_cannot_carry():
    sent: list[str] = []

    async def send(payload: str) -> None:
        sent.append(payload)

    async def main() -> None:
        manager = host_sio.ChannelManager(send, "app_events")
        await manager._publish({"method": "emit", "data": ["small"]})
        with pytest.raises(ValueError, match="8000-byte"):
            await manager._publish({"method": "emit", "data": ["x" * 8000]})

    asyncio.run(main())
    assert [json.loads(p)["data"] for p in sent] == [["small"]]


def test_session_ids_name_their_replica(monkeypatch):
    monkeypatch.setattr(host_sio, "REPLICA", "0123456789ab")
    sid = host_sio.Engine(async_mode="tornado").generate_id()
    assert sid.startswith("0123456789ab.")
    monkeypatch.setattr(host_sio, "REPLICA", "not-a-container")
    assert "." not in host_sio.Engine(async_mode="tornado").generate_id()
