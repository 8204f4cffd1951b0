"""A Flask-SocketIO app deployed by README "Your app", unchanged: examples/chat on three replicas.

The project is copied outside the repository and deployed by the README's steps (its dotenv
block, with this app's module, requirements and no migration), on a stack of its own. Then what
the app's users rely on across replicas, with no message queue configured: two clients on
different replicas chat in a room through a handler and get its acknowledgement, a broadcast
and a view's `socketio.emit` reach every replica's clients, `leave_room` stops delivery, a
handler that raises reaches the app's error handler and the connection stays, polling and
websocket clients talk to each other, and a replica drained mid-conversation loses no
acknowledged message.

Which replica holds a client: its engine.io session id starts with the replica's name (sio.py).
"""

from __future__ import annotations

import os
import queue
import secrets
import shutil
import threading
import time
from typing import Any

import pytest
import requests
import socketio

from tests.sioclient import leave
from tests.support import ROOT, free_port, run, stack

from .test_example_app import INHERITED, make, readme_env_lines

EXAMPLE = ROOT / "examples" / "chat"
MESSAGES = 30  # chat messages sent through a drain


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    """examples/chat on its own stack, deployed by the README's steps."""
    workdir = tmp_path_factory.mktemp("chat")
    source = workdir / "chat"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__"))
    env_file = workdir / "chat.env"
    project = f"{os.environ.get('PROJECT', 'flaskstack-test')}-chat"
    env = {k: v for k, v in os.environ.items() if k not in INHERITED}
    env.update(PROJECT=project, ENV_FILE=str(env_file))
    assert make("env", env=env).returncode == 0
    stack_port = free_port()
    settings = readme_env_lines() | {
        "APP_SOURCE": str(source),
        "APP_REQUIREMENTS": "requirements.txt",
        "APP_MODULE": "chat:app",
        "MIGRATE_COMMAND": "",  # no database of its own: Postgres carries only its events
        "APP_IMAGE": f"{project}-app:local",
        "APP_STATIC_DIR": "",
        "APP_ENV_FILE": str(workdir / "app.env"),
        "STACK_PORT": str(stack_port),
        "MONITORING": "0",
    }
    lines = [
        line for line in env_file.read_text().splitlines() if line.split("=", 1)[0] not in settings
    ]
    env_file.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in settings.items())]) + "\n")
    (workdir / "app.env").write_text("")
    up = make("up", env=env, timeout=900)
    try:
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
        yield {"url": f"http://127.0.0.1:{stack_port}", "project": project}
    finally:
        stack("compose", "down", "-v", "--remove-orphans", env=env, check=False, timeout=None)


