"""Flask-SocketIO apps on the host (flaskstack/sioapp.py, sio.py), in one process.

The host's socket.io server (the same `build()` the replica runs, without Postgres) serves a
Flask-SocketIO app on a real Tornado server, on an IOLoop of its own thread, with its handlers
on a WorkerPool; python-socketio's own sync Client drives it over websocket and polling. Each
test checks a server call Flask-SocketIO makes against what the library itself does: the same
app is also run on Flask-SocketIO's own server through its test client where the behaviour is
the library's to define (acks, error handlers, sessions, namespaces).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import socketio
import tornado.httpserver
import tornado.web
import tornado.websocket
from flask import Flask, request, session
from flask_socketio import (
    ConnectionRefusedError,
    Namespace,
    SocketIO,
    call,
    close_room,
    disconnect,
    emit,
    join_room,
    leave_room,
    rooms,
    send,
)

from tests.sioclient import leave
from tests.support import ROOT

sys.path.insert(0, str(ROOT / "deploy" / "tornado"))

from flaskstack import metrics, sioapp
from flaskstack import sio as host_sio
from flaskstack.wsgi import WorkerPool, WSGIPath


def make_app(**options: Any) -> tuple[Flask, SocketIO]:
    """A Flask-SocketIO app written as its documentation teaches, with every kind of handler."""
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "test"
    socketio = SocketIO(**options)
    seen: dict[str, Any] = {"threads": set(), "disconnects": []}
    app.config["SEEN"] = seen

    @socketio.on("connect")
    def connect(auth: Any) -> Any:
        if auth and auth.get("token") == "bad":
            raise ConnectionRefusedError("bad token")
        session["user"] = (auth or {}).get("user", "anon")
        seen["threads"].add(threading.current_thread().name)
        return None

    @socketio.on("disconnect")
    def on_disconnect(reason: Any) -> None:
        seen["disconnects"].append((request.sid, reason))

    @socketio.on("echo")
    def echo(data: Any) -> Any:
        seen["threads"].add(threading.current_thread().name)
        return data, request.sid, request.namespace, request.event["message"]

    @socketio.event
    def whoami() -> Any:
        return session.get("user"), request.remote_addr

    @socketio.on("rename")
    def rename(name: str) -> str:
        session["user"] = name  # Flask-SocketIO's own session for this connection
        return "ok"

    @socketio.on("join")
    def on_join(room: str) -> list[str]:
        join_room(room)
        emit("joined", room, to=room)
        return sorted(rooms())

    @socketio.on("leave")
    def on_leave(room: str) -> list[str]:
        leave_room(room)
        return sorted(rooms())

    @socketio.on("say")
    def say(data: dict[str, Any]) -> str:
        emit("said", data["text"], to=data.get("room"), include_self=data.get("self", True))
        return "ok"

    @socketio.on("yell")
    def yell(text: str) -> None:
        emit("yelled", text, broadcast=True)

    @socketio.on("note")
    def note(text: str) -> None:
        send(text)
        send({"json": text}, json=True)

    @socketio.on("close")
    def on_close(room: str) -> None:
        close_room(room)

    @socketio.on("bye")
    def bye() -> None:
        disconnect()

    @socketio.on("ask")
    def ask() -> str:
        done = threading.Event()
        got: list[Any] = []

        def answered(*args: Any) -> None:
            got.append((request.sid, args))  # in the asker's request context
            done.set()

        emit("question", "really?", callback=answered)
        socketio.start_background_task(
            lambda: (done.wait(5), socketio.emit("answer", list(got[0])))
        )
        socketio.sleep(0)
        return "asked"

    @socketio.on("poll")
    def poll() -> Any:
        return call("question", "sure?")  # waits for the client's answer

    @socketio.on("boom")
    def boom() -> None:
        raise RuntimeError("boom")

    @socketio.on_error_default
    def on_error(e: Exception) -> dict[str, str]:
        return {"error": type(e).__name__, "event": request.event["message"]}

    class Chat(Namespace):
        def on_connect(self) -> None:
            seen["threads"].add(threading.current_thread().name)

        def on_hello(self, data: Any) -> Any:
            self.emit("hi", data, room=request.sid)
            return {"ns": request.namespace, "data": data}

        def on_fail(self) -> None:
            raise ValueError("fail")

        def on_remember(self, value: Any) -> None:
            self.save_session(request.sid, {"value": value})

        def on_recall(self) -> Any:
            with self.session(request.sid) as saved:
                return saved["value"]

    socketio.on_namespace(Chat("/chat"))

    @socketio.on_error("/chat")
    def chat_error(e: Exception) -> str:
        return f"chat: {e}"

    @app.post("/notify")
    def notify() -> dict[str, bool]:
        socketio.emit("news", request.get_json())
        return {"sent": True}

    socketio.init_app(app)
    return app, socketio


class Host:
    """The host's socket.io server for one app, on a Tornado server in a thread of its own."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.pool = WorkerPool(4)
        self.state = {"draining": False}
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self.sio, handler = host_sio.build(
                self.app, frozenset(), self.state, None, "in-process", self.pool.submit
            )
            web = tornado.web.Application([(r"/socket\.io/", handler)])
            # The host's own router in front, as server.py builds it: it gives the native
            # paths the client's address from nginx's headers.
            self.server = tornado.httpserver.HTTPServer(
                WSGIPath(self.app, self.pool, web, 1 << 20, access_lines=False)
            )
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(64)
            sock.setblocking(False)
            self.server.add_sockets([sock])
            self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"

        self.loop.run_until_complete(start())
        self.loop.call_soon(ready.set)  # once run_forever runs: a stop() then ends it
        self.loop.run_forever()

    def on_loop(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def stop(self) -> None:
        async def cancel() -> None:
            self.server.stop()
            for task in asyncio.all_tasks():  # the manager's listener, among others
                if task is not asyncio.current_task():
                    task.cancel()

        self.on_loop(cancel())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.pool.shutdown(5)


class Client:
    """python-socketio's sync Client, recording every event it gets."""

    def __init__(self, url: str, transport: str = "websocket", **connect: Any) -> None:
        self.client = socketio.Client(reconnection=False)
        self.events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.client.on("*", lambda event, data=None: self.events.put((event, data)))
        self.client.on("*", self._other_ns, namespace="*")
        self.client.on("question", lambda data: f"yes to {data}")
        self.client.on("connect_error", lambda data: self.events.put(("connect_error", data)))
        connect.setdefault("wait_timeout", 10)
        self.client.connect(url, transports=[transport], **connect)

    def _other_ns(self, event: str, namespace: str, data: Any = None) -> None:
        self.events.put((f"{namespace}:{event}", data))

    @property
    def sid(self) -> str:
        return self.client.get_sid()  # type: ignore[no-any-return]

    def call(self, event: str, *args: Any, namespace: str | None = None) -> Any:
        data = args[0] if len(args) == 1 else args if args else None
        return self.client.call(event, data, namespace=namespace, timeout=10)

    def next(self, event: str, timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        skipped = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                name, data = self.events.get(timeout=left)
            except queue.Empty:
                break
            if name == event:
                return data
            skipped.append(name)
        raise AssertionError(f"no {event} within {timeout} s (got {skipped})")

    def close(self) -> None:
        leave(self.client)


@pytest.fixture
def chat() -> Iterator[SimpleNamespace]:
    """make_app() on the host: `host`, `app`, and `ext` (its SocketIO)."""
    app, socketio = make_app()
    host = Host(app)
    yield SimpleNamespace(host=host, app=app, ext=socketio)
    host.stop()


@pytest.fixture
def clients(chat) -> Iterator[Any]:
    host = chat.host
    made: list[Client] = []

    def connect(transport: str = "websocket", **kw: Any) -> Client:
        made.append(Client(host.url, transport, **kw))
        return made[-1]

    yield connect
    for c in made:
        c.close()


def library_client(**kw: Any) -> Any:
    """The same app on Flask-SocketIO's own server (a fresh instance: the host's has been
    taken over), through the library's test client."""
    app, socketio = make_app()
    return socketio.test_client(app, **kw)


# --- the app is found and served --------------------------------------------------------


def test_the_apps_socketio_server_is_replaced_and_its_wsgi_wrapper_removed(chat):
    assert isinstance(chat.ext.server, sioapp.AppServer)
    assert chat.host.sio.app is chat.ext.server
    assert chat.app.wsgi_app is not chat.ext.sockio_mw  # /socket.io/ never reaches WSGI on the host
    assert chat.ext.server.served_namespaces() == ["/", "/chat"]
    assert {"echo", "whoami", "join", "hello", "fail", "connect", "disconnect"} <= (
        chat.ext.server.event_names()
    )


def test_an_app_without_flask_socketio_is_left_alone():
    app = Flask(__name__)
    assert sioapp.find_extension(app) is None


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_an_event_runs_on_a_pool_thread_in_a_request_context_and_its_return_is_the_ack(
    chat, clients, transport
):
    c = clients(transport)
    data, sid, namespace, message = c.call("echo", {"n": 1})
    assert (data, sid, namespace, message) == ({"n": 1}, c.sid, "/", "echo")
    assert chat.app.config["SEEN"]["threads"] <= {f"wsgi-{n}" for n in range(4)}
    # The library answers the same.
    lib = library_client()
    assert lib.emit("echo", {"n": 1}, callback=True)[0] == {"n": 1}


def test_connect_auth_and_the_session_behave_as_flask_socketio_documents(chat, clients):
    c = clients(auth={"user": "ann"}, headers={"X-Real-Ip": "203.0.113.9"})
    user, addr = c.call("whoami")
    assert user == "ann"
    assert addr == "203.0.113.9"  # the client's address, as nginx gives it
    assert c.call("rename", "bea") == "ok"
    assert c.call("whoami")[0] == "bea"  # the connection's own session keeps it
    assert clients().call("whoami")[0] == "anon"  # another connection's does not
    lib = library_client(auth={"user": "ann"})
    lib.emit("rename", "bea")
    assert lib.emit("whoami", callback=True)[0] == "bea"


def test_the_apps_connect_handler_decides(chat):
    refused = socketio.Client(reconnection=False)
    reasons: list[Any] = []
    refused.on("connect_error", reasons.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        refused.connect(
            chat.host.url, auth={"token": "bad"}, transports=["websocket"], wait_timeout=5
        )
    assert reasons == [{"message": "bad token"}]
    assert not library_client(auth={"token": "bad"}).is_connected()


def test_a_draining_replica_refuses_before_the_app_sees_the_connect(chat, clients):
    chat.host.state["draining"] = True
    threads_before = set(chat.app.config["SEEN"]["threads"])
    with pytest.raises(socketio.exceptions.ConnectionError):
        clients()
    assert chat.app.config["SEEN"]["threads"] == threads_before


def test_rooms_join_emit_and_leave(chat, clients):
    a, b = clients(), clients("polling")
    assert a.call("join", "r1") == sorted([a.sid, "r1"])
    assert a.next("joined") == "r1"
    assert b.call("join", "r1") == sorted([b.sid, "r1"])
    assert a.next("joined") == "r1" and b.next("joined") == "r1"
    assert a.call("say", {"text": "x", "room": "r1", "self": False}) == "ok"
    assert b.next("said") == "x"
    assert b.call("leave", "r1") == [b.sid]
    a.call("say", {"text": "after", "room": "r1"})
    assert a.next("said") == "after"
    b.call("say", {"text": "to b", "room": b.sid})
    assert b.next("said") == "to b"  # b saw nothing from r1 before its own message


def test_broadcast_send_and_json_reach_everyone(chat, clients):
    a, b = clients(), clients("polling")
    a.client.emit("yell", "hey")
    assert a.next("yelled") == "hey" and b.next("yelled") == "hey"
    b.client.emit("note", "n")
    assert b.next("message") == "n"
    assert b.next("json") == {"json": "n"}


def test_close_room_empties_it(chat, clients):
    a = clients()
    a.call("join", "gone")
    a.call("close", "gone")  # events run side by side: wait for this one's acknowledgement
    assert chat.host.on_loop(rooms_of(chat.host, a.sid)) == [a.sid]


async def rooms_of(host: Host, sid: str) -> list[str]:
    return sorted(host.sio.rooms(sid))


def test_disconnect_from_a_handler_runs_the_disconnect_handler(chat, clients):
    c = clients()
    sid = c.sid
    c.client.emit("bye")
    deadline = time.monotonic() + 10
    while c.client.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not c.client.connected
    while not chat.app.config["SEEN"]["disconnects"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert chat.app.config["SEEN"]["disconnects"] == [(sid, "server disconnect")]


def test_a_server_callback_runs_in_the_callers_context_and_a_background_task_on_a_thread(
    chat, clients
):
    c = clients()
    assert c.call("ask") == "asked"
    sid, args = c.next("answer")
    assert sid == c.sid and args == ["yes to really?"]


def test_call_from_a_handler_waits_for_the_clients_answer(chat, clients):
    assert clients().call("poll") == "yes to sure?"


def test_an_error_reaches_on_error_default_and_the_connection_stays(chat, clients):
    c = clients()
    assert c.call("boom") == {"error": "RuntimeError", "event": "boom"}
    assert c.call("echo", 2)[0] == 2
    lib = library_client()
    assert lib.emit("boom", callback=True) == {"error": "RuntimeError", "event": "boom"}


def test_a_class_based_namespace_and_its_error_handler(chat, clients):
    c = clients(namespaces=["/", "/chat"])
    assert c.call("hello", 5, namespace="/chat") == {"ns": "/chat", "data": 5}
    assert c.next("/chat:hi") == 5
    assert c.call("fail", namespace="/chat") == "chat: fail"
    c.call("remember", 7, namespace="/chat")  # python-socketio's session, per namespace
    assert c.call("recall", namespace="/chat") == 7
    lib = library_client(namespace="/chat")
    assert lib.emit("fail", callback=True, namespace="/chat") == "chat: fail"


def test_an_emit_from_a_view_reaches_clients(chat, clients):
    a, b = clients(), clients("polling")
    r = chat.app.test_client().post("/notify", json={"n": 1})
    assert r.json == {"sent": True}
    assert a.next("news") == {"n": 1} and b.next("news") == {"n": 1}


def test_without_a_handler_no_ack_and_the_client_stays(chat, clients):
    c = clients()
    with pytest.raises(socketio.exceptions.TimeoutError):
        c.client.call("nobody", 1, timeout=1)
    assert c.call("echo", 3)[0] == 3


def test_events_are_counted_by_the_apps_names_and_the_rest_as_other(chat, clients):
    def count(name: str) -> float:
        return (
            metrics.REGISTRY.get_sample_value("flaskstack_socketio_events_total", {"event": name})
            or 0.0
        )

    before = {n: count(n) for n in ("echo", "other", "connect")}
    c = clients()
    c.call("echo", 1)
    c.client.emit("made-up-name", 1)
    c.call("echo", 2)
    assert count("echo") == before["echo"] + 2
    assert count("other") == before["other"] + 1
    assert count("connect") == before["connect"] + 1
    assert count("made-up-name") == 0.0


def test_unsupported_options_are_named_at_start_up(caplog):
    app = Flask(__name__)
    ext = SocketIO(app, async_mode="threading", cors_allowed_origins="*", ping_interval=5)
    ext.server_options["message_queue"] = "redis://example"  # as SocketIO keeps it
    with caplog.at_level(logging.WARNING, logger="host"):
        Host(app).stop()
    named = {r.option for r in caplog.records if hasattr(r, "option")}  # type: ignore[attr-defined]
    assert named == {"cors_allowed_origins", "ping_interval", "message_queue"}


def test_a_foreign_async_mode_is_named():
    app = Flask(__name__)
    socketio = SocketIO(app)
    socketio.server_options["async_mode"] = "eventlet"
    ((option, why),) = sioapp.unsupported_options(socketio)
    assert option == "async_mode" and "eventlet" in why


def test_a_path_of_its_own_is_named():
    app = Flask(__name__)
    socketio = SocketIO(app, path="/chat.io")
    ((option, why),) = sioapp.unsupported_options(socketio)
    assert option == "path" and "/chat.io/" in why


def test_the_host_runs_without_flask_socketio_installed():
    """The host image does not carry flask-socketio: only an app that names it brings it."""
    assert "flask-socketio" not in (ROOT / "deploy/tornado/requirements.lock").read_text()
    code = (
        "import sys; sys.modules['flask_socketio'] = None\n"  # any import of it now fails
        "import flask, flaskstack.sio as s\n"
        "assert s.attach(flask.Flask('x'), None, None) is None\n"
    )
    env = {"PYTHONPATH": str(ROOT / "deploy" / "tornado"), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def refused_reason(url: str, auth: Any = None) -> Any:
    """What a connection is refused with (connect_error's data), or None when accepted."""
    client = socketio.Client(reconnection=False)
    reasons: list[Any] = []
    client.on("connect_error", reasons.append)
    try:
        client.connect(url, auth=auth, transports=["websocket"], wait_timeout=5)
    except socketio.exceptions.ConnectionError:
        return reasons[0] if reasons else "refused"
    client.disconnect()
    return None


def test_a_connect_handler_that_raises_refuses_the_connection():
    app = Flask(__name__)
    ext = SocketIO(app)

    @ext.on("connect")
    def connect() -> None:
        raise KeyError("token")

    host = Host(app)
    try:
        assert refused_reason(host.url) is not None
    finally:
        host.stop()


def test_without_a_connect_handler_of_the_apps_the_stacks_login_rule_holds():
    app = Flask(__name__)
    ext = SocketIO(app)

    def authenticate(_app: Any, auth: Any) -> str:
        if not auth or auth.get("token") != "good":
            raise PermissionError("a valid token is required")
        return "user:1"

    app.extensions["events"] = SimpleNamespace(authenticate=authenticate)

    @ext.on("where")
    def where() -> list[str]:
        return sorted(rooms())

    host = Host(app)
    try:
        assert refused_reason(host.url) == {"message": "a valid token is required"}
        c = Client(host.url, auth={"token": "good"})
        assert "user:1" in c.call("where")  # the host put it in its user's room
        c.close()
        assert c.events.empty()  # and sent no event of its own (no hello): the names are the app's
    finally:
        host.stop()


def test_a_bad_packet_closes_its_connection_only(chat, clients):
    bystander = clients()
    url = chat.host.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"

    async def misbehave() -> bool:
        ws = await tornado.websocket.websocket_connect(url)
        assert (await ws.read_message()).startswith("0{")  # engine.io's open packet
        ws.write_message("40")
        assert (await ws.read_message()).startswith("40{")  # connected: the app accepted it
        ws.write_message("42[unclosed")  # an event no decoder accepts
        try:
            while (message := await ws.read_message()) is not None:
                pass  # engine.io's close packet, then the end
        finally:
            ws.close()
        return message is None

    assert asyncio.run(asyncio.wait_for(misbehave(), 10))
    assert bystander.call("echo", "still here")[0] == "still here"
