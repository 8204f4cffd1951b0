"""A socket.io test client: python-socketio's own Client, with what it received kept in order."""

from __future__ import annotations

import queue
import secrets
import threading
import time
from typing import Any

import requests
import socketio


def login(base: str) -> tuple[str, dict[str, str]]:
    """A fresh user registered at `base`: (access token, auth headers)."""
    creds = {"username": f"rt{secrets.token_hex(6)}", "password": secrets.token_urlsafe(16)}
    assert requests.post(f"{base}/api/auth/register", json=creds, timeout=10).ok
    r = requests.post(f"{base}/api/auth/login", json=creds, timeout=10)
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    return token, {"Authorization": f"Bearer {token}"}


def post_through_another_replica(stack_url: str, headers: dict, avoid: set[str]) -> dict:
    """Create posts until one is served by a replica outside `avoid`; return that post."""
    for i in range(20):
        r = requests.post(
            f"{stack_url}/api/posts",
            json={"title": f"realtime {secrets.token_hex(4)} {i}", "body": "fan-out"},
            headers=headers,
            timeout=10,
        )
        assert r.status_code == 201, r.text
        if r.headers["X-Served-By"] not in avoid:
            return r.json()
    raise AssertionError(f"every post was served by {avoid}")


def upload(base: str, headers: dict[str, str], name: str, data: bytes) -> dict:
    """Upload one file as the user `headers` signs in; its record (the app then emits
    `upload.stored` to that user's sockets)."""
    r = requests.post(
        f"{base}/api/uploads", files={"file": (name, data)}, headers=headers, timeout=10
    )
    assert r.status_code == 201, r.text
    return r.json()


class Listener:
    """One socket.io connection and the events it has received, in arrival order."""

    def __init__(
        self,
        url: str,
        token: str | None,
        transport: str = "websocket",
        reconnect: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.client = socketio.Client(
            reconnection=reconnect, reconnection_delay=0.2, reconnection_delay_max=1
        )
        self.events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.seen: list[tuple[str, Any]] = []
        self.replicas: list[str] = []  # from each connection's hello, reconnections included
        self.lock = threading.Lock()
        self.client.on("*", self._record)
        transports = ["polling"] if transport == "polling" else ["websocket"]
        if transport == "upgrade":
            transports = ["polling", "websocket"]
        self.client.connect(
            url,
            auth={"token": token} if token is not None else None,
            transports=transports,
            headers=headers or {},
            wait_timeout=10,
        )
        self.next("hello")  # each connection says which replica holds it

    def _record(self, event: str, data: Any) -> None:
        if event == "hello":
            with self.lock:
                self.replicas.append(data["replica"])
        self.events.put((event, data))

    @property
    def replica(self) -> str:
        with self.lock:
            return self.replicas[-1]

    def next(self, event: str, match: dict[str, Any] | None = None, timeout: float = 10) -> Any:
        """The next `event` whose data contains `match` (nested one level), skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event} {match or ''} within {timeout} s: {self.seen}")
            try:
                name, data = self.events.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append((name, data))
            if name == event and _contains(data, match or {}):
                return data

    def close(self) -> None:
        """Say goodbye without waiting for a pending long-poll (it ends within 20 s anyway)."""
        if self.client.connected:
            for namespace in list(self.client.namespaces):
                self.client._send_packet(
                    self.client.packet_class(socketio.packet.DISCONNECT, namespace=namespace)
                )
        self.client.eio.disconnect(abort=True)


def _contains(data: Any, match: dict[str, Any]) -> bool:
    for key, want in match.items():
        got = data.get(key) if isinstance(data, dict) else None
        if isinstance(want, dict):
            if not _contains(got, want):
                return False
        elif got != want:
            return False
    return True


def leave(client: socketio.Client) -> None:
    """Disconnect without waiting for a pending long-poll (it would end at the next ping)."""
    if client.connected:
        for namespace in list(client.namespaces):
            goodbye = client.packet_class(socketio.packet.DISCONNECT, namespace=namespace)
            client._send_packet(goodbye)
    client.eio.disconnect(abort=True)


def close_all(listeners: list[Listener]) -> None:
    """Disconnect in parallel: a polling client's disconnect waits for its pending long-poll."""
    threads = [threading.Thread(target=lst.close) for lst in listeners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def on_distinct_replicas(
    make: Any, count: int, taken: set[str] | None = None, tries: int = 30
) -> list[Listener]:
    """`count` listeners from make(i), each on a replica none of the others (or `taken`) holds.

    nginx spreads new sessions round-robin, so a few tries are enough; extra ones are closed.
    """
    chosen: list[Listener] = []
    spare: list[Listener] = []
    used = set(taken or ())
    for _ in range(tries):
        if len(chosen) == count:
            break
        lst = make(len(chosen))
        if lst.replica in used:
            spare.append(lst)
        else:
            used.add(lst.replica)
            chosen.append(lst)
    close_all(spare)
    assert len(chosen) == count, f"could not place {count} clients on distinct replicas"
    return chosen


def on_replica(
    url: str, token: str, transport: str, replica: str, reconnect: bool = False, tries: int = 30
) -> Listener:
    """A listener whose first session `replica` holds (nginx spreads new ones round-robin)."""
    spare: list[Listener] = []
    try:
        for _ in range(tries):
            listener = Listener(url, token, transport, reconnect=reconnect)
            if listener.replica == replica:
                return listener
            spare.append(listener)
        raise AssertionError(f"no {transport} session landed on {replica}")
    finally:
        close_all(spare)