class Client:
    """A python-socketio client of the chat, its events kept in arrival order."""

    def __init__(self, url: str, transport: str = "websocket", reconnect: bool = False) -> None:
        self.client = socketio.Client(
            reconnection=reconnect, reconnection_delay=0.2, reconnection_delay_max=1
        )
        self.events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.seen: list[tuple[str, Any]] = []
        self.rooms: list[dict[str, str]] = []
        self.connects = 0
        self.client.on("*", lambda event, data: self.events.put((event, data)))
        self.client.on("connect", self._connected)
        self.client.connect(url, transports=[transport], wait_timeout=10)

    def _connected(self) -> None:
        self.connects += 1
        if self.connects > 1:  # a reconnection, elsewhere: back into the rooms, as a page does
            for data in self.rooms:
                self.client.emit("join", data)

    @property
    def replica(self) -> str:
        return str(self.client.eio.sid).split(".")[0]

    def join(self, username: str, room: str) -> None:
        data = {"username": username, "room": room}
        self.rooms.append(data)
        self.client.emit("join", data)
        self.next("message", f"{username} has entered the room.")

    def next(self, event: str, data: Any = None, timeout: float = 10) -> Any:
        """The next `event` (with exactly `data`, if given), skipping others."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                name, got = self.events.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append((name, got))
            if name == event and (data is None or got == data):
                return got
        raise AssertionError(f"no {event} {data or ''} within {timeout} s: {self.seen}")

    def close(self) -> None:
        leave(self.client)


def on_replicas(url: str, n: int, transport: str = "websocket", **kw: Any) -> list[Client]:
    """n clients, each on a replica of its own."""
    kept: dict[str, Client] = {}
    spare = []
    for _ in range(12 * n):
        client = Client(url, transport, **kw)
        if client.replica in kept:
            spare.append(client)
        else:
            kept[client.replica] = client
        if len(kept) == n:
            break
    for client in spare:
        client.close()
    assert len(kept) == n, f"clients landed on {sorted(kept)} only"
    return list(kept.values())


def room() -> str:
    return f"room-{secrets.token_hex(4)}"


def test_two_replicas_chat_in_a_room_and_the_sender_gets_the_acknowledgement(chat):
    alice, bob = on_replicas(chat["url"], 2)
    try:
        where = room()
        alice.join("alice", where)
        bob.join("bob", where)
        alice.next("message", "bob has entered the room.")
        ack = alice.client.call("chat", {"username": "alice", "room": where, "text": "hi"})
        assert ack == "delivered"
        assert bob.next("chat") == {"username": "alice", "text": "hi"}
        ack = bob.client.call("chat", {"username": "bob", "room": where, "text": "hello"})
        assert ack == "delivered"
        assert alice.next("chat", {"username": "bob", "text": "hello"})
    finally:
        alice.close()
        bob.close()


def test_a_broadcast_reaches_every_replicas_clients(chat):
    clients = on_replicas(chat["url"], 3)
    try:
        word = secrets.token_hex(4)
        clients[0].client.emit("shout", {"word": word})
        for client in clients:
            assert client.next("shout") == {"word": word}
    finally:
        for client in clients:
            client.close()


def test_a_views_emit_reaches_every_replicas_clients(chat):
    clients = on_replicas(chat["url"], 3)
    try:
        text = f"maintenance {secrets.token_hex(4)}"
        r = requests.post(f"{chat['url']}/announce", json={"text": text}, timeout=10)
        assert r.status_code == 200 and r.json() == {"sent": True}
        for client in clients:
            assert client.next("announcement") == {"text": text}
    finally:
        for client in clients:
            client.close()


def test_after_leave_room_a_client_gets_nothing_more_from_the_room(chat):
    alice, bob = on_replicas(chat["url"], 2)
    try:
        where = room()
        alice.join("alice", where)
        bob.join("bob", where)
        bob.client.emit("leave", {"username": "bob", "room": where})
        alice.next("message", "bob has left the room.")
        alice.client.call("chat", {"username": "alice", "room": where, "text": "still there?"})
        # Alice's replica publishes her emits in the order she made them, and Bob's delivers
        # them in that order: once the broadcast is in, the chat message would have been.
        marker = secrets.token_hex(4)
        alice.client.emit("shout", {"word": marker})
        bob.next("shout", {"word": marker})
        assert "chat" not in [event for event, _ in bob.seen]
    finally:
        alice.close()
        bob.close()


def test_a_handler_that_raises_reaches_the_error_handler_and_the_client_stays(chat):
    alice, bob = on_replicas(chat["url"], 2)
    try:
        where = room()
        alice.join("alice", where)
        bob.join("bob", where)
        ack = alice.client.call("chat", {"username": "alice", "text": "no room"})
        assert ack == {"error": "KeyError", "event": "chat"}
        assert alice.client.connected
        ack = alice.client.call("chat", {"username": "alice", "room": where, "text": "again"})
        assert ack == "delivered"
        assert bob.next("chat") == {"username": "alice", "text": "again"}
    finally:
        alice.close()
        bob.close()


def test_a_polling_client_and_a_websocket_client_talk(chat):
    poller = Client(chat["url"], "polling")
    (socket,) = on_replicas(chat["url"], 1)
    try:
        where = room()
        poller.join("poller", where)
        socket.join("socket", where)
        assert poller.client.transport() == "polling"
        assert socket.client.transport() == "websocket"
        ack = poller.client.call("chat", {"username": "poller", "room": where, "text": "p"})
        assert ack == "delivered"
        assert socket.next("chat") == {"username": "poller", "text": "p"}
        ack = socket.client.call("chat", {"username": "socket", "room": where, "text": "w"})
        assert ack == "delivered"
        assert poller.next("chat", {"username": "socket", "text": "w"})  # after its own
    finally:
        poller.close()
        socket.close()


def test_a_replica_drained_mid_conversation_loses_no_acknowledged_message(chat):
    """The sender's replica gets SIGTERM while it sends: every message it got an
    acknowledgement for reaches the reader on another replica; one without (its connection
    cut first) is sent again once the client has reconnected elsewhere."""
    sender, reader = on_replicas(chat["url"], 2, reconnect=True)
    victim = sender.replica
    where = room()
    sender.join("sender", where)
    reader.join("reader", where)
    acked: list[int] = []
    n = 0
    try:
        # At least MESSAGES, and on until the sender has been moved off the drained replica
        # (bounded: a replica that never drains fails the test).
        deadline = time.monotonic() + 120
        while n < MESSAGES or sender.connects == 1:
            assert time.monotonic() < deadline, "the sender was never moved off its replica"
            if n == MESSAGES // 3:
                threading.Thread(
                    target=run, args=("docker", "kill", "-s", "TERM", victim), daemon=True
                ).start()
            for _ in range(30):  # each attempt is bounded by its acknowledgement's timeout
                try:
                    ack = sender.client.call(
                        "chat", {"username": "sender", "room": where, "text": str(n)}, timeout=5
                    )
                except (socketio.exceptions.TimeoutError, socketio.exceptions.BadNamespaceError):
                    time.sleep(0.2)  # the transport is gone: the client is reconnecting
                    continue
                assert ack == "delivered"
                acked.append(n)
                break
            n += 1
        assert sender.replica != victim
        reader.next("chat", {"username": "sender", "text": str(n - 1)})
        got = [int(d["text"]) for e, d in reader.seen if e == "chat"]
        assert set(acked) <= set(got), sorted(set(acked) - set(got))
        assert acked == list(range(n))  # and every message was acknowledged in the end
    finally:
        sender.close()
        reader.close()
