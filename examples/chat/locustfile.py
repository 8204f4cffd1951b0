"""Load-test the chat: `LOCUSTFILE=examples/chat/locustfile.py make loadtest`.

Each user holds one socket.io websocket, joins a room shared by CHAT_ROOM_SIZE users and sends
`chat` CHAT_RATE times a second, its send time as the text. Two kinds of Locust request come
of it: `chat ack`, the round trip from the emit to its acknowledgement (an event in), and
`chat delivery`, the age of each room message a user receives, its own included (an event out).
The client is loadtest/sioclient.py: a blocking socket per user, which Locust makes gevent's.
"""

from __future__ import annotations

import itertools
import os
import time

import gevent
from locust import User, constant_pacing, task
from locust.exception import StopUser

from loadtest.sioclient import Acks, Connection, latency_ms, stamp

ROOM_SIZE = max(1, int(os.environ.get("CHAT_ROOM_SIZE", "10")))
RATE = float(os.environ.get("CHAT_RATE", "1"))  # chat messages per user per second
TIMEOUT = float(os.environ.get("LOADTEST_TIMEOUT", "10"))
_numbers = itertools.count()


class ChatUser(User):
    wait_time = constant_pacing(1 / RATE)

    def on_start(self) -> None:
        n = next(_numbers)
        self.username = f"u{os.getpid()}-{n}"
        self.room = f"room-{os.getpid()}-{n // ROOM_SIZE}"
        self.acks = Acks()
        self.stopping = False
        started = time.time()
        try:
            self.conn = Connection(self.host, TIMEOUT)
            self.conn.open()
            self.conn.emit("join", {"username": self.username, "room": self.room})
            joined = f"{self.username} has entered the room."
            for kind, name, data, _ in self.conn.packets():
                if kind == "event" and name == "message" and data == joined:
                    break
            else:
                raise ConnectionError("closed before the join was confirmed")
            self.conn.hold()  # a quiet room is no failure
        except OSError as exc:
            self._fire("join", (time.time() - started) * 1000, exc)
            raise StopUser from exc
        self.reader = gevent.spawn(self._read)

    def _fire(self, name: str, ms: float, exception: BaseException | None = None) -> None:
        self.environment.events.request.fire(
            request_type="socket.io",
            name=name,
            response_time=ms,
            response_length=0,
            exception=exception,
            context={},
        )

    def _read(self) -> None:
        try:
            for kind, name, data, now in self.conn.packets():
                if kind == "ack":
                    ms = self.acks.done(name, now)
                    if ms is not None:
                        wrong = data != ["delivered"]
                        self._fire("chat ack", ms, ValueError(f"ack {data}") if wrong else None)
                elif kind == "event" and name == "chat":
                    ms = latency_ms(data.get("text") if isinstance(data, dict) else None, now)
                    if ms is not None:
                        self._fire("chat delivery", ms)
        except OSError as exc:
            if not self.stopping:
                self._fire("connection", 0, exc)
            return
        if not self.stopping:
            self._fire("connection", 0, ConnectionError("closed by the server"))

    @task
    def chat(self) -> None:
        now = time.time()
        for ms in self.acks.expired(now, TIMEOUT):
            self._fire("chat ack", ms, TimeoutError(f"no acknowledgement within {TIMEOUT:g} s"))
        if self.reader.dead:
            raise StopUser
        message = {"username": self.username, "room": self.room, "text": stamp(now)}
        self.conn.emit("chat", message, self.acks.add(now))

    def on_stop(self) -> None:
        self.stopping = True
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
